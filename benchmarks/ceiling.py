"""The ceiling baseline: a plain FastAPI + uvicorn app that keeps sessions in a dict, in one process.

It validates requests with the engine's own request models and limits, authenticates the same
Bearer key, and answers with the same JSON shapes (orjson), but has no Ray, no outbox, no log and
no fsync. What it serves per second is what the Python HTTP stack can do on the machine; the
benchmark suite reports the engine as a fraction of it.

    python -m benchmarks.ceiling --port 8081 --api-key KEY
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from granian import Granian
from granian.constants import HTTPModes, Interfaces
from starlette.responses import Response

from api.app import tune_gc
from api.limits import check_context, check_messages, check_name, check_ttl
from api.schemas import AppendMessagesIn, CreateSessionIn
from engine.config import LimitsConfig
from engine.sessions.session import new_session_id


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": message, "code": code, "details": {}, "hint": None}, status)


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _org(request: Request) -> str:
    if request.headers.get("authorization") != request.app.state.expected_authorization:
        raise _Refused(_error(401, "AUTH_INVALID", "API key not recognized"))
    return "bench"


Org = Annotated[str, Depends(_org)]


def create_ceiling_app(api_key: str, limits: LimitsConfig | None = None) -> FastAPI:
    limits = limits or LimitsConfig()
    sessions: dict[str, dict[str, Any]] = {}
    # FastAPI's OpenTelemetry hooks off, as in the engine: they cost a few µs a request even with
    # no provider configured, and the ratio should not count a setting either side can change.
    app = FastAPI(
        title="ceiling baseline",
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.expected_authorization = f"Bearer {api_key}"

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        return exc.response

    def find(session_id: str) -> dict[str, Any]:
        session = sessions.get(session_id)
        if session is None:
            raise _Refused(_error(404, "NOT_FOUND", f"session {session_id} not found"))
        return session

    @app.post("/sessions", status_code=201)
    async def create(body: CreateSessionIn, _: Org) -> Response:
        now = int(time.time() * 1000)
        ttl = check_ttl(body.ttl_seconds or limits.default_ttl_s, limits)
        session_id = new_session_id()
        view: dict[str, Any] = {
            "id": session_id,
            "name": check_name(body.name, limits),
            "status": "active",
            "ttl_seconds": ttl,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + ttl * 1000,
            "ended_at": None,
            "message_count": 0,
            "context": check_context(body.context or {}, limits),
            "version": 1,
            "summary_status": None,
            "summary": None,
            "summary_error": None,
            "summary_attempts": 0,
            "summary_provenance": None,
        }
        sessions[session_id] = {"view": view, "messages": []}
        return _json(view, 201)

    @app.post("/sessions/{session_id}/messages", status_code=201)
    async def append(session_id: str, body: AppendMessagesIn, _: Org) -> Response:
        session = find(session_id)
        now = int(time.time() * 1000)
        stored = []
        for m in check_messages(body.as_messages(), limits):
            out: dict[str, Any] = {
                "seq": len(session["messages"]) + 1,
                "role": m.role,
                "content": m.content,
                "created_at": now,
            }
            if m.tool_call_id is not None:
                out["tool_call_id"] = m.tool_call_id
            if m.tool_name is not None:
                out["tool_name"] = m.tool_name
            session["messages"].append(out)
            stored.append(out)
        session["view"]["message_count"] = len(session["messages"])
        return _json({"messages": stored} if body.messages is not None else stored[0], 201)

    @app.post("/sessions/{session_id}/complete")
    async def complete(session_id: str, _: Org) -> Response:
        view = find(session_id)["view"]
        view["status"] = "completed"
        view["ended_at"] = view["updated_at"] = int(time.time() * 1000)
        return _json(view)

    @app.get("/sessions/{session_id}")
    async def get(session_id: str, _: Org) -> Response:
        session = find(session_id)
        return _json({**session["view"], "messages": session["messages"]})

    @app.get("/sessions")
    async def list_sessions(
        _: Org, status: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> Response:
        # Newest first, like the engine; the dict keeps insertion (creation) order.
        found = []
        for session in reversed(sessions.values()):
            if status is None or session["view"]["status"] == status:
                found.append(session["view"])
                if len(found) == limit:
                    break
        return _json({"sessions": found, "count": len(found), "next_cursor": None})

    return app


def ceiling_from_env() -> FastAPI:
    """The app for an ASGI server that imports it by name (granian): its key from CEILING_API_KEY."""
    tune_gc()
    return create_ceiling_app(os.environ["CEILING_API_KEY"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--http-server", choices=["uvicorn", "granian"], default="uvicorn")
    args = parser.parse_args()
    if args.http_server == "granian":
        os.environ["CEILING_API_KEY"] = args.api_key
        Granian(
            "benchmarks.ceiling:ceiling_from_env", address=args.host, port=args.port,
            interface=Interfaces.ASGI, factory=True, http=HTTPModes.http1, websockets=False,
            log_level="warning",  # type: ignore[arg-type]
        ).serve()  # fmt: skip
        return
    tune_gc()  # the engine's garbage-collector settings, so the ratio does not count them
    uvicorn.run(
        create_ceiling_app(args.api_key),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
