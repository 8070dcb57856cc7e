"""The only place HTTP meets the engine's errors: every error leaves as {error, code, details, hint}."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from engine.errors import (
    EngineError,
    Internal,
    NotJson,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from engine.logs import request_id_var

from . import metrics
from .json_numbers import locate

log = logging.getLogger(__name__)

ORG_SCOPE_KEY = "session_engine.org"  # set by api/deps.py: the caller's organization

STATUS_BY_CODE = {
    "AUTH_REQUIRED": 401,
    "AUTH_INVALID": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "PRECONDITION_FAILED": 412,
    "GONE": 410,
    "PAYLOAD_TOO_LARGE": 413,
    "VALIDATION_ERROR": 422,
    "RATE_LIMITED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    hint: str = "",
    *,
    retry_after_s: float | None = None,
    limit_per_s: float | None = None,
) -> Response:
    """`retry_after_s` becomes Retry-After (a 503 says 1 s without it); a 429 of a rate limit also
    names the rate it is over, `limit_per_s`."""
    body = error_body(status, code, message, details, hint)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 413:
        # The rest of a body too large to read would still arrive on this connection: close it
        # rather than read and drop megabytes (uvicorn closes after a `Connection: close` answer).
        headers["Connection"] = "close"
    if status == 503 and retry_after_s is None:
        retry_after_s = Unavailable.retry_after_s
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    if status == 429 and limit_per_s is not None:  # a rate limit (a cap on open feeds has none)
        assert retry_after_s is not None  # RateLimited gives both
        headers |= {
            "X-RateLimit-Limit": f"{limit_per_s:g}",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": headers["Retry-After"],  # seconds until a request is accepted again
        }
    return Response(dump_body(body), status_code=status, media_type="application/json", headers=headers)


def error_body(
    status: int, code: str, message: str, details: dict[str, Any] | None = None, hint: str = ""
) -> dict[str, Any]:
    """The one shape of every error: `{error, code, details, hint}`."""
    details = details or {}
    if status >= 500 and "request_id" not in details:
        # Every 5xx names its request, so an operator can find it in the server log.
        details = {**details, "request_id": request_id_var.get()}
    if code == "VALIDATION_ERROR":
        details = validation_details(message, details)
    return {"error": message, "code": code, "details": details, "hint": hint}


def validation_details(message: str, details: dict[str, Any], field: str = "request") -> dict[str, Any]:
    """A VALIDATION_ERROR's details in their one shape: a `field` (`field` when none is named:
    the request as a whole) and `errors`, each with its `field` and `message`."""
    if "errors" in details:
        return details
    field = str(details.get("field", field))
    return {"field": field, **details, "errors": [{"field": field, "message": message}]}


def for_client(exc: EngineError) -> EngineError:
    """What a client is told of `exc`: the error itself, or INTERNAL for a ServerFault (the
    operator's business: its message may name the server's files), which is logged in full."""
    if exc.code in STATUS_BY_CODE:
        return exc
    log.error("server fault: %s", exc.message, extra={"code": exc.code})
    return Internal(
        "the server could not answer this request",
        {"fault": exc.code},
        "The server failed under this request (details.fault says how); retry shortly, and if it "
        "goes on, give the operator the request id.",
    )


def status_of(exc: EngineError) -> int:
    return 400 if isinstance(exc, NotJson) else STATUS_BY_CODE[exc.code]


def details_of(exc: EngineError) -> dict[str, Any]:
    """The error's details; a VALIDATION_ERROR's always name a `field` and list `errors`, each with
    its `field` and `message`, whichever check refused the request (the schema's or the engine's)."""
    if exc.code != "VALIDATION_ERROR":
        return exc.details
    # The engine's checks that name no field are about the body as a whole (a vector's
    # dimension, a change the log cannot hold).
    return validation_details(exc.message, exc.details, "body")


def engine_error_body(exc: EngineError) -> dict[str, Any]:
    """What an MCP tool's error result holds: the body an HTTP client gets for the same error."""
    exc = for_client(exc)
    return error_body(status_of(exc), exc.code, exc.message, details_of(exc), exc.hint)


def engine_error_response(exc: EngineError) -> Response:
    exc = for_client(exc)
    return error_response(
        status_of(exc),
        exc.code,
        exc.message,
        details_of(exc),
        exc.hint,
        retry_after_s=exc.retry_after_s,
        limit_per_s=exc.limit_per_s if isinstance(exc, RateLimited) else None,
    )


def dump_body(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        # orjson refuses integers over 64 bits, and details can echo one back from the request
        # (an If-Match of 30 digits): the client still gets its error, not a 500.
        return json.dumps(body, default=str).encode()


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    if isinstance(exc, RateLimited | QuotaExceeded):
        org = request.app.state.org_labels(request.scope.get(ORG_SCOPE_KEY, ""))
        if isinstance(exc, RateLimited):
            metrics.RATE_LIMITED.labels(org).inc()
        else:
            metrics.QUOTA_REFUSED.labels(org, exc.details["quota"]).inc()
    if STATUS_BY_CODE.get(exc.code, 0) >= 500:  # a ServerFault is logged by for_client
        log.warning("request failed: %s", exc.message, extra={"code": exc.code, "path": request.url.path})
    return engine_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [describe(err) for err in exc.errors()]
    if any(p["type"] == "json_invalid" for p in problems):
        # A number the engine cannot keep (1e400), or NaN written out, is named by its field.
        bad = locate(exc.body) if isinstance(exc.body, str | bytes) else None
        if bad is not None:
            return engine_error_response(bad.error())
        return engine_error_response(
            NotJson(
                "request body is not valid JSON",
                {"field": "body", "errors": problems},
                "Send a JSON body with 'Content-Type: application/json'.",
            )
        )
    content_type = request.headers.get("content-type", "application/json")
    whole_body = [p for p in problems if p["in"] == p["field"] == "body"]
    if "json" not in content_type and any(p["type"] in _NOT_AN_OBJECT for p in whole_body):
        return engine_error_response(
            ValidationFailed(
                f"request body must be JSON, but Content-Type is {content_type!r}",
                {"field": "body", "errors": problems},
                "Send the header 'Content-Type: application/json' (curl -d sends form data by default).",
            )
        )
    return engine_error_response(invalid_request(problems))


def invalid_request(problems: list[dict[str, Any]]) -> ValidationFailed:
    """The error for what a request's schema refused (`describe`d pydantic errors): the first
    problem's field, and all of them."""
    first = problems[0]
    return ValidationFailed(
        f"{first['field']}: {first['message']}",
        {"field": first["field"], "errors": problems},
        "Fix the fields named in details and send the request again; /docs lists every field.",
    )


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type"})


def describe(err: Any) -> dict[str, Any]:
    """A pydantic error as `{field, message, in, type}`: `in` is where in the request (body, query,
    path, header), `field` the dotted path in it (the place itself for the whole body)."""
    loc = [str(part) for part in err.get("loc", ())]
    where = loc[0] if loc else "body"
    kind = str(err.get("type", ""))
    message = str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "json_invalid":  # its loc holds the character position, which the message has too
        loc = [where]
        message = f"JSON decode error: {err.get('ctx', {}).get('error', '')}".strip()
    return {"field": ".".join(loc[1:]) or where, "message": message, "in": where, "type": kind}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 413:
        return payload_too_large(request.app.state.config.limits.max_body_bytes)
    if exc.status_code == 404:
        return error_response(
            404, "NOT_FOUND", f"no route {request.url.path}", {}, "See /docs for the routes."
        )
    if exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        response = error_response(
            405,
            "VALIDATION_ERROR",
            f"method {request.method} is not allowed on {request.url.path}",
            {"field": "method", "allowed": allowed},
            f"Use one of: {allowed}." if allowed else "See /docs for the routes.",
        )
        response.headers["Allow"] = allowed  # RFC 9110 requires it on a 405
        return response
    code = "VALIDATION_ERROR" if exc.status_code < 500 else "INTERNAL"
    return error_response(exc.status_code, code, str(exc.detail), {}, "")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette's 405 names only the first route that
    matches the path, and /sessions/{id} is three routes (GET, PATCH, DELETE)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


PAYLOAD_HINT = "Send less per request: split batches or shrink the context. Limits are in the config."


def payload_too_large(limit_bytes: int) -> Response:
    """A body over `limits.max_body_bytes`, declared or counted as it arrived."""
    return error_response(
        413, "PAYLOAD_TOO_LARGE", "request body is too large", {"limit_bytes": limit_bytes}, PAYLOAD_HINT
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # An unexpected exception is answered by api/http.py's RequestContextMiddleware, inside the
    # request's context, so that its 500 carries the request id.
