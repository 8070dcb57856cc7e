"""How a gateway reaches shards: a transport sends a batch of ops to one shard and returns one
result per op (a value, or the EngineError that op raised). Failures of the call itself raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from engine.clock import Clock, SystemClock
from engine.sessions.ops import ExpireDue, Op
from engine.sessions.shard import ShardStore


class ShardTransport(Protocol):
    @property
    def shards(self) -> int: ...

    async def call(self, shard: int, ops: Sequence[Op]) -> list[Any]: ...


class LocalTransport:
    """Shards as plain ShardStores in this process: for API tests without Ray, and for embedding."""

    def __init__(self, shards: int, clock: Clock | None = None) -> None:
        self.stores = [ShardStore() for _ in range(shards)]
        self.clock = clock or SystemClock()

    @property
    def shards(self) -> int:
        return len(self.stores)

    async def call(self, shard: int, ops: Sequence[Op]) -> list[Any]:
        # No timer task here: due sessions are expired before each batch instead.
        return self.stores[shard].apply_batch([ExpireDue(), *ops], self.clock.now_ms())[1:]
