"""The hot routes answer the requests they accept without FastAPI's dependency solving
(api/direct.py); every other request gets exactly FastAPI's answer, as before."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import fastapi.routing
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.http
from api.app import create_app
from api.http import OrjsonRoute
from engine.config import EngineConfig, load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from engine.runtime.transport import LocalMemoryTransport, LocalTransport

AUTH = {"Authorization": "Bearer k"}


def make_app(config: EngineConfig | None = None) -> FastAPI:
    return create_app(
        config or load_config(),
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(
            c.memory.shards, IndexParams(), lambda texts: np.ones((len(texts), 4), np.float32) / 2
        ),
        keys=KeyStore.from_spec("k=acme"),
    )


def fastapi_only(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The same app with every route answered by FastAPI's handler alone, as before api/direct.py.
    (Copies of the routes: the modules' routes are shared by every app.)"""
    with monkeypatch.context() as patch:
        patch.setattr(api.http, "direct_handler", lambda route: None)
        for i, route in enumerate(app.router.routes):
            if isinstance(route, OrjsonRoute):
                twin = copy.copy(route)
                twin.app = fastapi.routing.request_response(twin.get_route_handler())
                app.router.routes[i] = twin
    return app


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests FastAPI solved dependencies for."""
    paths: list[str] = []
    real = fastapi.routing.solve_dependencies

    async def counting(*, request: Any, **kwargs: Any) -> Any:
        paths.append(request.url.path)
        return await real(request=request, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    yield paths


def test_only_the_routes_of_plain_parameters_go_the_direct_way() -> None:
    direct = {
        f"{sorted(route.methods)[0]} {route.path}"
        for route in make_app().router.routes
        if isinstance(route, OrjsonRoute) and api.http.direct_handler(route) is not None
    }
    assert direct == {
        "POST /sessions",
        "GET /sessions",
        "POST /sessions/{session_id}/messages",
        "GET /sessions/{session_id}",
        "PUT /sessions/{session_id}/context",
        "PATCH /sessions/{session_id}",
        "DELETE /sessions/{session_id}",
        "POST /sessions/{session_id}/summarize",
        "POST /sessions/{session_id}/close",
        "POST /sessions/{session_id}/complete",
        "POST /vectors/upsert",
        "POST /vectors/query",
        "POST /vectors/delete",
        "GET /sessions/{session_id}/events",
        "GET /events",
    }


def test_accepted_requests_skip_dependency_solving_and_others_do_not(solved: list[str]) -> None:
    with TestClient(make_app()) as client:
        sid = client.post("/sessions", json={"name": "a"}, headers=AUTH).json()["id"]
        one = client.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "hi"}, headers=AUTH)
        assert one.status_code == 201 and one.json()["seq"] == 1
        batch = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        two = client.post(f"/sessions/{sid}/messages", json=batch, headers=AUTH)
        assert two.status_code == 201 and [m["seq"] for m in two.json()["messages"]] == [2, 3]
        assert client.post(f"/sessions/{sid}/close", headers=AUTH).status_code == 200
        assert solved == []
        assert (
            client.get(f"/sessions/{sid}?after_seq=1&limit=1", headers=AUTH).json()["messages"][0]["seq"] == 2
        )
        assert client.get("/sessions?status=closed", headers=AUTH).json()["count"] == 1
        assert solved == []
        refused = client.post(f"/sessions/{sid}/messages", json={"role": "user"}, headers=AUTH)
        assert refused.status_code == 422
        assert client.get("/sessions?limit=0", headers=AUTH).status_code == 422
        assert solved == [f"/sessions/{sid}/messages", "/sessions"]


# (method, path, body as bytes, content type): requests FastAPI's handler answers, a path "{sid}"
# standing for a live session.
ODD_REQUESTS = [
    ("POST", "/sessions", b"", None),
    ("POST", "/sessions", b"{not json", "application/json"),
    ("POST", "/sessions", b'{"name": "x"}', "text/plain"),
    ("POST", "/sessions", b'{"name": ""}', "application/problem+json"),
    ("POST", "/sessions", b'{"name": ""}', "application/json"),
    ("POST", "/sessions", b'{"name": "x", "ttl_seconds": 0}', None),
    ("POST", "/sessions", b'{"name": "x", "surprise": 1}', None),
    ("POST", "/sessions", b'["name"]', None),
    ("POST", "/sessions", b"null", None),
    ("POST", "/sessions/{sid}/messages", b'{"role": "user"}', None),
    ("POST", "/sessions/{sid}/messages", b'{"role": "robot", "content": "x"}', None),
    ("POST", "/sessions/{sid}/messages", b'{"role": "user", "content": "x", "messages": []}', None),
    ("POST", "/sessions/{sid}/messages", b'{"messages": [{"role": "user"}]}', None),
    ("POST", "/sessions/{sid}/messages", b'{"role": "user", "content": "x", "tool_name": "t"}', None),
    ("POST", "/sessions/nope/messages", b'{"role": "user", "content": "x"}', None),
    ("POST", "/sessions/{sid}/messages", b'{"role": "user", "content": 12345678901234567890123}', None),
    ("PATCH", "/sessions/{sid}", b'{"ttl_seconds": "soon"}', None),
    ("GET", "/sessions/{sid}?after_seq=-1", b"", None),
    ("GET", "/sessions/{sid}?limit=many", b"", None),
    ("GET", "/sessions?status=sleeping", b"", None),
    ("GET", "/sessions?limit=0", b"", None),
    ("GET", "/sessions?cursor=not-a-cursor", b"", None),
    ("PUT", "/sessions/{sid}/context", b"[1, 2]", None),
    ("PUT", "/sessions/{sid}/context", b'{"a": 1}', "text/plain"),
    ("GET", "/sessions/{sid}/events?after=nowhere", b"", None),
    ("POST", "/vectors/query", b'{"namespace": "n", "top_k": 0}', None),
    ("POST", "/vectors/query", b'{"namespace": "n", "vector": [1, 2]', None),
]


def _comparable(response: Any) -> tuple[int, Any, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body.get("details", {}).pop("request_id", None)
    return response.status_code, body, response.headers.get("content-type")


@pytest.mark.parametrize(("method", "path", "body", "content_type"), ODD_REQUESTS)
def test_requests_it_does_not_accept_get_fastapis_answer_exactly(
    monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: bytes, content_type: str | None
) -> None:
    answers = []
    for app in (make_app(), fastapi_only(make_app(), monkeypatch)):
        with TestClient(app) as client:
            sid = client.post("/sessions", json={"name": "a"}, headers=AUTH).json()["id"]
            headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
            sent = client.request(method, path.replace("{sid}", sid), content=body, headers=headers)
            answers.append(_comparable(sent))
    assert answers[0] == answers[1]
    assert answers[0][0] >= 400


@pytest.mark.parametrize("body", [b'{"name": "x"}', b'{"name": ""}', b"{not json", b""])
def test_without_a_key_the_answer_is_fastapis_whatever_the_body(
    monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    answers = []
    for app in (make_app(), fastapi_only(make_app(), monkeypatch)):
        with TestClient(app) as client:
            answers.append(_comparable(client.post("/sessions", content=body)))
    assert answers[0] == answers[1]
    assert answers[0][0] in (400, 401)  # JSON that does not parse is refused before the key is read


def test_a_refused_body_counts_once_against_the_rate_limit() -> None:
    """The direct way validates the body before it authenticates; a body it refuses goes to
    FastAPI's handler, which authenticates (and counts the request) then: once, not twice."""
    config = load_config()
    limits = config.limits.model_copy(update={"requests_per_second": 2.0, "burst_s": 1.0})
    with TestClient(make_app(config.model_copy(update={"limits": limits}))) as client:
        codes = [
            client.post("/sessions", json={"name": ""}, headers=AUTH).status_code,
            client.post("/sessions", json={"name": "x"}, headers=AUTH).status_code,
            client.post("/sessions", json={"name": "y"}, headers=AUTH).status_code,
        ]
    assert codes == [422, 201, 429]
