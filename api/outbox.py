"""Per-shard outboxes: concurrent operations bound for one shard travel in one call.

An outbox sends at once when no call to its shard is in flight, and gathers whatever arrives
while one is; when the call returns, everything gathered goes in the next call. No timer, so no
added latency at low load, and under load one Ray call, the costly part, carries many ops
(docs/architecture.md, "Why the gateway batches"). One call in
flight per shard also keeps this gateway's ops to a shard in the order they arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from engine.config import OutboxConfig
from engine.errors import EngineError, Internal, Unavailable, unwrap
from engine.routing import memory_shard_for, shard_for
from engine.runtime.transports import MemoryTransport, ShardTransport
from engine.sessions.ops import SessionOp

from . import metrics

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self, shard: int, transport: ShardTransport, config: OutboxConfig, kind: str = "session"
    ) -> None:
        self._shard = shard
        self._batch_ops = metrics.OUTBOX_BATCH.labels(kind)
        self._queued = metrics.OUTBOX_QUEUED.labels(kind)
        self._call_seconds = metrics.OUTBOX_CALL.labels(kind)
        self._transport = transport
        self._config = config
        self._waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self._reported = 0  # what the queued-ops gauge holds of this outbox
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, op: Any) -> Any:
        if not self._config.coalesce:
            (result,) = await self._call([op])
            return unwrap(result)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((op, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())
        return unwrap(await future)

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._config.max_batch_ops]
                del self._waiting[: len(batch)]
                self._queued.inc(len(self._waiting) - self._reported)
                self._reported = len(self._waiting)
                try:
                    results = await self._call([op for op, _ in batch])
                except EngineError as exc:
                    results = [exc] * len(batch)
                except Exception:
                    log.exception("call to shard %d failed", self._shard)
                    results = [Internal(f"call to shard {self._shard} failed", {"shard": self._shard})] * len(
                        batch
                    )
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # the request may have been cancelled (client went away)
                        future.set_result(result)
        finally:
            self._sender = None

    async def _call(self, ops: list[Any]) -> list[Any]:
        self._batch_ops.observe(len(ops))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._config.call_timeout_s):  # no task of its own, unlike wait_for
                return await self._transport.call(self._shard, ops)
        except TimeoutError:
            raise Unavailable(
                f"shard {self._shard} did not answer within {self._config.call_timeout_s} s",
                {"shard": self._shard},
                "Retry shortly. A write that got this answer may or may not have been applied.",
            ) from None
        finally:
            self._call_seconds.observe(time.perf_counter() - started)


class _Outboxes:
    """One outbox a shard; `broadcast` sends the same op to every shard and fails if any does."""

    KIND: str  # the metrics' label

    def __init__(self, transport: ShardTransport, config: OutboxConfig) -> None:
        self.shards = transport.shards
        self.transport = transport
        self._outboxes = [Outbox(i, transport, config, self.KIND) for i in range(self.shards)]

    async def broadcast(self, op: Any) -> list[Any]:
        return list(await asyncio.gather(*(outbox.submit(op) for outbox in self._outboxes)))


class ShardRouter(_Outboxes):
    """Finds the shard of a session and hands its ops to that shard's outbox."""

    KIND = "session"

    async def submit(self, org: str, session_id: str, op: SessionOp) -> Any:
        return await self._outboxes[shard_for(org, session_id, self.shards)].submit(op)


class MemoryRouter(_Outboxes):
    """Finds an organization's memory shard and hands its ops to that shard's outbox, so concurrent
    upserts share one log write; texts go to the embedder."""

    KIND = "memory"
    transport: MemoryTransport

    def __init__(self, transport: MemoryTransport, config: OutboxConfig) -> None:
        super().__init__(transport, config)

    async def submit(self, org: str, op: Any) -> Any:
        return await self._outboxes[memory_shard_for(org, self.shards)].submit(op)

    async def embed(self, texts: list[str]) -> Any:
        return await self.transport.embed(texts)
