"""MCP tools for agents (the official `mcp` SDK), served over streamable HTTP at `mcp.path`
(default /mcp) on the gateway, with the same Bearer keys, organization scoping and rate limits.

Each tool takes the HTTP API's own request models (api/schemas.py) and runs the HTTP route's own
function, so a tool and its route validate, limit and answer alike and cannot drift apart. A tool's
arguments stand for the route's request: its request model (or the context) is the body, the rest
are path, query and header parameters (`_IN_REQUEST`). They pass the body's JSON checks
(api/json_numbers.py) before the SDK validates them, and an error names its field as the route's
would. An error is the tool's error result, holding the API's error body `{error, code, details,
hint}` as its text and its structured content, so a tool and its route refuse alike too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from pydantic import Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.config import EngineConfig
from engine.errors import EngineError

from .auth import organization
from .deps import Caller
from .errors import (
    ORG_SCOPE_KEY,
    describe,
    dump_body,
    engine_error_body,
    engine_error_response,
    invalid_request,
    payload_too_large,
)
from .json_numbers import find
from .routes import sessions, vectors
from .schemas import AppendMessagesIn, CreateSessionIn, ForkSessionIn, SearchMemoryIn

CALLER_SCOPE_KEY = "session_engine.caller"
INSTRUCTIONS = (
    "Sessions hold an agent's conversation and a JSON context; closing one indexes what was said "
    "into session memory and summarizes it. search_memory finds prior closed sessions by what was "
    "said, with their summaries and the messages that matched."
)


# Where each tool argument is in the HTTP request its route answers, as FastAPI locates a field.
_BODY = ("body",)
_IN_REQUEST: dict[str, tuple[str, ...]] = {
    "session_id": ("path", "session_id"),
    "after_seq": ("query", "after_seq"),
    "limit": ("query", "limit"),
    "if_match": ("header", "if-match"),
    "query": _BODY,
    "session": _BODY,
    "messages": _BODY,
    "context": _BODY,
    "fork": _BODY,
}


def _in_request(argument: str) -> tuple[str, ...]:
    return _IN_REQUEST.get(argument, (*_BODY, argument))


class Tools(MCPServer):
    """The SDK's server, answering a refused call with the API's error body."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            _check_numbers(arguments)
            return await super().call_tool(name, arguments, context)
        except EngineError as exc:
            return _refused(exc)
        except ToolError as exc:
            # The SDK raises what a tool raised, and what its argument validation did, as the cause.
            cause = exc.__cause__
            if isinstance(cause, EngineError):
                return _refused(cause)
            if isinstance(cause, ValidationError):
                return _refused(invalid_request([_describe_argument(err) for err in cause.errors()]))
            raise  # an unknown tool, or a bug: the SDK's own answer


def _check_numbers(arguments: dict[str, Any]) -> None:
    """The body's JSON checks, on the parsed arguments: the SDK's parser takes NaN and Infinity,
    reads 1e400 as infinity and keeps any integer, which HTTP refuses before it parses."""
    for name, value in arguments.items():
        where = _in_request(name)
        if isinstance(value, str) and where == _BODY:
            # The SDK reads a JSON text given for an object argument as that object.
            with contextlib.suppress(ValueError, RecursionError):
                value = json.loads(value)
        bad = find(value, where[1:])
        if bad is not None:
            raise bad.error()


def _describe_argument(err: Any) -> dict[str, Any]:
    """A pydantic error of a tool's arguments, located as the route's would be."""
    argument, *rest = err["loc"] or ("",)
    return describe({**err, "loc": (*_in_request(str(argument)), *rest)})


def _refused(exc: EngineError) -> CallToolResult:
    body = engine_error_body(exc)
    text = TextContent(type="text", text=dump_body(body).decode())
    return CallToolResult(content=[text], structured_content=body, is_error=True)


def build_server() -> MCPServer:
    server = Tools("session-engine", instructions=INSTRUCTIONS)

    @server.tool()
    async def search_memory(query: SearchMemoryIn, ctx: Context) -> dict[str, Any]:
        """Find prior (closed) sessions of your organization that talked about something: one match
        per session, best first, with its summary and the messages that matched (highlights)."""
        return await _run(ctx, lambda caller: vectors.query_vectors(query, caller))

    @server.tool()
    async def get_session(
        session_id: str,
        ctx: Context,
        after_seq: Annotated[int, Field(ge=0)] = 0,
        limit: Annotated[int | None, Field(ge=1)] = None,
    ) -> dict[str, Any]:
        """A session and its messages in order (after_seq and limit page through them)."""
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
    async def fork_session(session_id: str, fork: ForkSessionIn, ctx: Context) -> dict[str, Any]:
        """Branch a session: a new active session with its messages 1..at_seq (0: none) and, unless
        given, its name, TTL and current context. The session forked from does not change."""
        return await _run(ctx, lambda caller: sessions.fork_session(session_id, fork, caller))

    @server.tool()
    async def close_session(session_id: str, ctx: Context) -> dict[str, Any]:
        """Close the session: its summary is made first (summary_status ready), then what was said
        and that summary go into session memory (index_status ready: searchable)."""
        return await _run(ctx, lambda caller: sessions.close_session(session_id, caller))

    return server


async def _run(ctx: Context, route: Callable[[Caller], Awaitable[Response]]) -> dict[str, Any]:
    """The route's answer as the tool's result (its error reaches `Tools.call_tool`)."""
    request = ctx.request_context.request
    assert isinstance(request, Request)
    caller: Caller = request.scope[CALLER_SCOPE_KEY]
    response = await route(caller)
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
    find it in the request's scope. The body is read here, within the API's limit, so that a body
    over it gets the API's 413 (the SDK's app would answer the refusal in plain text)."""

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
        try:
            body = await request.body()  # a body without a length is counted as it arrives (api/http.py)
        except HTTPException as exc:
            if exc.status_code != 413:
                raise
            await payload_too_large(state.config.limits.max_body_bytes)(scope, receive, send)
            return
        limits = state.org_limits.get(org, state.config.limits)
        # The tools' caller sees the request without an Idempotency-Key: a key would apply to the
        # whole MCP message, not to one tool call.
        headers = [(name, value) for name, value in scope["headers"] if name != b"idempotency-key"]
        own = Request({**scope, "headers": headers})
        scope[CALLER_SCOPE_KEY] = Caller(org, state.router, state.memory, limits, state.config.memory, own)
        await state.mcp_app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
