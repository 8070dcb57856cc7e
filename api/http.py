"""HTTP plumbing: orjson in and out, body limits, and the request id every response carries.

At debug level each response also says which handler answered it (`X-Handler`), and each request
logs a line with it as `handler`: `fast-path` (api/fast_path.py), `fastapi` (FastAPI's own
handler, routing or error handlers), or `middleware` (refused here before the app saw it).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.logs import request_id_var

from .errors import error_response, payload_too_large
from .fast_path import fast_path_for
from .json_numbers import check_body
from .metrics import HttpMetrics
from .schemas import ERROR_RESPONSES

log = logging.getLogger(__name__)

# Where the route handler notes that the fast path took a request; read only at debug level.
HANDLER_SCOPE_KEY = "session_engine.handler"
FAST_PATH, FASTAPI, MIDDLEWARE = "fast-path", "fastapi", "middleware"
HANDLER_HEADER = b"x-handler"

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer: `content` encoded here, or sent as it is when it is already (EncodedJSON)."""
    body = content if type(content) is bytes else orjson.dumps(content)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError subclasses json.JSONDecodeError, so FastAPI reports it as json_invalid.
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """Parses request bodies with orjson, which is faster than the standard library's json. A route
    of plain parameters answers the requests it accepts without FastAPI's dependency solving
    (api/fast_path.py); any other request gets FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fast = fast_path_for(self)

        async def handle(request: Request) -> Response:
            request = _OrjsonRequest(request.scope, request.receive)
            check_body(await request.body())  # kept by the request for the route to parse
            if fast is not None:
                arguments = await fast.read(request)
                if arguments is not None:
                    # Noted before the dependency and the endpoint run, so that their errors too
                    # are told as the fast path's; one store, read only at debug level.
                    request.scope[HANDLER_SCOPE_KEY] = FAST_PATH
                    return await fast.answer(request, arguments)
            return await handler(request)

        return handle


def json_router(prefix: str, tag: str) -> APIRouter:
    """A router of JSON routes. Bodies without a Content-Type are read as JSON: every route needs a
    Bearer header, which a browser cannot send cross-site without a CORS preflight, so this opens
    no CSRF hole. (Set here, on the routes: the app mounts them directly, see api/app.py.)"""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        route_class=OrjsonRoute,
        responses=ERROR_RESPONSES,
        strict_content_type=False,
    )


class RequestContextMiddleware:
    """Gives each request an id (the client's sane X-Request-ID, or a new one) that its logs and its
    response carry, and refuses bodies over the limit with 413 before the app reads them. With
    `show_handler` (the config's log level is debug), each response says which handler answered
    it and each request logs a line that says so."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        measure: HttpMetrics | None = None,
        show_handler: bool = False,
        body_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_limits = body_limits or {}  # a path whose body may be larger (or smaller)
        self.measure = measure
        self.show_handler = show_handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode())
        started = False
        began = time.perf_counter()
        measure = self.measure
        show_handler = self.show_handler

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
                started = True
                if measure is not None:  # a stream (a feed) counts when it opens
                    measure.observe(scope, message["status"], time.perf_counter() - began)
                if show_handler:
                    _show_handler(scope, message)
            await send(message)

        token = request_id_var.set(request_id)
        try:
            declared = _content_length(scope)
            limit = self.body_limits.get(scope["path"], self.max_body_bytes)
            if declared is not None and declared > limit:
                scope[HANDLER_SCOPE_KEY] = MIDDLEWARE
                await payload_too_large(limit)(scope, receive, send_with_id)
                return
            encoding = _header(scope, b"content-encoding")
            if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
                scope[HANDLER_SCOPE_KEY] = MIDDLEWARE
                await _compressed(encoding)(scope, receive, send_with_id)
                return
            # The server delivers no more than a declared Content-Length, so only a body without
            # one (chunked) needs counting as it arrives.
            await self.app(
                scope, receive if declared is not None else self._limited(receive, limit), send_with_id
            )
        except ClientDisconnect:
            return  # the client went (or was dropped for sending too slowly): no one to answer
        except Exception:
            # A bug. Answered here, inside the request's context, so the 500 carries its request id
            # (header and body) and the connection stays usable for the client's next request.
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if started:
                raise  # part of the answer is out: only closing the connection can end it
            await internal_error(request_id)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes HTTPExceptions from body reading through to the error handlers.
                    raise HTTPException(413)
            return message

        return receive_within_limit


def _show_handler(scope: Scope, start: Message) -> None:
    """Tell which handler answered: in the response's headers, and in a log line of the request
    (its request id added by engine.logs). A stream (a feed) is logged when it opens."""
    handler: str = scope.get(HANDLER_SCOPE_KEY, FASTAPI)
    start["headers"].append((HANDLER_HEADER, handler.encode()))
    log.debug(
        "answered",
        extra={
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": start["status"],
            "handler": handler,
        },
    )


def internal_error(request_id: str) -> Response:
    return error_response(
        500,
        "INTERNAL",
        "internal error",
        {"request_id": request_id},
        "This is a bug in the engine; the request id identifies it in the server log.",
    )


def _compressed(encoding: bytes) -> Response:
    # Decided: bodies are not decompressed. A gateway that inflates bodies must bound what they
    # inflate to (a small gzip can expand a thousandfold); refusing them keeps the body limit exact.
    return error_response(
        415,
        "VALIDATION_ERROR",
        f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not accepted",
        {"field": "Content-Encoding", "accepted": ["identity"]},
        "Send the JSON body uncompressed (no Content-Encoding header).",
    )


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _client_request_id(scope: Scope) -> str | None:
    value = _header(scope, b"x-request-id")
    if value is None:
        return None
    text = value.decode("latin-1")
    return text if _CLIENT_REQUEST_ID.match(text) else None
