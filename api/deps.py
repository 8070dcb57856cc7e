"""What the routes depend on, as one dependency: the caller's organization (from its API key) and
the gateway's shard routers and limits. One, because FastAPI spends about 8 µs resolving each
dependency of a request (a twentieth of an append); and async, because it runs a plain `def`
dependency in its thread pool, a thread hop per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from engine.config import LimitsConfig, MemoryConfig

from .auth import organization
from .outbox import MemoryRouter, ShardRouter


@dataclass(frozen=True, slots=True)
class Authorized:
    org: str
    shards: ShardRouter
    memory: MemoryRouter
    limits: LimitsConfig
    memory_limits: MemoryConfig


async def _caller(request: Request) -> Authorized:
    state = request.app.state
    config = state.config
    org = organization(request)
    state.limiter.check(org)
    return Authorized(org, state.router, state.memory, config.limits, config.memory)


Caller = Annotated[Authorized, Depends(_caller)]
