"""What the routes depend on, as one dependency: the caller's organization (from its API key) and
the gateway's shard routers and limits. One, because FastAPI spends about 8 µs resolving each
dependency of a request (a twentieth of an append); and async, because it runs a plain `def`
dependency in its thread pool, a thread hop per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from engine.config import LimitsConfig, MemoryConfig
from engine.idempotency import Idempotent

from .auth import organization
from .idempotency import fingerprint, idempotency_key
from .outbox import MemoryRouter, ShardRouter


@dataclass(frozen=True, slots=True)
class Authorized:
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


async def _caller(request: Request) -> Authorized:
    state = request.app.state
    config = state.config
    org = organization(request)
    state.limiter.check(org)
    limits = state.org_limits.get(org, config.limits)
    return Authorized(org, state.router, state.memory, limits, config.memory, request)


Caller = Annotated[Authorized, Depends(_caller)]
