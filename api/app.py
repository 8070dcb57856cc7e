"""The FastAPI application: `create_app(config)` wires auth, routes, errors and the shard router."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

import engine
from engine.config import EngineConfig
from engine.keys import KeyStore, load_key_store
from engine.logs import setup_logging
from engine.runtime.transport import MemoryTransport, ShardTransport

from .errors import install_error_handlers
from .http import RequestContextMiddleware
from .outbox import MemoryRouter, ShardRouter
from .ratelimit import RateLimiter
from .routes import health, sessions, vectors

RESOLVED_CONFIG_ENV = "SESSION_ENGINE_RESOLVED_CONFIG"


def _ray_transport(config: EngineConfig) -> ShardTransport:
    from engine.runtime import ray_host

    ray_host.connect(config)
    return ray_host.RayTransport(ray_host.find_shards(config))


def _ray_memory(config: EngineConfig) -> MemoryTransport:
    from engine.runtime import ray_host, ray_memory

    ray_host.connect(config)
    return ray_memory.RayMemoryTransport(
        config, ray_memory.find_memory_shards(config), ray_memory.find_embedders(config)
    )


def tune_gc() -> None:
    """Collect garbage less often, and never scan what was there at startup. A gateway holds Ray's,
    pydantic's and FastAPI's objects, hundreds of thousands of them, and the default thresholds
    scanned them so often under load that it cost a fifth of the throughput and tripled the p99
    (benchmarks/RESULTS.md). Requests make little cyclic garbage; what they make is still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000)  # the first generation's; the older two keep theirs


def create_app(
    config: EngineConfig,
    *,
    transport: Callable[[EngineConfig], ShardTransport] = _ray_transport,
    memory: Callable[[EngineConfig], MemoryTransport] = _ray_memory,
    keys: KeyStore | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.router = ShardRouter(transport(config), config.outbox)
        app.state.memory = MemoryRouter(memory(config), config.outbox)
        tune_gc()
        yield

    app = FastAPI(
        title="session-engine",
        version=engine.__version__,
        description="Sessions and memory for AI agent fleets; fold.run-compatible HTTP API.",
        lifespan=lifespan,
        strict_content_type=False,  # as on every route (api/http.py: json_router)
        # FastAPI's OpenTelemetry hooks, unused here, cost ~9 µs a request even with no provider.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.config = config
    app.state.keys = keys if keys is not None else load_key_store(config)
    app.state.limiter = RateLimiter(config.limits, config.workers)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.limits.max_body_bytes)
    for router in (health.router, sessions.router, vectors.router):
        # The routes themselves, not include_router: FastAPI 0.16x matches an included router
        # through a wrapper that re-walks its routes on every request (a tenth of the gateway's
        # time under load). The routes already carry the router's prefix, tags and responses.
        app.router.routes.extend(router.routes)
    return app


def app_from_env() -> FastAPI:
    """Factory for gateway worker processes: `serve` hands them its resolved config."""
    config = EngineConfig.model_validate_json(os.environ[RESOLVED_CONFIG_ENV])
    setup_logging(config.log_level)
    return create_app(config)
