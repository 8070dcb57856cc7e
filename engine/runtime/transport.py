"""How a gateway reaches shards: a transport sends a batch of ops to one shard and returns one
result per op (a value, or the EngineError that op raised). Failures of the call itself raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from engine.clock import Clock, SystemClock
from engine.memory.index import IndexParams
from engine.memory.store import MemoryStore
from engine.sessions.ops import ExpireDue
from engine.sessions.shard import ShardStore


class ShardTransport(Protocol):
    @property
    def shards(self) -> int: ...

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]: ...


class MemoryTransport(ShardTransport, Protocol):
    """Memory shards take memory ops; the embedder turns texts into normalized vectors."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def ready(self) -> dict[str, Any]: ...


class LocalTransport:
    """Shards as plain ShardStores in this process: for API tests without Ray, and for embedding."""

    def __init__(self, shards: int, clock: Clock | None = None) -> None:
        self.stores = [ShardStore() for _ in range(shards)]
        self.clock = clock or SystemClock()

    @property
    def shards(self) -> int:
        return len(self.stores)

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        # No timer task here: due sessions are expired before each batch instead.
        return self.stores[shard].apply_batch([ExpireDue(), *ops], self.clock.now_ms())[1:]


class LocalMemoryTransport:
    """Memory shards as plain MemoryStores in this process, with an embedding function."""

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

    async def ready(self) -> dict[str, Any]:
        return {"embedder": "in-process"}
