"""MCP tools for agents (the official `mcp` SDK), served over streamable HTTP at `mcp.path`
(default /mcp) on the gateway, with the same Bearer keys, organization scoping and rate limits.

Each tool takes the HTTP API's own request models (api/schemas.py) and runs the HTTP route's own
function, so a tool and its route validate, limit and answer alike and cannot drift apart. An error
is the tool's error result, holding the API's error body `{error, code, details, hint}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.config import EngineConfig
from engine.errors import EngineError

from .auth import organization
from .deps import Caller
from .errors import ORG_SCOPE_KEY, engine_error_response, for_client
from .routes import sessions, vectors
from .schemas import AppendMessagesIn, CreateSessionIn, SearchMemoryIn

CALLER_SCOPE_KEY = "session_engine.caller"
INSTRUCTIONS = (
    "Sessions hold an agent's conversation and a JSON context; closing one indexes what was said "
    "into session memory and summarizes it. search_memory finds prior closed sessions by what was "
    "said, with their summaries and the messages that matched."
)


def build_server() -> MCPServer:
    server = MCPServer("session-engine", instructions=INSTRUCTIONS)

    @server.tool()
    async def search_memory(query: SearchMemoryIn, ctx: Context) -> dict[str, Any]:
        """Find prior (closed) sessions of your organization that talked about something: one match
        per session, best first, with its summary and the messages that matched (highlights)."""
        return await _run(ctx, lambda caller: vectors.query_vectors(query, caller))

    @server.tool()
    async def get_session(
        session_id: str, ctx: Context, after_seq: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """A session and its messages in order (after_seq and limit page through them)."""
        if after_seq < 0 or (limit is not None and limit < 1):
            raise ToolError("after_seq must be >= 0 and limit >= 1")
        return await _run(ctx, lambda caller: sessions.get_session(session_id, caller, after_seq, limit))

    @server.tool()
    async def create_session(session: CreateSessionIn, ctx: Context) -> dict[str, Any]:
        """Start a session: a name, optionally a TTL in seconds and a JSON context."""
        return await _run(ctx, lambda caller: sessions.create_session(session, caller))

    @server.tool()
    async def append_messages(session_id: str, messages: AppendMessagesIn, ctx: Context) -> dict[str, Any]:
        """Append one message ({role, content}) or a batch ({messages: [...]}), all or nothing."""
        return await _run(ctx, lambda caller: sessions.append_messages(session_id, messages, caller))

    @server.tool()
    async def update_context(
        session_id: str, context: dict[str, Any], ctx: Context, if_match: int | None = None
    ) -> dict[str, Any]:
        """Replace the session's whole JSON context; with if_match, only at that version."""
        header = None if if_match is None else str(if_match)
        return await _run(ctx, lambda caller: sessions.replace_context(session_id, context, caller, header))

    @server.tool()
    async def close_session(session_id: str, ctx: Context) -> dict[str, Any]:
        """Close the session: what was said goes into session memory, and a summary follows."""
        return await _run(ctx, lambda caller: sessions.close_session(session_id, caller))

    return server


async def _run(ctx: Context, route: Callable[[Caller], Awaitable[Response]]) -> dict[str, Any]:
    """The route's answer as the tool's result; its error as the tool's error."""
    request = ctx.request_context.request
    assert isinstance(request, Request)
    caller: Caller = request.scope[CALLER_SCOPE_KEY]
    try:
        response = await route(caller)
    except EngineError as error:
        exc = for_client(error)
        body = {"error": exc.message, "code": exc.code, "details": exc.details, "hint": exc.hint}
        raise ToolError(orjson.dumps(body).decode()) from None
    answer: dict[str, Any] = orjson.loads(response.body)
    return answer


def serve(config: EngineConfig) -> tuple[ASGIApp, StreamableHTTPSessionManager]:
    """The tools as an ASGI app, and the session manager to run while the gateway runs.
    Stateless and answering JSON: any worker of any gateway answers any call, as in the HTTP API."""
    server = build_server()
    app = server.streamable_http_app(
        streamable_http_path="/", stateless_http=True, json_response=True, host=config.host
    )
    return app, server.session_manager


class Authenticated:
    """In front of the MCP app (`gateway.state.mcp_app`, made at each start): the caller's key
    (the same as the HTTP API's) decides its organization, its rate limit applies, and the tools
    find it in the request's scope."""

    def __init__(self, gateway: FastAPI) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.gateway.state
        if scope["type"] != "http":
            await state.mcp_app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            org = organization(request)
            scope[ORG_SCOPE_KEY] = org
            state.limiter.check(org)
        except EngineError as exc:
            await engine_error_response(exc)(scope, receive, send)
            return
        limits = state.org_limits.get(org, state.config.limits)
        # The tools' caller sees the request without an Idempotency-Key: a key would apply to the
        # whole MCP message, not to one tool call.
        headers = [(name, value) for name, value in scope["headers"] if name != b"idempotency-key"]
        own = Request({**scope, "headers": headers})
        scope[CALLER_SCOPE_KEY] = Caller(org, state.router, state.memory, limits, state.config.memory, own)
        await state.mcp_app(scope, receive, send)
