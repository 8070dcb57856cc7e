"""FastAPI's handler for the hot routes, without dependency solving, for the requests it would accept.

What it bypasses: FastAPI's request handler solves a tree of dependencies for every request (with
a cache, exit stacks and overrides), which took much of an append's time in the gateway
(benchmarks/RESULTS.md#14-around-fastapis-dependency-solving-and-queries-before-indexing).
A route of plain parameters needs none of it: its one dependency is an async function of the
request alone (such as `CurrentCaller`) and it returns a Response. For such a route this does what
FastAPI's handler does, with FastAPI's own functions: `request_params_to_args` reads the path,
query, header and cookie parameters, the route's body field validates the JSON body, the
dependency is awaited, the endpoint called.

When it falls back: only a request FastAPI would accept goes this way, its parameters valid and,
where the route has a body, a non-empty JSON body that the body field validates. For any other
(a body that is not JSON, another content type, a validation error, dependency overrides set)
`FastPath.read` returns None and the route's FastAPI handler answers, exactly as without this, in
its own order (the dependency first, then the errors). Parameters and body are validated here
before the dependency is awaited; validation has no side effect, so the dependency
(authentication, the rate limit) still runs once a request.

The pin: tests/unit/api/test_fast_path.py sends a table of odd requests to every route this
serves, once this way and once through FastAPI's handler alone, and requires the same bytes back;
it also checks that the FastAPI internals used here keep the signatures this was written against,
so an upgrade that changes them fails there rather than in production.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

# Where a request's parameters come from: the Dependant's fields, and the Request's attribute.
_SOURCES = (
    ("path_params", "path_params"),
    ("query_params", "query_params"),
    ("header_params", "headers"),
    ("cookie_params", "cookies"),
)


class FastPath:
    """One route's fast path: `read` a request's arguments, then `answer` it with them."""

    __slots__ = ("_body_field", "_call", "_needs_call", "_needs_name", "_provider", "_sources")

    def __init__(self, route: APIRoute, needs: Dependant) -> None:
        dependant = route.dependant
        assert dependant.call is not None and needs.call is not None and needs.name is not None
        self._call: Callable[..., Awaitable[Response]] = dependant.call
        self._needs_call: Callable[[Request], Awaitable[Any]] = needs.call
        self._needs_name = needs.name
        self._body_field = route.body_field
        self._provider = route.dependency_overrides_provider
        self._sources: list[tuple[Sequence[Any], str]] = [
            (getattr(dependant, fields), source) for fields, source in _SOURCES if getattr(dependant, fields)
        ]

    async def read(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's arguments but its dependency's, or None: FastAPI's handler answers."""
        if self._provider is not None and getattr(self._provider, "dependency_overrides", None):
            return None  # FastAPI applies the overrides
        arguments: dict[str, Any] = {}
        for fields, source in self._sources:
            values, errors = request_params_to_args(fields, getattr(request, source))
            if errors:
                return None
            arguments.update(values)
        body_field = self._body_field
        if body_field is not None:
            if not await request.body() or not _json_content_type(request):
                return None
            try:
                value = await request.json()
            except ValueError:
                return None
            validated, errors = body_field.validate(value, {}, loc=("body",))
            if errors:
                return None
            arguments[body_field.name] = validated
        return arguments

    async def answer(self, request: Request, arguments: dict[str, Any]) -> Response:
        """Await the dependency, then call the endpoint: its errors are raised as FastAPI's would be."""
        arguments[self._needs_name] = await self._needs_call(request)
        return await self._call(**arguments)


def fast_path_for(route: APIRoute) -> FastPath | None:
    """The route's fast path, or None when the route is not of the kind above."""
    dependant = route.dependant
    call = dependant.call
    if call is None or not inspect.iscoroutinefunction(call) or not _returns_response(call):
        return None
    if _special_params(dependant) or len(dependant.dependencies) != 1 or len(dependant.body_params) > 1:
        return None
    needs = dependant.dependencies[0]
    if not _takes_only_the_request(needs):
        return None
    body_field = dependant.body_params[0] if dependant.body_params else None
    if body_field is not None and (
        route.body_field is not body_field  # embedded in an object: FastAPI's own rules
        or isinstance(body_field.field_info, params.Form)
        or route.strict_content_type is not False
    ):
        return None
    return FastPath(route, needs)


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returned = typing.get_type_hints(call).get("return")
    except (NameError, TypeError):
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def _special_params(dependant: Dependant) -> bool:
    return any(
        name is not None
        for name in (
            dependant.request_param_name,
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
    )


def _takes_only_the_request(needs: Dependant) -> bool:
    """An async function of the request alone, not a generator (no teardown to run)."""
    call = needs.call
    return (
        call is not None
        and needs.name is not None
        and inspect.iscoroutinefunction(call)
        and needs.request_param_name is not None
        and not needs.dependencies
        and not (needs.path_params or needs.query_params or needs.header_params or needs.cookie_params)
        and not needs.body_params
        and not needs.own_oauth_scopes
        and len(inspect.signature(call).parameters) == 1
    )


def _json_content_type(request: Request) -> bool:
    """No Content-Type, or application/json: the types FastAPI reads as JSON on these routes (it
    reads others too, such as application/problem+json; those take its handler)."""
    value = request.headers.get("content-type")
    return value is None or value.split(";", 1)[0].strip().lower() == "application/json"
