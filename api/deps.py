"""Dependencies the routes share: the shard router and the limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.config import LimitsConfig

from .outbox import ShardRouter


def _router(request: Request) -> ShardRouter:
    router: ShardRouter = request.app.state.router
    return router


def _limits(request: Request) -> LimitsConfig:
    limits: LimitsConfig = request.app.state.config.limits
    return limits


Router = Annotated[ShardRouter, Depends(_router)]
Limits = Annotated[LimitsConfig, Depends(_limits)]
