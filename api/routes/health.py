"""Liveness and readiness, without auth.

/readyz is 200 once every session shard answers: sessions are served, so an orchestrator may send
this gateway traffic. Its `status` says the rest: "starting" while memory shards or models still
load (listed in `loading`; memory queries answer 503 ModelsLoading meanwhile), "ready" once
everything is loaded, "degraded" while a shard is read-only, a memory shard or a model actor
answers an error (restarting, unreachable, refusing) or the embedder failed to load, "draining"
while an operator has drained the cluster. A summarizer that failed to load is a notice only: a
summary is ready at close without it (the model's text is an upgrade). Only a session shard that
does not answer, or refuses, is a 503: memory and the models being down leave sessions served, so
that stays a 200 whose `notices` say what is wrong. Nothing unauthenticated names a server path:
every string a shard or model sends is cut to the last part of any absolute path in it
(docs/operations.md, "Readiness").
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.errors import EngineError
from engine.memory.ops import MemoryStats
from engine.sessions.ops import Ping

from ..errors import error_response
from ..http import json_response
from ..schemas import ErrorOut

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 5.0  # for the session shards: past it, 503
# A memory shard that does not answer within this while the session shards do is still starting
# (recovering its index); models answer their own probe (engine.runtime.transports).
LOADING_TIMEOUT_S = 2.0
NOTICE_KEYS = ("read_only", "fenced", "draining", "recovery")
# An absolute path: a "/" at the start or after a space, quote, bracket, "=" or ":", then
# everything up to the next space, quote, bracket, comma, colon or semicolon.
_ABSOLUTE_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=:,;]))/[^\s'\"()\[\],:;]*")


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Sessions are served (200); the body says whether memory and the models have loaded",
    responses={503: {"model": ErrorOut, "description": "A session shard does not answer or refuses."}},
)
async def readyz(request: Request, detail: Literal["cluster"] | None = None) -> Response:
    state = request.app.state
    known = (str(state.config.data_dir),)
    try:
        pings = await asyncio.wait_for(state.router.broadcast(Ping()), READY_TIMEOUT_S)
    except EngineError as exc:
        return _not_ready(f"not ready: {exc.message}", exc.details, known)
    except TimeoutError:
        return _not_ready("not ready: a session shard did not answer", {}, known)
    # Sessions are served from here on: whatever memory or the models answer, this is a 200.
    answers, models = await asyncio.gather(_memory_shards(state.memory), _models(state.memory.transport))
    memory = [answer if isinstance(answer, dict) else None for answer in answers]
    loading = [f"memory-shard-{i}" for i, answer in enumerate(answers) if answer is None]
    loading += [name for name, found in models.items() if _model_state(found) == "loading"]
    failed = {name: found.get("error") for name, found in models.items() if _model_state(found) == "failed"}
    stats = [answer for answer in memory if answer is not None]
    # A shard that is read-only (its disk refuses writes), drained, or whose recovery passed over a
    # damaged snapshot or cut a damaged log tail says so; the engine still serves, so this stays a 200.
    notices = [
        {"shard": f"{kind}-{i}", **notice}
        for kind, answers in (("session", pings), ("memory", memory))
        for i, answer in enumerate(answers)
        if answer is not None and (notice := {k: answer[k] for k in NOTICE_KEYS if k in answer})
    ]
    notices += [
        {"shard": f"memory-{i}", "unavailable": answer.message}
        for i, answer in enumerate(answers)
        if isinstance(answer, EngineError)
    ]
    notices += [{"model": name, "failed": reason} for name, reason in failed.items()]
    notices += _model_pass_notice(models)
    notices += [
        {"model": name, "unavailable": found.get("error")}
        for name, found in models.items()
        if _model_state(found) == "unavailable"
    ]
    body: dict[str, Any] = {}
    if detail == "cluster" and state.cluster_status is not None:
        # What `session-engine status --json` prints: every actor's node, restarts, epoch, counts.
        try:
            body["cluster"] = await asyncio.to_thread(state.cluster_status, state.config)
        except Exception as exc:  # noqa: BLE001 - readiness still answers; the detail says why it is missing
            body["cluster"] = {"error": f"{type(exc).__name__}: {exc}"}
    body |= {
        "status": _status(notices, loading),
        "loading": loading,
        "shards": len(pings),
        "sessions": sum(p["sessions"] for p in pings),
        "memory_shards": len(memory),
        "vectors": sum(s["vectors"] for s in stats),
        "models": models,
        "notices": notices,
    }
    return json_response(without_paths(body, known))


async def _memory_shards(memory: Any) -> list[dict[str, Any] | EngineError | None]:
    """Each memory shard's stats, None for one still starting, or the error of one that answers or
    raises one (restarting, unreachable, refusing its directory): a notice, never a 503, since
    sessions are served without memory."""

    async def stats(shard: int) -> dict[str, Any] | EngineError | None:
        try:
            (answer,) = await asyncio.wait_for(
                memory.transport.call(shard, [MemoryStats()]), LOADING_TIMEOUT_S
            )
        except TimeoutError:
            return None
        except EngineError as exc:
            return exc
        if isinstance(answer, EngineError):
            return answer
        return dict(answer)

    return list(await asyncio.gather(*(stats(i) for i in range(memory.shards))))


async def _models(transport: Any) -> dict[str, Any]:
    """What each model says of itself (engine.runtime.transports); a probe that fails as a whole
    makes both models "unavailable", a notice, never a 503."""
    try:
        models: dict[str, Any] = await transport.ready()
    except EngineError as exc:
        return {name: {"state": "unavailable", "error": exc.message} for name in ("embedder", "summarizer")}
    return models


def _model_pass_notice(models: dict[str, Any]) -> list[dict[str, Any]]:
    """A paused (or off) model pass, with why and how to turn it back on: summaries are still made
    (extractive), so this is said, never a degraded status (engine.closing.model_pass)."""
    summarizer = models.get("summarizer")
    found = summarizer.get("model_pass") if isinstance(summarizer, dict) else None
    if not isinstance(found, dict) or found.get("state") in (None, "active"):
        return []
    notice = {"model": "summarizer", "model_pass": found["state"], "why": found.get("why")}
    if "resume" in found:
        notice["resume"] = found["resume"]
    return [notice]


def _model_state(found: Any) -> str | None:
    return found.get("state") if isinstance(found, dict) else None


def _status(notices: list[dict[str, Any]], loading: list[str]) -> str:
    # A summarizer that failed to load degrades nothing: summaries are made without it.
    serving = [n for n in notices if not (n.get("model") == "summarizer" and "failed" in n)]
    if any(key in n for n in serving for key in ("read_only", "fenced", "failed", "unavailable")):
        return "degraded"
    if any("draining" in n for n in notices):
        return "draining"
    return "starting" if loading else "ready"


def _not_ready(message: str, details: dict[str, Any], known: tuple[str, ...]) -> Response:
    return error_response(
        503, "UNAVAILABLE", without_paths(message, known), without_paths(details, known), "Retry shortly."
    )


def without_paths(value: Any, known: tuple[str, ...] = ()) -> Any:
    """`value` with every absolute path in its strings cut to the path's last part
    ("/srv/engine/data/shards/shard-0000" -> "shard-0000"): unauthenticated answers name no
    server path. The `known` directories (the data directory) go first, by their text, so a
    space in them does not leave a part of them behind. Keys are left as they are."""
    if isinstance(value, str):
        for directory in known:
            value = value.replace(directory.rstrip("/"), directory.rstrip("/").rsplit("/", 1)[-1])
        return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], value)
    if isinstance(value, dict):
        return {key: without_paths(item, known) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_paths(item, known) for item in value]
    return value
