"""Dependencies the routes share: the shard and memory routers, and the limits. All async: FastAPI
runs a plain `def` dependency in its thread pool, one thread hop per request each."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.config import LimitsConfig, MemoryConfig

from .outbox import MemoryRouter, ShardRouter


async def _router(request: Request) -> ShardRouter:
    router: ShardRouter = request.app.state.router
    return router


async def _limits(request: Request) -> LimitsConfig:
    limits: LimitsConfig = request.app.state.config.limits
    return limits


Router = Annotated[ShardRouter, Depends(_router)]
Limits = Annotated[LimitsConfig, Depends(_limits)]


async def _memory(request: Request) -> MemoryRouter:
    memory: MemoryRouter = request.app.state.memory
    return memory


async def _memory_limits(request: Request) -> MemoryConfig:
    limits: MemoryConfig = request.app.state.config.memory
    return limits


Memory = Annotated[MemoryRouter, Depends(_memory)]
MemoryLimits = Annotated[MemoryConfig, Depends(_memory_limits)]
