"""Input the engine refuses with a clear 4xx, on Ray and in-process: JSON nesting at and past
limits.max_json_depth, integers past 64 bits, numbers that are not finite, compressed bodies, NUL
characters, namespaces that read as the engine's own, and tool fields on roles that have no tools.
Every refusal of a request's content names its field (`details.field`) and lists its problems
(`details.errors`), whichever check made it."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from .conftest import Api, assert_error

DEPTH = 64  # limits.max_json_depth in configs/default.yaml


@pytest.fixture(autouse=True)
def _every_refusal_names_its_field(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    answers: list[httpx.Response] = []
    send = api.request

    def request(method: str, path: str, **kwargs: Any) -> httpx.Response:
        answers.append(send(method, path, **kwargs))
        return answers[-1]

    monkeypatch.setattr(api, "request", request)
    yield
    refused = [r for r in answers if r.status_code < 500 and r.json().get("code") == "VALIDATION_ERROR"]
    for response in refused:  # 400, 405, 415, 422 alike
        details = response.json()["details"]
        assert details["field"] and details["errors"], response.text
        assert all(problem["field"] and problem["message"] for problem in details["errors"]), response.text


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` containers deep ({} is 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_context_at_the_depth_limit_is_stored_and_one_past_it_refused(api: Api) -> None:
    session = api.new_session(context=nested(DEPTH))
    assert api.get(f"/sessions/{session['id']}").json()["context"] == nested(DEPTH)
    body = assert_error(
        api.post("/sessions", json={"name": "deep", "context": nested(DEPTH + 1)}), 422, "VALIDATION_ERROR"
    )
    assert body["details"] == {
        "field": "context",
        "limit": DEPTH,
        "errors": [{"field": "context", "message": f"context: JSON nested deeper than {DEPTH} levels"}],
    }
    put = api.put(f"/sessions/{session['id']}/context", json=nested(DEPTH + 1))
    assert_error(put, 422, "VALIDATION_ERROR")
    assert api.get(f"/sessions/{session['id']}").json()["version"] == 1


@pytest.mark.parametrize("depth", [253, 300, 1023, 2000])
def test_any_deeper_context_gets_a_4xx_and_changes_nothing(api: Api, depth: int) -> None:
    sid = api.new_session()["id"]
    response = api.put(
        f"/sessions/{sid}/context", content=b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    )
    assert response.status_code in (400, 422), response.text  # 400: deeper than the JSON parser goes
    assert_error(response, response.status_code, "VALIDATION_ERROR")
    after = api.get(f"/sessions/{sid}").json()
    assert (after["version"], after["context"]) == (1, {})


def test_vector_metadata_has_the_same_depth_limit(api: Api) -> None:
    ok = {"id": "v", "values": [1.0, 0.0], "metadata": nested(DEPTH)}
    assert api.post("/vectors/upsert", json={"namespace": "deep", "vectors": [ok]}).status_code == 200
    too_deep = {**ok, "metadata": nested(DEPTH + 1)}
    body = assert_error(
        api.post("/vectors/upsert", json={"namespace": "deep", "vectors": [too_deep]}),
        422,
        "VALIDATION_ERROR",
    )
    assert body["details"]["field"] == "vectors.0.metadata"


@pytest.mark.parametrize("number", [str(2**64), str(-(2**63) - 1), str(10**30), "7" * 5000, "-" + "9" * 4400])
def test_integers_past_64_bits_are_refused_not_rounded(api: Api, number: str) -> None:
    # Valid JSON with a value the engine cannot keep: 422, however many digits (Python's int() takes
    # at most 4,300).
    raw = b'{"name": "n", "context": {"list": [0, {"n": %s}]}}' % number.encode()
    body = assert_error(api.post("/sessions", content=raw), 422, "VALIDATION_ERROR")
    assert "64 bits" in body["error"] and body["details"]["field"] == "context.list.1.n"


@pytest.mark.parametrize(
    ("number", "status"),
    [("NaN", 400), ("Infinity", 400), ("-Infinity", 400), ("1e400", 422), ("-2E999", 422)],
)
def test_numbers_that_are_not_finite_are_refused_by_field(api: Api, number: str, status: int) -> None:
    # NaN and Infinity are not JSON (400); 1e400 is JSON past a double's range (422). Neither is
    # stored as null.
    sid = api.new_session()["id"]
    put = api.put(f"/sessions/{sid}/context", content=b'{"ok": 1.5, "x": [%s]}' % number.encode())
    body = assert_error(put, status, "VALIDATION_ERROR")
    assert body["details"]["field"] == "x.0" and "not finite" in body["error"]
    assert api.get(f"/sessions/{sid}").json()["context"] == {}


def test_integers_within_64_bits_and_long_digit_strings_are_kept_exactly(api: Api) -> None:
    context = {"max": 2**64 - 1, "min": -(2**63), "text": "1" * 40, "float": 1.5e300}
    session = api.post("/sessions", content=orjson.dumps({"name": "n", "context": context}))
    assert session.status_code == 201, session.text
    assert api.get(f"/sessions/{session.json()['id']}").json()["context"] == context


def test_a_compressed_body_is_refused_with_415(api: Api) -> None:
    raw = gzip.compress(orjson.dumps({"name": "zipped"}))
    response = api.post(
        "/sessions", content=raw, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    body = assert_error(response, 415, "VALIDATION_ERROR")
    assert body["details"]["field"] == "Content-Encoding"


def test_a_method_a_route_does_not_take_names_the_method(api: Api) -> None:
    body = assert_error(api.put("/sessions"), 405, "VALIDATION_ERROR")
    assert body["details"]["field"] == "method" and "POST" in body["details"]["allowed"]


def test_nul_characters_are_refused_in_names_and_ids(api: Api) -> None:
    assert_error(api.post("/sessions", json={"name": "a\0b"}), 422, "VALIDATION_ERROR")
    sid = api.new_session()["id"]
    assert_error(api.patch(f"/sessions/{sid}", json={"name": "\0"}), 422, "VALIDATION_ERROR")
    vector = {"id": "v\0", "values": [1.0]}
    assert_error(api.post("/vectors/upsert", json={"vectors": [vector]}), 422, "VALIDATION_ERROR")
    assert_error(api.post("/vectors/delete", json={"ids": ["\0"]}), 422, "VALIDATION_ERROR")
    tool = {"role": "tool", "content": "x", "tool_call_id": "c\0"}
    assert_error(api.post(f"/sessions/{sid}/messages", json=tool), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("namespace", ["Session-Memory", "session_memory", "SESSION_MEMORY"])
def test_namespaces_that_read_as_session_memory_are_reserved(api: Api, namespace: str) -> None:
    upsert = {"namespace": namespace, "vectors": [{"id": "v", "values": [1.0]}]}
    body = assert_error(api.post("/vectors/upsert", json=upsert), 422, "VALIDATION_ERROR")
    assert "reserved" in body["error"]
    query = {"namespace": namespace, "vector": [1.0]}
    assert_error(api.post("/vectors/query", json=query), 422, "VALIDATION_ERROR")


def test_tool_fields_belong_to_assistant_and_tool_messages_only(api: Api) -> None:
    sid = api.new_session()["id"]
    for role in ("user", "system"):
        single = {"role": role, "content": "x", "tool_name": "search"}
        assert_error(api.post(f"/sessions/{sid}/messages", json=single), 422, "VALIDATION_ERROR")
        batch = {"messages": [{"role": role, "content": "x", "tool_call_id": "c1"}]}
        assert_error(api.post(f"/sessions/{sid}/messages", json=batch), 422, "VALIDATION_ERROR")
    for role in ("assistant", "tool"):
        ok = {"role": role, "content": "x", "tool_call_id": "c1", "tool_name": "search"}
        assert api.post(f"/sessions/{sid}/messages", json=ok).status_code == 201
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 2


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ({"query_text": ""}, 422, "query_text"),
        ({"query_text": "   "}, 422, "query_text"),
        ({"query_text": "x" * 40_000}, 413, "query_text"),
        ({"query_text": "x", "mode": "semantic"}, 422, "mode"),
        ({"vector": [1.0, 0.0], "mode": "lexical"}, 422, "query_text"),
        ({"vector": [1.0, 0.0], "mode": "hybrid"}, 422, "query_text"),
        ({"query_text": "x", "filter": {"closed_at": {"$after": 5}}}, 422, "$after"),
        ({"query_text": "x", "filter": {"closed_at": {}}}, 422, "empty"),
        ({"query_text": "x", "filter": {"name": {"$in": "a"}}}, 422, "list"),
        ({"query_text": "x", "filter": {"name": {"$eq": ["a"]}}}, 422, "one value"),
        ({"query_text": "x", "filter": {"closed_at": {"$gte": True}}}, 422, "number or a string"),
        ({"query_text": "x", "filter": {"name": {"$in": ["a"] * 1001}}}, 422, "at most"),
        ({"query_text": "x", "filter": {"summary": "y"}}, 422, "filtered on"),
    ],
)
def test_bad_memory_queries_get_a_clear_4xx(
    api: Api, query: dict[str, Any], status: int, needle: str
) -> None:
    body = assert_error(
        api.post("/vectors/query", json={"namespace": "session-memory", **query}),
        status,
        "PAYLOAD_TOO_LARGE" if status == 413 else "VALIDATION_ERROR",
    )
    assert needle in str(body), body
