"""Shards as plain stores in this process, behind the transports a gateway is written against
(engine.runtime.transports): the API tests run the real app over them without Ray, and
benchmarks/inprocess.py measures the gateway with them. Test doubles, so not in the package."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.clock import Clock, SystemClock
from engine.memory.index import IndexParams
from engine.memory.store import MemoryStore
from engine.runtime.shard_metrics import MemoryShardMetrics, SessionShardMetrics
from engine.sessions.answers import encode_answers
from engine.sessions.events import FeedReads, Interest, Page, Position, Reader
from engine.sessions.ops import ExpireDue
from engine.sessions.store import SessionStore


class LocalTransport:
    """Session shards as plain SessionStores in this process (a SessionTransport)."""

    def __init__(self, shards: int, clock: Clock | None = None) -> None:
        self.stores = [SessionStore() for _ in range(shards)]
        self.clock = clock or SystemClock()
        self._feed_reads = [FeedReads() for _ in range(shards)]

    @property
    def shards(self) -> int:
        return len(self.stores)

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        # No timer task here: due sessions are expired before each batch instead.
        store = self.stores[shard]
        now_ms = self.clock.now_ms()
        results = store.apply_batch([ExpireDue(), *ops], now_ms)[1:]
        if store.take_journal():  # "logged" as the next record: its events become readable
            store.events.publish(store.events.lsn + 1, now_ms, store.events.take_pending())
            self._feed_reads[shard].written()
        return encode_answers(ops, results)

    async def read_events(
        self,
        shard: int,
        after: Position | None,
        interests: frozenset[Interest],
        limit: int,
        wait_s: float,
        reader: Reader | None = None,
    ) -> Page:
        store = self.stores[shard]
        return await self._feed_reads[shard].read(
            lambda: store.events, after, interests, limit, wait_s, reader
        )

    async def metrics(self, shard: int) -> list[Any]:
        store = self.stores[shard]
        return SessionShardMetrics().session_families(store.count_by_status(), 0, len(store.events))


class LocalMemoryTransport:
    """Memory shards as plain MemoryStores in this process, with an embedding function (a
    MemoryTransport)."""

    def __init__(
        self, shards: int, params: IndexParams, embed: Callable[[Sequence[str]], np.ndarray]
    ) -> None:
        self.stores = [MemoryStore(params) for _ in range(shards)]
        self._embed = embed

    @property
    def shards(self) -> int:
        return len(self.stores)

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        results = self.stores[shard].apply_batch(ops)
        self.stores[shard].take_journal()
        return results

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts)

    async def metrics(self, shard: int) -> list[Any]:
        held = [
            (index.kind, namespace, len(index)) for (_, namespace), index in self.stores[shard].namespaces()
        ]
        return MemoryShardMetrics.memory_families(held)

    async def ready(self) -> dict[str, Any]:
        return {"embedder": "in-process"}
