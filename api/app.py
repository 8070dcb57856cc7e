"""The FastAPI application: `create_app(config)` wires auth, routes, errors and the shard router."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

import engine
from engine.config import EngineConfig
from engine.idempotency import MAX_KEY_CHARS
from engine.keys import KeyStore, load_key_store
from engine.logs import setup_logging
from engine.runtime import memory_shards, model_actors, operators, ray_cluster, session_shards
from engine.runtime.transports import (
    MemoryTransport,
    RayMemoryTransport,
    RaySessionTransport,
    SessionTransport,
)

from . import edge, mcp, metrics
from .errors import install_error_handlers
from .feeds import FeedHub
from .http import RequestContextMiddleware
from .outbox import MemoryRouter, ShardRouter
from .ratelimit import RateLimiter
from .routes import events, health, sessions, transfer, vectors

RESOLVED_CONFIG_ENV = "SESSION_ENGINE_RESOLVED_CONFIG"
# Read by api/deps.py from the headers (no parameter of its own, which would cost each request a
# resolution), so declared in the document here.
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key get the first answer and apply nothing again (24 h).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
}
BEARER = "bearer"  # the security scheme's name in the OpenAPI document


def _ray_transport(config: EngineConfig) -> SessionTransport:
    ray_cluster.connect(config)
    return RaySessionTransport(session_shards.find_shards(config))


def _ray_memory(config: EngineConfig) -> MemoryTransport:
    ray_cluster.connect(config)
    return RayMemoryTransport(
        config, memory_shards.find_memory_shards(config), model_actors.find_embedders(config)
    )


def tune_gc() -> None:
    """Collect garbage less often, and never scan what was there at startup. A gateway holds Ray's,
    pydantic's and FastAPI's objects, hundreds of thousands of them, and the default thresholds
    scanned them so often under load that throughput and p99 suffered
    (benchmarks/RESULTS.md#6-garbage-collection-in-the-gateway).
    Requests make little cyclic garbage; what they make is still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000)  # the first generation's; the older two keep theirs


def create_app(
    config: EngineConfig,
    *,
    transport: Callable[[EngineConfig], SessionTransport] = _ray_transport,
    memory: Callable[[EngineConfig], MemoryTransport] = _ray_memory,
    cluster: Callable[[EngineConfig], dict[str, Any]] | None = None,
    keys: KeyStore | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sessions = transport(config)
        app.state.router = ShardRouter(sessions, config.outbox)
        app.state.memory = MemoryRouter(memory(config), config.outbox)
        app.state.feeds = FeedHub(sessions, config.events)
        metrics.worker_started()
        tune_gc()
        async with contextlib.AsyncExitStack() as stack:
            if config.mcp.enabled:
                # A new MCP server each time the app starts (its session manager runs once).
                app.state.mcp_app, manager = mcp.serve(config)
                await stack.enter_async_context(manager.run())
            yield
        metrics.worker_stopped()

    app = FastAPI(
        title="session-engine",
        version=engine.__version__,
        description="Sessions and memory for AI agent fleets; fold.run-compatible HTTP API.",
        lifespan=lifespan,
        strict_content_type=False,  # as on every route (api/http.py: json_router)
        # FastAPI's OpenTelemetry hooks, unused here, cost every request something even with no
        # provider (benchmarks/RESULTS.md#5-one-dependency-a-route-fastapi-telemetry-off).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.config = config
    if cluster is None and transport is _ray_transport:
        cluster = operators.status
    app.state.cluster_status = cluster  # None: not on Ray (in-process tests and tools)
    # The bounds of this process's connections, when served by `serve`.
    edge.configure(config.http, admin_paths=[config.metrics.path] if config.metrics.enabled else [])
    app.state.keys = keys if keys is not None else load_key_store(config)
    app.state.limiter = RateLimiter(config.limits, config.workers)
    app.state.org_limits = {org: config.limits.for_org(org) for org in config.limits.orgs}
    app.state.org_labels = metrics.OrgLabels(config.metrics.max_org_labels, config.limits.orgs)
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.limits.max_body_bytes,
        measure=metrics.HttpMetrics() if config.metrics.enabled else None,
        show_handler=config.log_level == "debug",
        body_limits={transfer.IMPORT_PATH: config.limits.max_import_bytes},
    )
    if config.metrics.enabled:
        app.add_api_route(
            config.metrics.path,
            _metrics,
            methods=["GET"],
            tags=["health"],
            summary="Prometheus metrics: this gateway's and every shard's",
            response_class=PlainTextResponse,
        )
    if config.mcp.enabled:
        app.mount(config.mcp.path, mcp.Authenticated(app))
    for router in (health.router, sessions.router, events.router, vectors.router, transfer.router):
        # The routes themselves, not include_router: FastAPI 0.16x matches an included router
        # through a wrapper that re-walks its routes on every request (a tenth of the gateway's
        # time under load). The routes already carry the router's prefix, tags and responses.
        app.router.routes.extend(router.routes)
    _declare_bearer_auth(app)
    return app


async def _metrics(request: Request) -> Response:
    return await metrics.scrape(request.app.state)


def _declare_bearer_auth(app: FastAPI) -> None:
    """Says in the OpenAPI document that every operation that can answer 401 (each route of
    api/http.py's json_router) takes `Authorization: Bearer <key>`, so /docs can send a key. The
    key is checked by api/deps.py, not by a FastAPI security dependency, which would cost a
    dependency resolution on every request. (Builds the document now instead of on first use.)"""
    document = app.openapi()
    document.setdefault("components", {})["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "An API key of your organization."}
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "401" in operation["responses"]:
                operation["security"] = [{BEARER: []}]
            if method in ("post", "put", "patch", "delete") and path != "/vectors/query":
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)


def app_from_env() -> FastAPI:
    """Factory for gateway worker processes: `serve` hands them its resolved config."""
    _die_with_parent()
    config = EngineConfig.model_validate_json(os.environ[RESOLVED_CONFIG_ENV])
    setup_logging(config.log_level)
    return create_app(config)


def _die_with_parent() -> None:
    """A worker whose `serve` process is gone (killed, or stopped after losing Ray) must not keep a
    listening socket that accepts connections and answers nothing: Linux sends it SIGTERM then."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)
