"""Idempotency-Key on every write: a blind retry gets the first answer, applies nothing
twice, and a key reused for another request is a 409."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from .conftest import Api, assert_error


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def test_a_retried_create_makes_one_session_and_answers_the_same(api: Api) -> None:
    headers = key()
    first = api.post("/sessions", json={"name": "once", "context": {"a": 1}}, headers=headers)
    again = api.post(
        "/sessions", json={"context": {"a": 1}, "name": "once"}, headers=headers
    )  # other key order
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    listed = api.get("/sessions").json()
    assert [s["id"] for s in listed["sessions"]] == [first.json()["id"]]


def test_concurrent_retries_of_one_append_store_one_message(api: Api) -> None:
    sid = api.new_session()["id"]
    headers = key()

    def send(_: int) -> httpx.Response:
        return api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "hi"}, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(16)))
    assert {r.status_code for r in responses} == {201}
    assert {r.json()["seq"] for r in responses} == {1}
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 1


def test_a_retried_batch_answers_every_message_again(api: Api) -> None:
    sid = api.new_session()["id"]
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "before"})
    headers = key()
    batch = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    first = api.post(f"/sessions/{sid}/messages", json=batch, headers=headers)
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "after"})
    again = api.post(f"/sessions/{sid}/messages", json=batch, headers=headers)
    assert again.json() == first.json()
    assert [m["seq"] for m in again.json()["messages"]] == [2, 3]
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 4


def test_the_same_key_with_another_body_is_a_409_and_changes_nothing(api: Api) -> None:
    sid = api.new_session()["id"]
    headers = key()
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "one"}, headers=headers)
    other = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "two"}, headers=headers)
    body = assert_error(other, 409, "CONFLICT")
    assert body["details"]["idempotency_key"] == headers["Idempotency-Key"]
    assert "new key" in body["hint"]
    other_route = api.post(f"/sessions/{sid}/close", headers=headers)
    assert_error(other_route, 409, "CONFLICT")
    assert api.get(f"/sessions/{sid}").json()["message_count"] == 1


def test_a_retried_conditional_context_update_is_not_a_412(api: Api) -> None:
    session = api.new_session()
    sid = session["id"]
    headers = {**key(), "If-Match": f'"{session["version"]}"'}
    first = api.put(f"/sessions/{sid}/context", json={"step": 1}, headers=headers)
    again = api.put(f"/sessions/{sid}/context", json={"step": 1}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json()["version"] == first.json()["version"] == 2
    assert again.headers["etag"] == first.headers["etag"]
    racing = api.put(f"/sessions/{sid}/context", json={"step": 9}, headers={"If-Match": '"1"'})
    assert assert_error(racing, 412, "PRECONDITION_FAILED")["details"]["current_version"] == 2


def test_close_patch_and_delete_retried(api: Api) -> None:
    sid = api.new_session()["id"]
    patch = key()
    assert api.patch(f"/sessions/{sid}", json={"name": "n"}, headers=patch).status_code == 200
    assert api.patch(f"/sessions/{sid}", json={"name": "n"}, headers=patch).headers["idempotent-replayed"]
    close = key()
    first = api.post(f"/sessions/{sid}/complete", headers=close)
    again = api.post(f"/sessions/{sid}/complete", headers=close)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    delete = key()
    assert api.delete(f"/sessions/{sid}", headers=delete).status_code == 204
    again = api.delete(f"/sessions/{sid}", headers=delete)
    assert again.status_code == 204 and again.headers["idempotent-replayed"] == "true"
    assert_error(api.delete(f"/sessions/{sid}"), 404, "NOT_FOUND")
    assert_error(api.get(f"/sessions/{sid}"), 404, "NOT_FOUND")


def test_a_write_retried_after_its_session_was_deleted_is_told_so_and_not_made_again(api: Api) -> None:
    create, say = key(), key()
    sid = api.post("/sessions", json={"name": "a"}, headers=create).json()["id"]
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "secret"}, headers=say)
    assert api.delete(f"/sessions/{sid}").status_code == 204
    assert_error(api.post("/sessions", json={"name": "a"}, headers=create), 404, "NOT_FOUND")
    retried = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "secret"}, headers=say)
    assert_error(retried, 404, "NOT_FOUND")
    assert "secret" not in retried.text
    assert api.get("/sessions").json()["sessions"] == []


def test_a_delete_under_a_key_used_for_another_request_deletes_nothing(api: Api) -> None:
    headers = key()
    sid = api.new_session()["id"]
    api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "hi"}, headers=headers)
    assert_error(api.delete(f"/sessions/{sid}", headers=headers), 409, "CONFLICT")
    assert api.get(f"/sessions/{sid}").status_code == 200


def test_keys_are_per_organization(api: Api, other_api: Api) -> None:
    headers = key()
    mine = api.post("/sessions", json={"name": "a"}, headers=headers)
    theirs = other_api.post("/sessions", json={"name": "b"}, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert_error(other_api.get(f"/sessions/{mine.json()['id']}"), 404, "NOT_FOUND")


def test_vector_writes_retried(api: Api) -> None:
    upsert = {"namespace": "notes", "vectors": [{"id": "a", "values": [1.0, 0.0, 0.0]}]}
    headers = key()
    first = api.post("/vectors/upsert", json=upsert, headers=headers)
    again = api.post("/vectors/upsert", json=upsert, headers=headers)
    assert first.json() == again.json() == {"namespace": "notes", "upserted": 1}
    assert again.headers["idempotent-replayed"] == "true"
    delete = key()
    first = api.post("/vectors/delete", json={"namespace": "notes", "ids": ["a"]}, headers=delete)
    again = api.post("/vectors/delete", json={"namespace": "notes", "ids": ["a"]}, headers=delete)
    assert first.json() == again.json() == {"namespace": "notes", "deleted": 1}, "not 0 the second time"


def test_a_malformed_key_is_refused(api: Api) -> None:
    for bad in ("x" * 256, "tab\there", ""):
        response = api.post("/sessions", json={"name": "a"}, headers={"Idempotency-Key": bad})
        assert assert_error(response, 422, "VALIDATION_ERROR")["details"]["field"] == "Idempotency-Key"
