"""The hot routes without FastAPI's dependency solving, for the requests it would accept anyway.

A route whose one dependency is an async function of the request alone (such as `CurrentCaller`)
and that returns a Response is called here directly: its path, query, header and cookie
parameters read by FastAPI's own `request_params_to_args`, its JSON body validated by the route's
own body field, its dependency awaited. That is what FastAPI's handler does for such a route,
less the general machinery around it (solving a tree of dependencies, caches, exit stacks), which
cost much of an append's time in the gateway (benchmarks/RESULTS.md §14).

Only a request FastAPI would accept goes this way: its parameters valid, and a non-empty JSON body
that the body field validates where the route has a body. Anything else (a body that is not JSON,
another content type, a validation error) goes to FastAPI's handler, which answers it exactly as
before, in its own order (the dependency first, then the errors). Parameters and body are
validated before the dependency is awaited here; validation has no side effect, so the dependency
(authentication, the rate limit) still runs once a request.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Direct = Callable[[Request], Awaitable[Response | None]]  # None: FastAPI's handler answers


def direct_handler(route: APIRoute) -> Direct | None:
    """A handler for the route's accepted requests, or None when the route is not of the kind above."""
    dependant = route.dependant
    call = dependant.call
    if call is None or not inspect.iscoroutinefunction(call) or not _returns_response(call):
        return None
    if _special_params(dependant) or len(dependant.dependencies) != 1 or len(dependant.body_params) > 1:
        return None
    needs = dependant.dependencies[0]
    if not _takes_only_the_request(needs):
        return None
    assert needs.call is not None and needs.name is not None
    body_field = dependant.body_params[0] if dependant.body_params else None
    if body_field is not None and (
        route.body_field is not body_field  # embedded in an object: FastAPI's own rules
        or isinstance(body_field.field_info, params.Form)
        or route.strict_content_type is not False
    ):
        return None
    sources = [
        (fields, source)
        for fields, source in (
            (dependant.path_params, "path_params"),
            (dependant.query_params, "query_params"),
            (dependant.header_params, "headers"),
            (dependant.cookie_params, "cookies"),
        )
        if fields
    ]
    needs_call, needs_name = needs.call, needs.name
    provider = route.dependency_overrides_provider

    async def handle(request: Request) -> Response | None:
        if provider is not None and getattr(provider, "dependency_overrides", None):
            return None  # FastAPI applies the overrides
        arguments: dict[str, Any] = {}
        for fields, source in sources:
            values, errors = request_params_to_args(fields, getattr(request, source))
            if errors:
                return None
            arguments.update(values)
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
        arguments[needs_name] = await needs_call(request)
        response: Response = await call(**arguments)
        return response

    return handle


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
