"""Liveness and readiness, without auth."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.errors import EngineError
from engine.memory.store import MemoryStats
from engine.sessions.ops import Ping

from ..errors import error_response
from ..http import json_response
from ..schemas import ErrorOut

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 5.0


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Every shard answers and the models are loaded",
    responses={503: {"model": ErrorOut, "description": "A shard or a model is not ready."}},
)
async def readyz(request: Request, detail: Literal["cluster"] | None = None) -> Response:
    async def check() -> tuple[list[Any], list[Any], dict[str, Any]]:
        memory = request.app.state.memory
        pings, stats, models = await asyncio.gather(
            request.app.state.router.broadcast(Ping()),
            memory.broadcast(MemoryStats()),
            memory.transport.ready(),
        )
        return pings, stats, models

    try:
        pings, memory_stats, models = await asyncio.wait_for(check(), READY_TIMEOUT_S)
    except EngineError as exc:
        return error_response(503, "UNAVAILABLE", f"not ready: {exc.message}", exc.details, "Retry shortly.")
    except TimeoutError:
        return error_response(503, "UNAVAILABLE", "not ready: a shard did not answer", {}, "Retry shortly.")
    # A shard that is read-only (its disk refuses writes) or whose recovery passed over a damaged
    # snapshot or cut a damaged log tail says so; the engine still serves, so this stays a 200.
    notices = [
        {"shard": f"{kind}-{i}", **notice}
        for kind, answers in (("session", pings), ("memory", memory_stats))
        for i, answer in enumerate(answers)
        if (notice := _notice(answer))
    ]
    body: dict[str, Any] = {}
    if detail == "cluster" and request.app.state.cluster_status is not None:
        # What `session-engine status --json` prints: every actor's node, restarts, epoch, counts.
        try:
            state = request.app.state
            body["cluster"] = await asyncio.to_thread(state.cluster_status, state.config)
        except Exception as exc:  # noqa: BLE001 - readiness still answers; the detail says why it is missing
            body["cluster"] = {"error": f"{type(exc).__name__}: {exc}"}
    return json_response(
        {
            **body,
            "status": "degraded" if any("read_only" in n for n in notices) else "ready",
            "shards": len(pings),
            "sessions": sum(p["sessions"] for p in pings),
            "memory_shards": len(memory_stats),
            "vectors": sum(s["vectors"] for s in memory_stats),
            "models": models,
            "notices": notices,
        }
    )


def _notice(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in ("read_only", "fenced", "recovery") if key in answer}
