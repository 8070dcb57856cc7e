"""What the routes depend on, as one dependency: the caller's organization (from its API key) and
the gateway's shard routers and limits. One, because FastAPI pays for resolving each dependency
of a request (benchmarks/RESULTS.md#5-one-dependency-a-route-fastapi-telemetry-off); and async,
because it runs a plain `def` dependency in its thread pool, a thread hop per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from engine.config import LimitsConfig, MemoryConfig
from engine.idempotency import Idempotent

from .auth import organization
from .errors import ORG_SCOPE_KEY
from .idempotency import answered, fingerprint, idempotency_key
from .outbox import MemoryRouter, ShardRouter


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling (the organization its API key names) and what a route reaches for it."""

    org: str
    shards: ShardRouter
    memory: MemoryRouter
    limits: LimitsConfig  # this organization's (limits.orgs applied)
    memory_limits: MemoryConfig
    request: Request

    def idempotency_key(self) -> str | None:
        """The request's Idempotency-Key, checked; read only by writes, so reads ignore it."""
        return idempotency_key(self.request)

    async def once(self, op: Any) -> Any:
        """The op to send for a write: as is, or under the request's Idempotency-Key."""
        key = self.idempotency_key()
        if key is None:
            return op
        return Idempotent(key, await fingerprint(self.request), op)

    async def write(self, session_id: str, op: Any) -> tuple[Any, dict[str, str]]:
        """Send a write to the session's shard (under the request's Idempotency-Key, if it has
        one): its result, and the headers that say when it is an earlier run's answer."""
        return answered(await self.shards.submit(self.org, session_id, await self.once(op)))

    async def write_memory(self, op: Any) -> tuple[Any, dict[str, str]]:
        """The same for a vector write, sent to the organization's memory shard."""
        return answered(await self.memory.submit(self.org, await self.once(op)))


async def current_caller(request: Request) -> Caller:
    state = request.app.state
    config = state.config
    org = organization(request)
    request.scope[ORG_SCOPE_KEY] = org
    state.limiter.check(org)
    limits = state.org_limits.get(org, config.limits)
    return Caller(org, state.router, state.memory, limits, config.memory, request)


# What a route declares (`caller: CurrentCaller`), as FastAPI names such a dependency.
CurrentCaller = Annotated[Caller, Depends(current_caller)]
