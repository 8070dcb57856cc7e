"""The fast path (api/fast_path.py) against FastAPI's own handler, the contract that pins it.

Every route the fast path serves gets a table of odd requests (bodies that are not JSON or not an
object, other content types, missing and extra fields, bad path, query and header parameters,
huge numbers, unicode, repeated parameters, no key), and each request must get the same status,
headers and body bytes from the fast path as from FastAPI's handler alone. The requests that it
accepts skip FastAPI's dependency solving; the FastAPI internals it calls keep the signatures it
was written against, so an upgrade of FastAPI that changes them fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import api.http
import api.routes.sessions
from api.http import FAST_PATH, FASTAPI, OrjsonRoute
from engine.config import load_config
from tests.unit.api.apps import AUTH, app_in_process


def fastapi_only(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The same app with every route answered by FastAPI's handler alone, as without the fast
    path. (Copies of the routes: the modules' routes are shared by every app.)"""
    with monkeypatch.context() as patch:
        patch.setattr(api.http, "fast_path_for", lambda route: None)
        for i, route in enumerate(app.router.routes):
            if isinstance(route, OrjsonRoute):
                twin = copy.copy(route)
                twin.app = fastapi.routing.request_response(twin.get_route_handler())
                app.router.routes[i] = twin
    return app


def served() -> set[str]:
    """The routes the fast path serves, as 'METHOD /path'."""
    return {
        f"{sorted(route.methods)[0]} {route.path}"
        for route in app_in_process().router.routes
        if isinstance(route, OrjsonRoute) and api.http.fast_path_for(route) is not None
    }


def test_only_the_routes_of_plain_parameters_take_the_fast_path() -> None:
    assert served() == {
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
        "POST /sessions/{session_id}/fork",
        "POST /vectors/upsert",
        "POST /vectors/query",
        "POST /vectors/delete",
        "GET /sessions/{session_id}/events",
        "GET /events",
    }


# ---- the contract: a table of odd requests, each answered alike both ways


@dataclass(frozen=True)
class Case:
    """A request: `path` may name a session set up beforehand ({live}, {ended}, {closing},
    {completing}, {doomed}); a header given None is left out."""

    route: str  # the served route it is sent to, 'METHOD /path' as in served()
    label: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str | bytes | None] = dataclasses.field(default_factory=dict)
    status: int = 422

    @property
    def method(self) -> str:
        return self.route.split(" ", 1)[0]

    @property
    def id(self) -> str:
        return f"{self.route} | {self.label}"


JSON = {"Content-Type": "application/json"}
NO_KEY = {"Authorization": None}
CREATE = "POST /sessions"
APPEND = "POST /sessions/{session_id}/messages"
GET = "GET /sessions/{session_id}"
CONTEXT = "PUT /sessions/{session_id}/context"
UPDATE = "PATCH /sessions/{session_id}"
LIST = "GET /sessions"
SUMMARIZE = "POST /sessions/{session_id}/summarize"
CLOSE = "POST /sessions/{session_id}/close"
COMPLETE = "POST /sessions/{session_id}/complete"
FORK = "POST /sessions/{session_id}/fork"
DELETE = "DELETE /sessions/{session_id}"
UPSERT = "POST /vectors/upsert"
QUERY = "POST /vectors/query"
FORGET = "POST /vectors/delete"
SESSION_EVENTS = "GET /sessions/{session_id}/events"
EVENTS = "GET /events"
MESSAGE = b'{"role": "user", "content": "hi"}'

# Sent in this order to both apps; the writes that end or delete a session come last.
CASES = [
    # Create: the body is a CreateSessionIn.
    Case(CREATE, "accepted", "/sessions", b'{"name": "a"}', status=201),
    Case(
        CREATE,
        "accepted, unicode",
        "/sessions",
        '{"name": "héllo 👋 مرحبا", "context": {"ключ": "値"}}'.encode(),
        status=201,
    ),
    Case(CREATE, "escaped NUL", "/sessions", b'{"name": "a\\u0000b"}'),
    Case(CREATE, "lone surrogate", "/sessions", b'{"name": "\\ud800"}', status=400),
    Case(CREATE, "not UTF-8", "/sessions", b'{"name": "\xff"}', status=400),
    Case(
        CREATE,
        "deep context",
        "/sessions",
        b'{"name": "d", "context": {"a": ' + b"[" * 60 + b"]" * 60 + b"}}",
        status=201,
    ),
    Case(CREATE, "duplicate key, the last wins", "/sessions", b'{"name": "a", "name": "b"}', status=201),
    Case(
        CREATE,
        "JSON with a charset",
        "/sessions",
        b'{"name": "c"}',
        {"Content-Type": "application/json; charset=utf-8"},
        201,
    ),
    Case(
        CREATE, "JSON in capitals", "/sessions", b'{"name": "c"}', {"Content-Type": "Application/JSON"}, 201
    ),
    Case(
        CREATE,
        "problem+json",
        "/sessions",
        b'{"name": "p"}',
        {"Content-Type": "application/problem+json"},
        201,
    ),
    Case(
        CREATE,
        "problem+json, refused",
        "/sessions",
        b'{"name": ""}',
        {"Content-Type": "application/problem+json"},
    ),
    Case(CREATE, "empty Content-Type", "/sessions", b'{"name": "e"}', {"Content-Type": ""}, 201),
    Case(CREATE, "text/plain", "/sessions", b'{"name": "x"}', {"Content-Type": "text/plain"}),
    Case(CREATE, "form", "/sessions", b"name=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    Case(CREATE, "empty body", "/sessions"),
    Case(CREATE, "empty body, JSON", "/sessions", b"", JSON),
    Case(CREATE, "whitespace body", "/sessions", b"  \n", JSON, 400),
    Case(CREATE, "not JSON", "/sessions", b"{not json", JSON, 400),
    Case(CREATE, "NaN", "/sessions", b'{"name": "x", "ttl_seconds": NaN}', status=400),
    Case(CREATE, "an array", "/sessions", b'["name"]'),
    Case(CREATE, "null", "/sessions", b"null"),
    Case(CREATE, "a number", "/sessions", b"7"),
    Case(CREATE, "a string", "/sessions", b'"name"'),
    Case(CREATE, "missing field", "/sessions", b"{}"),
    Case(CREATE, "extra field", "/sessions", b'{"name": "x", "surprise": 1}'),
    Case(CREATE, "empty name", "/sessions", b'{"name": ""}', JSON),
    Case(CREATE, "zero TTL", "/sessions", b'{"name": "x", "ttl_seconds": 0}'),
    Case(CREATE, "float TTL", "/sessions", b'{"name": "x", "ttl_seconds": 1.0}'),
    Case(CREATE, "boolean TTL", "/sessions", b'{"name": "x", "ttl_seconds": true}'),
    Case(CREATE, "TTL as a string", "/sessions", b'{"name": "x", "ttl_seconds": "60"}'),
    Case(CREATE, "huge TTL", "/sessions", b'{"name": "x", "ttl_seconds": 9223372036854775807}'),
    Case(
        CREATE,
        "TTL past 64 bits",
        "/sessions",
        b'{"name": "x", "ttl_seconds": 123456789012345678901234567890}',
    ),
    Case(CREATE, "context not an object", "/sessions", b'{"name": "x", "context": [1]}'),
    Case(CREATE, "no key", "/sessions", b'{"name": "x"}', NO_KEY, 401),
    Case(CREATE, "no key, bad body", "/sessions", b'{"name": ""}', NO_KEY, 401),
    Case(CREATE, "no key, not JSON", "/sessions", b"{not json", NO_KEY, 400),
    Case(CREATE, "no key, empty body", "/sessions", b"", NO_KEY, 401),
    Case(CREATE, "Basic scheme", "/sessions", b'{"name": "x"}', {"Authorization": "Basic k"}, 401),
    Case(CREATE, "empty Bearer", "/sessions", b'{"name": "x"}', {"Authorization": "Bearer "}, 401),
    Case(CREATE, "unknown key", "/sessions", b'{"name": "x"}', {"Authorization": "Bearer nope"}, 401),
    Case(CREATE, "keyed", "/sessions", b'{"name": "k"}', {"Idempotency-Key": "one"}, 201),
    Case(CREATE, "keyed, replayed", "/sessions", b'{"name": "k"}', {"Idempotency-Key": "one"}, 201),
    Case(CREATE, "keyed, another body", "/sessions", b'{"name": "j"}', {"Idempotency-Key": "one"}, 409),
    Case(CREATE, "key too long", "/sessions", b'{"name": "k"}', {"Idempotency-Key": "k" * 300}),
    Case(CREATE, "key not ASCII", "/sessions", b'{"name": "k"}', {"Idempotency-Key": "clé".encode()}),
    # Append: one message, or {"messages": [...]}.
    Case(APPEND, "one message", "/sessions/{live}/messages", MESSAGE, status=201),
    Case(
        APPEND,
        "a batch",
        "/sessions/{live}/messages",
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        status=201,
    ),
    Case(
        APPEND,
        "a batch of one",
        "/sessions/{live}/messages",
        b'{"messages": [{"role": "user", "content": "a"}]}',
        status=201,
    ),
    Case(
        APPEND,
        "unicode content",
        "/sessions/{live}/messages",
        '{"role": "user", "content": "ẞ 𝄞 \\u2028 ✓"}'.encode(),
        status=201,
    ),
    Case(
        APPEND,
        "a tool's answer",
        "/sessions/{live}/messages",
        b'{"role": "tool", "content": "42", "tool_call_id": "c1", "tool_name": "calc"}',
        status=201,
    ),
    Case(APPEND, "no content", "/sessions/{live}/messages", b'{"role": "user"}'),
    Case(APPEND, "unknown role", "/sessions/{live}/messages", b'{"role": "robot", "content": "x"}'),
    Case(
        APPEND, "both forms", "/sessions/{live}/messages", b'{"role": "user", "content": "x", "messages": []}'
    ),
    Case(APPEND, "empty batch", "/sessions/{live}/messages", b'{"messages": []}'),
    Case(APPEND, "bad message in a batch", "/sessions/{live}/messages", b'{"messages": [{"role": "user"}]}'),
    Case(
        APPEND,
        "tool name on a user message",
        "/sessions/{live}/messages",
        b'{"role": "user", "content": "x", "tool_name": "t"}',
    ),
    Case(
        APPEND,
        "content a huge integer",
        "/sessions/{live}/messages",
        b'{"role": "user", "content": 12345678901234567890123}',
    ),
    Case(APPEND, "content a number", "/sessions/{live}/messages", b'{"role": "user", "content": 5}'),
    Case(APPEND, "not JSON", "/sessions/{live}/messages", b'{"role": "user"', JSON, 400),
    Case(APPEND, "text/plain", "/sessions/{live}/messages", MESSAGE, {"Content-Type": "text/plain"}),
    Case(APPEND, "empty body", "/sessions/{live}/messages"),
    Case(APPEND, "malformed id", "/sessions/nope/messages", MESSAGE, status=404),
    Case(
        APPEND, "unknown id", "/sessions/sess_00000000000000000000000000000000/messages", MESSAGE, status=404
    ),
    Case(APPEND, "id of unicode", "/sessions/s%C3%A9ss/messages", MESSAGE, status=404),
    Case(APPEND, "malformed id, bad body", "/sessions/nope/messages", b'{"role": "user"}'),
    Case(APPEND, "no key", "/sessions/{live}/messages", MESSAGE, NO_KEY, 401),
    Case(APPEND, "keyed", "/sessions/{live}/messages", MESSAGE, {"Idempotency-Key": "m1"}, 201),
    Case(APPEND, "keyed, replayed", "/sessions/{live}/messages", MESSAGE, {"Idempotency-Key": "m1"}, 201),
    Case(APPEND, "to an ended session", "/sessions/{ended}/messages", MESSAGE, status=409),
    # Get: query parameters after_seq and limit.
    Case(GET, "accepted", "/sessions/{live}", status=200),
    Case(GET, "a page", "/sessions/{live}?after_seq=1&limit=2", status=200),
    Case(GET, "repeated parameter, the last wins", "/sessions/{live}?limit=1&limit=2", status=200),
    Case(GET, "repeated, the last bad", "/sessions/{live}?limit=1&limit=x"),
    Case(GET, "repeated, the first bad", "/sessions/{live}?limit=x&limit=1", status=200),
    Case(GET, "unknown parameter", "/sessions/{live}?surprise=1", status=200),
    Case(GET, "negative after_seq", "/sessions/{live}?after_seq=-1"),
    Case(GET, "limit not a number", "/sessions/{live}?limit=many"),
    Case(GET, "limit zero", "/sessions/{live}?limit=0"),
    Case(GET, "limit empty", "/sessions/{live}?limit="),
    Case(GET, "limit a float", "/sessions/{live}?limit=1.5"),
    Case(GET, "limit past 64 bits", "/sessions/{live}?limit=123456789012345678901234567890", status=200),
    Case(GET, "limit of unicode digits", "/sessions/{live}?limit=%C2%B2"),
    Case(GET, "a body, ignored", "/sessions/{live}", b"{not json", JSON, 200),
    Case(GET, "malformed id", "/sessions/nope", status=404),
    Case(GET, "malformed id, bad parameter", "/sessions/nope?limit=0"),
    Case(GET, "no key", "/sessions/{live}", headers=NO_KEY, status=401),
    Case(GET, "no key, bad parameter", "/sessions/{live}?limit=0", headers=NO_KEY, status=401),
    # Replace the context: the body is any JSON object; If-Match a version.
    Case(CONTEXT, "accepted", "/sessions/{live}/context", b'{"goal": "ship"}', status=200),
    Case(CONTEXT, "at its version", "/sessions/{live}/context", b'{"goal": "x"}', {"If-Match": '"2"'}, 200),
    Case(
        CONTEXT, "at a weak version", "/sessions/{live}/context", b'{"goal": "y"}', {"If-Match": 'W/"3"'}, 200
    ),
    Case(CONTEXT, "at any version", "/sessions/{live}/context", b'{"goal": "z"}', {"If-Match": "*"}, 200),
    Case(
        CONTEXT, "at a stale version", "/sessions/{live}/context", b'{"goal": "w"}', {"If-Match": '"1"'}, 412
    ),
    Case(CONTEXT, "If-Match not a number", "/sessions/{live}/context", b'{"goal": "w"}', {"If-Match": "abc"}),
    Case(
        CONTEXT,
        "If-Match of unicode digits",
        "/sessions/{live}/context",
        b'{"goal": "w"}',
        {"If-Match": "²".encode()},
    ),
    Case(CONTEXT, "If-Match huge", "/sessions/{live}/context", b'{"goal": "w"}', {"If-Match": "9" * 30}),
    Case(CONTEXT, "an array", "/sessions/{live}/context", b"[1, 2]"),
    Case(CONTEXT, "null", "/sessions/{live}/context", b"null"),
    Case(CONTEXT, "empty object", "/sessions/{live}/context", b"{}", status=200),
    Case(CONTEXT, "text/plain", "/sessions/{live}/context", b'{"a": 1}', {"Content-Type": "text/plain"}),
    Case(CONTEXT, "empty body", "/sessions/{live}/context"),
    Case(CONTEXT, "a huge integer", "/sessions/{live}/context", b'{"n": 123456789012345678901234567890}'),
    Case(CONTEXT, "no key", "/sessions/{live}/context", b'{"a": 1}', NO_KEY, 401),
    # Update: name and ttl_seconds, both optional.
    Case(UPDATE, "rename", "/sessions/{live}", b'{"name": "renamed"}', status=200),
    Case(UPDATE, "nothing", "/sessions/{live}", b"{}"),
    Case(UPDATE, "TTL as words", "/sessions/{live}", b'{"ttl_seconds": "soon"}'),
    Case(UPDATE, "zero TTL", "/sessions/{live}", b'{"ttl_seconds": 0}'),
    Case(UPDATE, "extra field", "/sessions/{live}", b'{"status": "closed"}'),
    Case(UPDATE, "empty body", "/sessions/{live}"),
    Case(UPDATE, "malformed id", "/sessions/nope", b'{"name": "x"}', status=404),
    Case(UPDATE, "no key", "/sessions/{live}", b'{"name": "x"}', NO_KEY, 401),
    # List: status, limit, cursor.
    Case(LIST, "accepted", "/sessions", status=200),
    Case(LIST, "a page of two", "/sessions?limit=2", status=200),
    Case(LIST, "by status", "/sessions?status=active", status=200),
    Case(LIST, "repeated status, the last wins", "/sessions?status=closed&status=active", status=200),
    Case(LIST, "unknown status", "/sessions?status=sleeping"),
    Case(LIST, "limit zero", "/sessions?limit=0"),
    Case(LIST, "limit past the most", "/sessions?limit=100000"),
    Case(LIST, "limit past 64 bits", "/sessions?limit=123456789012345678901234567890"),
    Case(LIST, "bad cursor", "/sessions?cursor=not-a-cursor"),
    Case(LIST, "no key", "/sessions", headers=NO_KEY, status=401),
    # Summarize an ended session again.
    Case(SUMMARIZE, "an ended session", "/sessions/{ended}/summarize", status=202),
    Case(SUMMARIZE, "an active session", "/sessions/{live}/summarize", status=409),
    Case(SUMMARIZE, "a body, ignored", "/sessions/{ended}/summarize", b"{not json", JSON, 202),
    Case(SUMMARIZE, "malformed id", "/sessions/nope/summarize", status=404),
    Case(SUMMARIZE, "no key", "/sessions/{ended}/summarize", headers=NO_KEY, status=401),
    # Vectors.
    Case(
        UPSERT,
        "accepted",
        "/vectors/upsert",
        b'{"namespace": "n", "vectors": [{"id": "a", "values": [1, 0, 0, 0], '
        b'"metadata": {"k": "\xc3\xa9"}}]}',
        status=200,
    ),
    Case(
        UPSERT,
        "by text",
        "/vectors/upsert",
        b'{"namespace": "n", "vectors": [{"id": "b", "text": "hello"}]}',
        status=200,
    ),
    Case(
        UPSERT, "both sources", "/vectors/upsert", b'{"vectors": [{"id": "a", "text": "t", "values": [1]}]}'
    ),
    Case(UPSERT, "no vectors", "/vectors/upsert", b'{"vectors": []}'),
    Case(
        UPSERT,
        "a bad namespace",
        "/vectors/upsert",
        b'{"namespace": "a b", "vectors": [{"id": "a", "text": "t"}]}',
    ),
    Case(
        UPSERT, "a value past a double", "/vectors/upsert", b'{"vectors": [{"id": "a", "values": [1e400]}]}'
    ),
    Case(UPSERT, "values as strings", "/vectors/upsert", b'{"vectors": [{"id": "a", "values": ["1"]}]}'),
    Case(UPSERT, "no key", "/vectors/upsert", b'{"vectors": [{"id": "a", "text": "t"}]}', NO_KEY, 401),
    Case(
        QUERY,
        "by vector",
        "/vectors/query",
        b'{"namespace": "n", "vector": [1, 0, 0, 0], "top_k": 2}',
        status=200,
    ),
    Case(QUERY, "by text", "/vectors/query", b'{"namespace": "n", "query_text": "hello"}', status=200),
    Case(QUERY, "top_k zero", "/vectors/query", b'{"namespace": "n", "top_k": 0}'),
    Case(QUERY, "not JSON", "/vectors/query", b'{"namespace": "n", "vector": [1, 2]', status=400),
    Case(
        QUERY,
        "lexical by vector",
        "/vectors/query",
        b'{"namespace": "n", "vector": [1, 0, 0, 0], "mode": "lexical"}',
    ),
    Case(QUERY, "unknown mode", "/vectors/query", b'{"namespace": "n", "query_text": "x", "mode": "fuzzy"}'),
    Case(
        QUERY,
        "a filter",
        "/vectors/query",
        b'{"namespace": "n", "query_text": "x", "filter": {"k": {"$in": ["\xc3\xa9"]}}}',
        status=200,
    ),
    Case(QUERY, "no key", "/vectors/query", b'{"namespace": "n", "query_text": "x"}', NO_KEY, 401),
    Case(FORGET, "accepted", "/vectors/delete", b'{"namespace": "n", "ids": ["a", "zz"]}', status=200),
    Case(FORGET, "no ids", "/vectors/delete", b'{"ids": []}'),
    Case(FORGET, "an id with NUL", "/vectors/delete", b'{"ids": ["a\\u0000"]}'),
    Case(FORGET, "no key", "/vectors/delete", b'{"ids": ["a"]}', NO_KEY, 401),
    # Feeds: only requests answered before a stream opens (an open one would not end).
    Case(SESSION_EVENTS, "a bad position", "/sessions/{live}/events?after=nowhere", status=422),
    Case(
        SESSION_EVENTS,
        "a bad Last-Event-ID",
        "/sessions/{live}/events",
        headers={"Last-Event-ID": "x.y.z"},
        status=422,
    ),
    Case(SESSION_EVENTS, "repeated after", "/sessions/{live}/events?after=0-1&after=nowhere", status=422),
    Case(SESSION_EVENTS, "malformed id", "/sessions/nope/events", status=404),
    Case(SESSION_EVENTS, "unknown id", "/sessions/sess_00000000000000000000000000000000/events", status=404),
    Case(SESSION_EVENTS, "no key", "/sessions/{live}/events", headers=NO_KEY, status=401),
    Case(EVENTS, "a bad position", "/events?after=nowhere", status=422),
    Case(EVENTS, "a bad Last-Event-ID", "/events", headers={"Last-Event-ID": "é".encode()}, status=422),
    Case(EVENTS, "no key", "/events", headers=NO_KEY, status=401),
    Case(EVENTS, "no key, a bad position", "/events?after=nowhere", headers=NO_KEY, status=401),
    # Fork: the body is a ForkSessionIn. Accepted forks carry a key, so both apps name them alike.
    Case(FORK, "accepted", "/sessions/{live}/fork", b'{"at_seq": 1}', {"Idempotency-Key": "f1"}, 201),
    Case(FORK, "keyed, replayed", "/sessions/{live}/fork", b'{"at_seq": 1}', {"Idempotency-Key": "f1"}, 201),
    Case(
        FORK, "an ended session", "/sessions/{ended}/fork", b'{"at_seq": 0}', {"Idempotency-Key": "f2"}, 201
    ),
    Case(FORK, "at_seq past the end", "/sessions/{live}/fork", b'{"at_seq": 1000000}'),
    Case(FORK, "at_seq negative", "/sessions/{live}/fork", b'{"at_seq": -1}'),
    Case(FORK, "at_seq as a string", "/sessions/{live}/fork", b'{"at_seq": "1"}'),
    Case(FORK, "no at_seq", "/sessions/{live}/fork", b'{"name": "x"}'),
    Case(FORK, "malformed id", "/sessions/nope/fork", b'{"at_seq": 0}', status=404),
    Case(FORK, "no key", "/sessions/{live}/fork", b'{"at_seq": 0}', NO_KEY, 401),
    # Writes that end and delete sessions, last.
    Case(CLOSE, "accepted", "/sessions/{closing}/close", status=200),
    Case(CLOSE, "again", "/sessions/{closing}/close", status=409),
    Case(CLOSE, "malformed id", "/sessions/nope/close", status=404),
    Case(CLOSE, "no key", "/sessions/{live}/close", headers=NO_KEY, status=401),
    Case(COMPLETE, "accepted", "/sessions/{completing}/complete", status=200),
    Case(COMPLETE, "a body, ignored", "/sessions/{completing}/complete", b"[", JSON, 409),
    Case(COMPLETE, "unknown id", "/sessions/sess_00000000000000000000000000000000/complete", status=404),
    Case(COMPLETE, "no key", "/sessions/{live}/complete", headers=NO_KEY, status=401),
    Case(DELETE, "accepted", "/sessions/{doomed}", headers={"Idempotency-Key": "d1"}, status=204),
    Case(DELETE, "keyed, replayed", "/sessions/{doomed}", headers={"Idempotency-Key": "d1"}, status=204),
    Case(DELETE, "gone", "/sessions/{doomed}", status=404),
    Case(DELETE, "malformed id", "/sessions/nope", status=404),
    Case(DELETE, "no key", "/sessions/{live}", headers=NO_KEY, status=401),
]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]  # all of them, in order, but the debug X-Handler
    body: bytes
    handler: str


def _send(client: TestClient, case: Case, sessions: Mapping[str, str]) -> Answer:
    headers: dict[str, str | bytes] = {**AUTH, "X-Request-ID": "contract"}
    for name, value in case.headers.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    response = client.request(case.method, case.path.format(**sessions), content=case.body, headers=headers)
    kept = [(name, value) for name, value in response.headers.multi_items() if name != "x-handler"]
    return Answer(response.status_code, kept, response.content, response.headers.get("x-handler", ""))


def _set_up(client: TestClient) -> dict[str, str]:
    """The sessions the cases name: one live with a message, one ended, and three that the last
    cases close, complete and delete."""
    sessions = {}
    for name in ("live", "ended", "closing", "completing", "doomed"):
        created = client.post("/sessions", json={"name": name}, headers=AUTH)
        assert created.status_code == 201, created.text
        sessions[name] = created.json()["id"]
    said = client.post(f"/sessions/{sessions['live']}/messages", content=MESSAGE, headers=AUTH)
    assert said.status_code == 201, said.text
    assert client.post(f"/sessions/{sessions['ended']}/complete", headers=AUTH).status_code == 200
    return sessions


def _answers(app: FastAPI) -> dict[str, Answer]:
    with pytest.MonkeyPatch.context() as patch, TestClient(app) as client:
        # Session ids from a counter, so both apps name their sessions alike.
        ids = (f"sess_{n:032x}" for n in itertools.count(1))
        patch.setattr(api.routes.sessions, "new_session_id", lambda: next(ids))
        sessions = _set_up(client)
        return {case.id: _send(client, case, sessions) for case in CASES}


@pytest.fixture(scope="module")
def both_ways() -> tuple[dict[str, Answer], dict[str, Answer]]:
    """Every case's answer from the fast path and from FastAPI's handler alone: two apps, each
    told the whole table in order. (At debug level, so each answer says which handler gave it.)"""
    config = load_config().model_copy(update={"log_level": "debug"})
    fast = _answers(app_in_process(config))
    with pytest.MonkeyPatch.context() as patch:
        slow = _answers(fastapi_only(app_in_process(config), patch))
    return fast, slow


def test_the_cases_have_distinct_labels() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_fast_path_answers_every_case_as_fastapi_does(
    both_ways: tuple[dict[str, Answer], dict[str, Answer]], case: Case
) -> None:
    fast, slow = (answers[case.id] for answers in both_ways)
    assert slow.handler == FASTAPI
    assert (fast.status, fast.headers, fast.body) == (slow.status, slow.headers, slow.body)
    assert fast.status == case.status, fast.body


def test_every_served_route_is_in_the_table_both_ways(
    both_ways: tuple[dict[str, Answer], dict[str, Answer]],
) -> None:
    """Each route the fast path serves has cases it answers and cases it leaves to FastAPI, so
    the table checks both the fast path and where it falls back."""
    fast, _ = both_ways
    handlers = {route: {fast[case.id].handler for case in CASES if case.route == route} for route in served()}
    # The rest take only strings (a session id in the path, a feed's position), so FastAPI would
    # accept every request they get, and so does the fast path.
    refusable = {CREATE, APPEND, GET, CONTEXT, UPDATE, LIST, UPSERT, QUERY, FORGET, FORK}
    assert handlers == {
        route: {FAST_PATH, FASTAPI} if route in refusable else {FAST_PATH} for route in served()
    }


# ---- accepted requests skip dependency solving


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


def test_accepted_requests_skip_dependency_solving_and_others_do_not(solved: list[str]) -> None:
    with TestClient(app_in_process()) as client:
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


def test_a_refused_body_counts_once_against_the_rate_limit() -> None:
    """The fast path validates the body before it authenticates; a body it refuses goes to
    FastAPI's handler, which authenticates (and counts the request) then: once, not twice."""
    config = load_config()
    limits = config.limits.model_copy(update={"requests_per_second": 2.0, "burst_s": 1.0})
    with TestClient(app_in_process(config.model_copy(update={"limits": limits}))) as client:
        codes = [
            client.post("/sessions", json={"name": ""}, headers=AUTH).status_code,
            client.post("/sessions", json={"name": "x"}, headers=AUTH).status_code,
            client.post("/sessions", json={"name": "y"}, headers=AUTH).status_code,
        ]
    assert codes == [422, 201, 429]


# ---- the FastAPI it was checked with


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_fastapi_internals_it_calls_keep_their_signatures() -> None:
    """pyproject.toml allows a range of FastAPI versions; the fast path calls these internals of
    theirs, as the contract above checked them. An upgrade that changes one fails here: check
    api/fast_path.py against FastAPI's request handler (fastapi.routing.get_request_handler) again."""
    assert _parameters(request_params_to_args) == ["fields", "received_params"]
    assert _parameters(ModelField.validate) == ["self", "value", "values", "loc"]
    assert inspect.signature(ModelField.validate).parameters["loc"].kind is inspect.Parameter.KEYWORD_ONLY
    used = {
        "call",
        "name",
        "dependencies",
        "body_params",
        "path_params",
        "query_params",
        "header_params",
        "cookie_params",
        "request_param_name",
        "websocket_param_name",
        "http_connection_param_name",
        "response_param_name",
        "background_tasks_param_name",
        "security_scopes_param_name",
        "own_oauth_scopes",
    }
    assert used <= {field.name for field in dataclasses.fields(Dependant)}
    # The parameters a Dependant may read that the fast path does not handle: a new one fails here.
    assert {field.name for field in dataclasses.fields(Dependant)} - used == {
        "parent_oauth_scopes",
        "use_cache",
        "path",
        "scope",
        "concurrency",
    }
    route = next(
        r for r in app_in_process().router.routes if isinstance(r, APIRoute) and r.path == "/sessions"
    )
    for attribute in ("dependant", "body_field", "strict_content_type", "dependency_overrides_provider"):
        assert hasattr(route, attribute), attribute
    assert _parameters(fastapi.routing.solve_dependencies)[:3] == ["request", "dependant", "body"]
