"""How an export or an import reaches the shards: the gateway hands in its transports and outboxes,
the operator's command its transports alone (`Routes.direct`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import unwrap
from engine.routing import memory_shard_for, shard_for


class Shards(Protocol):
    """A kind's shards: how many, and a batch of ops to one of them (one result per op)."""

    @property
    def shards(self) -> int: ...

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Routes:
    sessions: Shards
    memory: Shards
    # A change to its session's shard, or to the organization's memory shard; each raises the
    # op's EngineError.
    submit_session: Callable[[str, str, Any], Awaitable[Any]]
    submit_memory: Callable[[str, Any], Awaitable[Any]]

    @classmethod
    def direct(cls, sessions: Shards, memory: Shards) -> Routes:
        """Each op its own call to its shard (a gateway's outboxes would batch them)."""

        async def submit_session(org: str, session_id: str, op: Any) -> Any:
            return await call(sessions, shard_for(org, session_id, sessions.shards), op)

        async def submit_memory(org: str, op: Any) -> Any:
            return await call(memory, memory_shard_for(org, memory.shards), op)

        return cls(sessions, memory, submit_session, submit_memory)


async def call(shards: Shards, shard: int, op: Any) -> Any:
    """One op to one shard: its result, or its EngineError raised."""
    (result,) = await shards.call(shard, [op])
    return unwrap(result)
