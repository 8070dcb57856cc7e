"""Session memory as it stood at a moment (`as_of`) and filtered by session status, on the real
server on Ray, as a client sees them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.server import ServerProcess

from .conftest import ORGS, Api, assert_error
from .test_summaries import wait_summary

_orgs = iter(ORGS[650:660])


@pytest.fixture(scope="module")
def ray_client(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def ray_api(ray_client: httpx.Client) -> Api:
    return Api(ray_client, next(_orgs))


def say(api: Api, sid: str, *texts: str) -> None:
    body = {"messages": [{"role": "user", "content": text} for text in texts]}
    assert api.post(f"/sessions/{sid}/messages", json=body).status_code == 201


def closed(api: Api, name: str, *texts: str) -> str:
    """A session that said these, closed, its summary ready."""
    sid = api.new_session(name=name)["id"]
    say(api, sid, *texts)
    assert api.post(f"/sessions/{sid}/close").status_code == 200
    assert wait_summary(api, sid)["summary_status"] == "ready"
    return sid


def found(api: Api, text: str, **options: Any) -> list[dict[str, Any]]:
    body = {"namespace": "session-memory", "query_text": text, **options}
    response = api.post("/vectors/query", json=body)
    assert response.status_code == 200, response.text
    return list(response.json()["matches"])


def now_ms() -> int:
    # The server's clock is this machine's: a moment strictly between two requests' times.
    time.sleep(0.01)
    moment = int(time.time() * 1000)
    time.sleep(0.01)
    return moment


def test_as_of_answers_with_the_fact_as_it_stood_then(ray_api: Api) -> None:
    lisbon = closed(ray_api, "Maya's move", "Hi, it's Maya. I live in Lisbon now.")
    between = now_ms()
    osaka = closed(ray_api, "Maya's move", "Maya here again: we moved to Osaka last month.")
    asked = "Where does Maya live?"
    assert {m["id"] for m in found(ray_api, asked)} == {lisbon, osaka}
    then = found(ray_api, asked, as_of=between)
    assert [m["id"] for m in then] == [lisbon], "Osaka was not said yet"
    assert found(ray_api, asked, as_of=between, filter={"status": "closed"})[0]["id"] == lisbon


def test_as_of_hides_a_later_message_and_a_summary_made_later(ray_api: Api) -> None:
    sid = ray_api.new_session(name="pets")["id"]
    say(ray_api, sid, "My cat is called Pixel.")
    between = now_ms()
    say(ray_api, sid, "Pixel learned to open the fridge door.")
    assert ray_api.post(f"/sessions/{sid}/close").status_code == 200
    wait_summary(ray_api, sid)
    asked = "Which pet opens the fridge?"
    now = found(ray_api, asked)[0]
    assert 2 in [h["seq"] for h in now["metadata"]["highlights"]] and now["metadata"]["summary"]
    [then] = found(ray_api, asked, as_of=between)  # open then: found by what it had said
    assert [h["seq"] for h in then["metadata"]["highlights"]] == [1]
    assert then["metadata"]["summary"] is None
    assert then["relevance"] < now["relevance"]


def test_the_status_filter_picks_sessions_by_their_status(ray_api: Api) -> None:
    finished = closed(ray_api, "trip", "Plan a trip to Kyoto in April.")
    done = ray_api.new_session(name="trip")["id"]
    say(ray_api, done, "Book the Kyoto ryokan.")
    ray_api.post(f"/sessions/{done}/complete")
    assert ray_api.post(f"/sessions/{done}/summarize").status_code == 202  # indexes it as completed
    wait_summary(ray_api, done)
    asked = "Kyoto"
    assert {m["id"] for m in found(ray_api, asked)} == {finished, done}, "every status by default"
    assert [m["id"] for m in found(ray_api, asked, filter={"status": "closed"})] == [finished]
    assert [m["id"] for m in found(ray_api, asked, filter={"status": {"$in": ["completed"]}})] == [done]
    assert found(ray_api, asked, filter={"status": "completed"})[0]["metadata"]["status"] == "completed"


def test_a_forks_copied_messages_count_from_the_fork(ray_api: Api) -> None:
    source = closed(ray_api, "bikes", "My bike is a red Brompton.")
    between = now_ms()
    fork = ray_api.post(f"/sessions/{source}/fork", json={"at_seq": 1})
    assert fork.status_code == 201, fork.text
    fork_id = fork.json()["id"]
    say(ray_api, fork_id, "I might sell it and buy a cargo bike.")
    assert ray_api.post(f"/sessions/{fork_id}/close").status_code == 200
    wait_summary(ray_api, fork_id)
    asked = "red Brompton bike"
    assert {m["id"] for m in found(ray_api, asked)} == {source, fork_id}
    [then] = found(ray_api, asked, as_of=between)
    assert then["id"] == source
    assert [h["seq"] for h in then["metadata"]["highlights"]] == [1], "said in one session then"


def test_bad_as_of_and_unknown_statuses_are_refused_with_a_hint(ray_api: Api) -> None:
    query = {"namespace": "session-memory", "query_text": "anything"}
    future = int(time.time() * 1000) + 10 * 60_000
    body = assert_error(
        ray_api.post("/vectors/query", json={**query, "as_of": future}), 422, "VALIDATION_ERROR"
    )
    assert body["details"]["field"] == "as_of" and "epoch milliseconds" in body["hint"]
    body = assert_error(ray_api.post("/vectors/query", json={**query, "as_of": 1.5}), 422, "VALIDATION_ERROR")
    assert body["details"]["field"] == "as_of" and "epoch milliseconds" in body["error"]
    unknown = {**query, "filter": {"status": "archived"}}
    body = assert_error(ray_api.post("/vectors/query", json=unknown), 422, "VALIDATION_ERROR")
    assert body["details"]["allowed"] == ["active", "closed", "completed", "expired"]
    assert "active, closed, completed, expired" in body["hint"]
    several = {**query, "filter": {"status": ["closed", "completed"]}}  # the schema refuses a list
    body = assert_error(ray_api.post("/vectors/query", json=several), 422, "VALIDATION_ERROR")
    assert body["details"]["field"].startswith("filter.status")
    for status in ({"$eq": ["closed", "completed"]}, {"$in": "closed"}):
        listed = {**query, "filter": {"status": status}}
        body = assert_error(ray_api.post("/vectors/query", json=listed), 422, "VALIDATION_ERROR")
        assert body["details"]["field"].startswith("filter.status.$") and '"$in"' in body["hint"]
    assert found(ray_api, "anything", as_of=int(time.time() * 1000) + 1_000) == [], "a little skew is fine"
