"""The Sessions HTTP contract (shared/ARCHITECTURE.md), as a client sees it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import Api, assert_error

SESSION_FIELDS = {
    "id", "name", "status", "ttl_seconds", "created_at", "updated_at", "expires_at", "ended_at",
    "message_count", "context", "version", "summary_status", "summary", "summary_error",
    "summary_attempts", "summary_provenance", "index_status", "indexed_at", "forked_from",
}  # fmt: skip


def test_create_returns_the_contract_shape(api: Api) -> None:
    response = api.post(
        "/sessions", json={"name": "planner", "ttl_seconds": 120, "context": {"goal": "ship"}}
    )
    assert response.status_code == 201
    session = response.json()
    assert set(session) == SESSION_FIELDS
    assert session["id"].startswith("sess_") and len(session["id"]) == 37
    assert (session["name"], session["status"], session["message_count"]) == ("planner", "active", 0)
    assert (session["ttl_seconds"], session["context"], session["version"]) == (120, {"goal": "ship"}, 1)
    assert session["expires_at"] - session["created_at"] == 120_000
    assert abs(session["created_at"] - time.time() * 1000) < 60_000, "epoch milliseconds"
    assert response.headers["location"] == f"/sessions/{session['id']}"


def test_defaults_apply_when_ttl_and_context_are_left_out(api: Api) -> None:
    session = api.new_session()
    assert (session["ttl_seconds"], session["context"]) == (3600, {})


def test_messages_get_gap_free_seqs_and_read_back_in_order(api: Api) -> None:
    sid = api.new_session()["id"]
    one = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "hello"})
    assert one.status_code == 201
    assert one.json()["seq"] == 1 and one.json()["role"] == "user"
    batch = api.post(
        f"/sessions/{sid}/messages",
        json={
            "messages": [
                {"role": "assistant", "content": "calling a tool"},
                {"role": "tool", "content": "42", "tool_call_id": "call_1", "tool_name": "calc"},
                {"role": "system", "content": "be brief"},
            ]
        },
    )
    assert batch.status_code == 201
    assert [m["seq"] for m in batch.json()["messages"]] == [2, 3, 4]
    session = api.get(f"/sessions/{sid}").json()
    assert session["message_count"] == 4
    assert [(m["seq"], m["content"]) for m in session["messages"]] == [
        (1, "hello"), (2, "calling a tool"), (3, "42"), (4, "be brief"),
    ]  # fmt: skip
    assert session["messages"][2]["tool_call_id"] == "call_1"
    page = api.get(f"/sessions/{sid}", params={"after_seq": 1, "limit": 2}).json()["messages"]
    assert [m["seq"] for m in page] == [2, 3]


def test_a_batch_with_one_bad_message_stores_none_of_it(api: Api) -> None:
    sid = api.new_session()["id"]
    response = api.post(
        f"/sessions/{sid}/messages",
        json={"messages": [{"role": "user", "content": "fine"}, {"role": "robot", "content": "bad"}]},
    )
    body = assert_error(response, 422, "VALIDATION_ERROR")
    assert body["details"]["errors"][0]["field"] == "messages.1.role"
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 0


def test_concurrent_appends_to_one_session_get_distinct_consecutive_seqs(api: Api) -> None:
    sid = api.new_session()["id"]

    def append(i: int) -> int:
        response = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": f"m{i}"})
        assert response.status_code == 201, response.text
        return int(response.json()["seq"])

    with ThreadPoolExecutor(16) as pool:
        seqs = list(pool.map(append, range(80)))
    assert sorted(seqs) == list(range(1, 81))
    messages = api.get(f"/sessions/{sid}").json()["messages"]
    assert {m["seq"]: m["content"] for m in messages} == {seq: f"m{i}" for i, seq in enumerate(seqs)}


def test_context_is_replaced_whole_and_if_match_guards_it(api: Api) -> None:
    sid = api.new_session(context={"a": 1, "b": 2})["id"]
    replaced = api.put(f"/sessions/{sid}/context", json={"c": 3})
    assert replaced.status_code == 200
    assert (replaced.json()["context"], replaced.json()["version"]) == ({"c": 3}, 2)
    assert replaced.headers["etag"] == '"2"'
    stale = api.put(f"/sessions/{sid}/context", json={"d": 4}, headers={"If-Match": "1"})
    body = assert_error(stale, 412, "PRECONDITION_FAILED")
    assert body["details"]["current_version"] == 2
    fresh = api.put(f"/sessions/{sid}/context", json={"d": 4}, headers={"If-Match": '"2"'})
    assert fresh.status_code == 200 and fresh.json()["version"] == 3
    assert api.get(f"/sessions/{sid}").json()["context"] == {"d": 4}


def test_patch_renames_and_moves_the_deadline_from_now(api: Api) -> None:
    session = api.new_session(ttl_seconds=60)
    before = time.time() * 1000
    patched = api.patch(f"/sessions/{session['id']}", json={"name": "renamed", "ttl_seconds": 7200})
    assert patched.status_code == 200
    body = patched.json()
    assert (body["name"], body["ttl_seconds"]) == ("renamed", 7200)
    assert body["expires_at"] >= before + 7_200_000 - 1000


def test_close_sets_closed_with_a_pending_summary_and_freezes_the_session(api: Api) -> None:
    sid = api.new_session()["id"]
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "remember this"})
    closed = api.post(f"/sessions/{sid}/close")
    assert closed.status_code == 200
    assert (closed.json()["status"], closed.json()["summary_status"]) == ("closed", "pending")
    assert closed.json()["ended_at"] is not None
    for response in (
        api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "more"}),
        api.put(f"/sessions/{sid}/context", json={}),
        api.patch(f"/sessions/{sid}", json={"ttl_seconds": 10}),
        api.post(f"/sessions/{sid}/close"),
        api.post(f"/sessions/{sid}/complete"),
    ):
        body = assert_error(response, 409, "CONFLICT")
        assert body["details"]["status"] == "closed"
        assert "closed" in body["hint"]
    still = api.get(f"/sessions/{sid}").json()
    assert (still["status"], still["message_count"]) == ("closed", 1)


def test_complete_sets_completed_without_a_summary(api: Api) -> None:
    sid = api.new_session()["id"]
    completed = api.post(f"/sessions/{sid}/complete").json()
    assert (completed["status"], completed["summary_status"]) == ("completed", None)
    assert_error(
        api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "x"}), 409, "CONFLICT"
    )


def test_a_session_expires_by_itself_and_then_refuses_writes(api: Api) -> None:
    sid = api.new_session(ttl_seconds=1)["id"]
    deadline = time.monotonic() + 4
    listed: list[str] = []
    while time.monotonic() < deadline and sid not in listed:
        time.sleep(0.2)
        listed = [s["id"] for s in api.get("/sessions", params={"status": "expired"}).json()["sessions"]]
    assert sid in listed, "listed as expired within a few seconds, with no other traffic to the session"
    session = api.get(f"/sessions/{sid}").json()
    assert session["status"] == "expired" and session["ended_at"] == session["expires_at"]
    body = assert_error(
        api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "x"}), 409, "CONFLICT"
    )
    assert body["details"]["status"] == "expired"


def test_delete_removes_a_session_in_any_state(api: Api) -> None:
    active, closed = api.new_session()["id"], api.new_session()["id"]
    api.post(f"/sessions/{closed}/close")
    for sid in (active, closed):
        deleted = api.delete(f"/sessions/{sid}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert_error(api.get(f"/sessions/{sid}"), 404, "NOT_FOUND")
        assert_error(api.delete(f"/sessions/{sid}"), 404, "NOT_FOUND")
    assert api.get("/sessions").json()["sessions"] == []


def test_lists_page_newest_first_through_cursors_and_filter_by_status(api: Api) -> None:
    ids = [api.new_session(name=f"s{i}")["id"] for i in range(7)]
    api.post(f"/sessions/{ids[0]}/close")
    api.post(f"/sessions/{ids[1]}/complete")
    seen, cursor = [], None
    while True:
        page = api.get("/sessions", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert page["count"] == len(page["sessions"]) <= 3
        assert all("messages" not in s for s in page["sessions"])
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    by_status = {
        status: [s["id"] for s in api.get("/sessions", params={"status": status}).json()["sessions"]]
        for status in ("active", "closed", "completed", "expired")
    }
    assert by_status == {"active": ids[2:][::-1], "closed": [ids[0]], "completed": [ids[1]], "expired": []}


def test_another_organization_gets_404_everywhere_and_never_lists_it(api: Api, other_api: Api) -> None:
    sid = api.new_session(context={"secret": True})["id"]
    for response in (
        other_api.get(f"/sessions/{sid}"),
        other_api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "hi"}),
        other_api.put(f"/sessions/{sid}/context", json={"stolen": True}),
        other_api.patch(f"/sessions/{sid}", json={"name": "mine"}),
        other_api.post(f"/sessions/{sid}/close"),
        other_api.post(f"/sessions/{sid}/complete"),
        other_api.delete(f"/sessions/{sid}"),
    ):
        assert_error(response, 404, "NOT_FOUND")
    assert sid not in [s["id"] for s in other_api.get("/sessions").json()["sessions"]]
    session = api.get(f"/sessions/{sid}").json()
    assert (session["status"], session["name"], session["context"]) == ("active", "test", {"secret": True})


def test_requests_without_a_valid_key_are_refused(http_client: httpx.Client) -> None:
    missing = http_client.get("/sessions")
    assert_error(missing, 401, "AUTH_REQUIRED")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(http_client.get("/sessions", headers={"Authorization": "Basic abc"}), 401, "AUTH_REQUIRED")
    assert_error(http_client.get("/sessions", headers={"Authorization": "Bearer nope"}), 401, "AUTH_INVALID")


def test_health_and_readiness_need_no_key(http_client: httpx.Client) -> None:
    assert http_client.get("/healthz").json() == {"status": "ok"}
    ready = http_client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["shards"] == 2


def test_responses_carry_the_request_id(api: Api) -> None:
    echoed = api.get("/sessions", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    made = api.get("/sessions/sess_bogus")
    assert len(made.headers["x-request-id"]) == 32


def test_the_openapi_document_lists_every_route(http_client: httpx.Client) -> None:
    paths = http_client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/sessions", "/sessions/{session_id}", "/sessions/{session_id}/messages",
        "/sessions/{session_id}/context", "/sessions/{session_id}/close", "/sessions/{session_id}/complete",
        "/healthz", "/readyz",
    }  # fmt: skip


# -- bad input: every case gets a clear 4xx with the error body, never a 500 -----------------------

BAD_CREATES = [
    pytest.param({"ttl_seconds": 60}, "VALIDATION_ERROR", "name", id="missing name"),
    pytest.param({"name": ""}, "VALIDATION_ERROR", "name", id="empty name"),
    pytest.param({"name": "   "}, "VALIDATION_ERROR", "name", id="blank name"),
    pytest.param({"name": 5}, "VALIDATION_ERROR", "name", id="name not a string"),
    pytest.param({"name": "x" * 257}, "VALIDATION_ERROR", "name", id="name too long"),
    pytest.param({"name": "x", "ttl_seconds": -5}, "VALIDATION_ERROR", "ttl_seconds", id="negative ttl"),
    pytest.param({"name": "x", "ttl_seconds": 0}, "VALIDATION_ERROR", "ttl_seconds", id="zero ttl"),
    pytest.param({"name": "x", "ttl_seconds": 10**12}, "VALIDATION_ERROR", "ttl_seconds", id="absurd ttl"),
    pytest.param({"name": "x", "ttl_seconds": "60"}, "VALIDATION_ERROR", "ttl_seconds", id="ttl as string"),
    pytest.param({"name": "x", "ttl_seconds": True}, "VALIDATION_ERROR", "ttl_seconds", id="ttl as bool"),
    pytest.param({"name": "x", "ttl_seconds": 1.5}, "VALIDATION_ERROR", "ttl_seconds", id="ttl as float"),
    pytest.param({"name": "x", "context": [1, 2]}, "VALIDATION_ERROR", "context", id="context a list"),
    pytest.param({"name": "x", "context": "text"}, "VALIDATION_ERROR", "context", id="context a string"),
    pytest.param({"name": "x", "colour": "red"}, "VALIDATION_ERROR", "colour", id="unknown field"),
    pytest.param(
        {"name": "x", "context": {"k": "v" * 70_000}}, "PAYLOAD_TOO_LARGE", "context", id="huge context"
    ),
]


@pytest.mark.parametrize(("body", "code", "field"), BAD_CREATES)
def test_bad_session_bodies_are_refused_clearly(api: Api, body: object, code: str, field: str) -> None:
    status = 413 if code == "PAYLOAD_TOO_LARGE" else 422
    error = assert_error(api.post("/sessions", json=body), status, code)
    assert field in error["error"] + str(error["details"])


BAD_MESSAGES = [
    pytest.param({"role": "user"}, id="no content"),
    pytest.param({"content": "hi"}, id="no role"),
    pytest.param({"role": "robot", "content": "hi"}, id="unknown role"),
    pytest.param({"role": "user", "content": 5}, id="content not a string"),
    pytest.param(
        {"role": "user", "content": "a", "messages": [{"role": "user", "content": "b"}]}, id="both forms"
    ),
    pytest.param({"messages": []}, id="empty batch"),
    pytest.param({"messages": [{"role": "user", "content": "x"}] * 101}, id="batch over 100"),
    pytest.param({"messages": "nope"}, id="batch not a list"),
    pytest.param({"role": "tool", "content": "x", "tool_call_id": ""}, id="empty tool_call_id"),
]


@pytest.mark.parametrize("body", BAD_MESSAGES)
def test_bad_message_bodies_are_refused_clearly(api: Api, body: object) -> None:
    sid = api.new_session()["id"]
    assert_error(api.post(f"/sessions/{sid}/messages", json=body), 422, "VALIDATION_ERROR")
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 0


def test_malformed_json_is_a_400(api: Api) -> None:
    body = assert_error(
        api.post("/sessions", content=b'{"name": ', headers={"Content-Type": "application/json"}),
        400,
        "VALIDATION_ERROR",
    )
    assert "JSON" in body["error"]


def test_absurdly_deep_json_is_refused_not_crashed(api: Api) -> None:
    deep = b'{"name": "x", "context": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    response = api.post("/sessions", content=deep, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "VALIDATION_ERROR")


def test_form_encoded_bodies_get_a_hint_about_content_type(api: Api) -> None:
    response = api.post(
        "/sessions", content=b'{"name": "x"}', headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert "Content-Type" in assert_error(response, 422, "VALIDATION_ERROR")["hint"]


def test_a_body_without_content_type_is_read_as_json(api: Api) -> None:
    response = api.post("/sessions", content=b'{"name": "bare"}')
    assert response.status_code == 201 and response.json()["name"] == "bare"


def test_bodies_over_the_limit_are_413_whether_declared_or_streamed(api: Api) -> None:
    big = b'{"name": "' + b"x" * (6 * 1024 * 1024) + b'"}'
    declared = api.post("/sessions", content=big, headers={"Content-Type": "application/json"})
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")

    def chunks():  # no Content-Length: sent chunked
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    streamed = api.post("/sessions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleeping"},
        {"limit": 0},
        {"limit": -1},
        {"limit": 5000},
        {"limit": "many"},
        {"cursor": "garbage"},
    ],
    ids=lambda p: str(p),
)
def test_bad_list_parameters_are_refused_clearly(api: Api, params: dict) -> None:
    assert_error(api.get("/sessions", params=params), 422, "VALIDATION_ERROR")


def test_bad_query_and_header_values_are_refused_clearly(api: Api) -> None:
    sid = api.new_session()["id"]
    assert_error(api.get(f"/sessions/{sid}", params={"after_seq": -1}), 422, "VALIDATION_ERROR")
    assert_error(api.get(f"/sessions/{sid}", params={"limit": 0}), 422, "VALIDATION_ERROR")
    bad_etag = api.put(f"/sessions/{sid}/context", json={}, headers={"If-Match": "yesterday"})
    assert_error(bad_etag, 422, "VALIDATION_ERROR")
    assert_error(api.patch(f"/sessions/{sid}", json={}), 422, "VALIDATION_ERROR")


def test_unknown_ids_routes_and_methods_get_the_error_body(api: Api) -> None:
    assert_error(api.get("/sessions/sess_00000000000000000000000000000000"), 404, "NOT_FOUND")
    assert_error(api.get("/sessions/not-an-id"), 404, "NOT_FOUND")
    assert_error(api.get("/nowhere"), 404, "NOT_FOUND")
    assert_error(api.delete("/sessions"), 405, "VALIDATION_ERROR")
