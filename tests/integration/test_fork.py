"""Forking a session through HTTP, the Python client and the MCP tool, on a real gateway on the
test run's Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from session_engine_client import Client, ForkedFrom, ValidationError

from benchmarks.server import ServerProcess
from tests.integration.test_mcp import call, error_body, with_tools

from .conftest import ORGS, Api, assert_error

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "user", "content": "what is open?"},
    {"role": "assistant", "content": "asking the tracker", "tool_call_id": "c1", "tool_name": "tracker"},
    {"role": "tool", "content": "three bugs", "tool_call_id": "c1", "tool_name": "tracker"},
]


@pytest.fixture(scope="module")
def http(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=60) as client:
        yield client


def source(api: Api, **body: Any) -> dict[str, Any]:
    """A session of three messages (one at a time, so each has its own created_at)."""
    session = api.new_session(name="planner", ttl_seconds=600, context={"goal": "ship"}, **body)
    for message in MESSAGES:
        assert api.post(f"/sessions/{session['id']}/messages", json=message).status_code == 201
    return api.get(f"/sessions/{session['id']}").json()


def fork(api: Api, sid: str, **body: Any) -> httpx.Response:
    return api.post(f"/sessions/{sid}/fork", json=body)


def test_a_fork_holds_the_messages_up_to_at_seq_and_the_source_is_unchanged(http: httpx.Client) -> None:
    api = Api(http, ORGS[600])
    before = source(api)
    sid = before["id"]
    made = fork(api, sid, at_seq=2)
    assert made.status_code == 201, made.text
    view = made.json()
    assert made.headers["location"] == f"/sessions/{view['id']}" and view["id"] != sid
    assert view["forked_from"] == {"session_id": sid, "seq": 2}
    assert (view["status"], view["message_count"], view["version"]) == ("active", 2, 1)
    assert (view["name"], view["ttl_seconds"], view["context"]) == ("planner", 600, {"goal": "ship"})
    forked = api.get(f"/sessions/{view['id']}").json()
    assert forked["messages"] == before["messages"][:2]  # seq, role, tool fields, created_at

    said = api.post(f"/sessions/{view['id']}/messages", json={"role": "user", "content": "branch"})
    assert said.json()["seq"] == 3
    assert api.get(f"/sessions/{sid}").json() == before, "the source is unchanged"
    assert before["forked_from"] is None

    given = fork(api, sid, at_seq=3, name="try two", ttl_seconds=60, context={"goal": "test"}).json()
    assert (given["name"], given["ttl_seconds"], given["context"]) == ("try two", 60, {"goal": "test"})
    assert given["expires_at"] - given["created_at"] == 60_000


def test_an_ended_source_can_be_forked_and_at_seq_0_makes_an_empty_fork(http: httpx.Client) -> None:
    api = Api(http, ORGS[601])
    closed, completed = source(api)["id"], source(api)["id"]
    assert api.post(f"/sessions/{closed}/close").status_code == 200
    assert api.post(f"/sessions/{completed}/complete").status_code == 200
    for sid in (closed, completed):
        view = fork(api, sid, at_seq=3).json()
        assert (view["status"], view["message_count"], view["summary_status"]) == ("active", 3, None)
    empty = fork(api, closed, at_seq=0).json()
    assert (empty["message_count"], empty["forked_from"]) == (0, {"session_id": closed, "seq": 0})


def test_at_seq_out_of_range_is_refused_naming_it(http: httpx.Client) -> None:
    api = Api(http, ORGS[602])
    sid = source(api)["id"]
    for body in ({"at_seq": 4}, {"at_seq": -1}, {"at_seq": "1"}, {}):
        refused = assert_error(fork(api, sid, **body), 422, "VALIDATION_ERROR")
        assert refused["details"]["field"] == "at_seq", body
    assert api.get("/sessions").json()["count"] == 1, "nothing was made"


def test_another_organizations_or_a_missing_session_is_not_found(http: httpx.Client) -> None:
    mine, theirs = Api(http, ORGS[603]), Api(http, ORGS[604])
    sid = source(mine)["id"]
    assert_error(fork(theirs, sid, at_seq=1), 404, "NOT_FOUND")
    assert_error(fork(mine, "sess_" + "0" * 32, at_seq=0), 404, "NOT_FOUND")
    assert_error(fork(mine, "nope", at_seq=0), 404, "NOT_FOUND")
    assert theirs.get("/sessions").json()["count"] == 0


def test_a_retry_under_its_idempotency_key_answers_the_same_fork(http: httpx.Client) -> None:
    api = Api(http, ORGS[605])
    sid = source(api)["id"]
    keyed = {"Idempotency-Key": "fork-once"}
    first = api.post(f"/sessions/{sid}/fork", json={"at_seq": 1}, headers=keyed)
    again = api.post(f"/sessions/{sid}/fork", json={"at_seq": 1}, headers=keyed)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert api.get("/sessions").json()["count"] == 2
    other = api.post(f"/sessions/{sid}/fork", json={"at_seq": 2}, headers=keyed)
    assert_error(other, 409, "CONFLICT")  # the key was first used for another fork


def test_the_client_forks_a_session(ray_server: ServerProcess) -> None:
    with Client(f"key-{ORGS[606]}", ray_server.url) as engine:
        session = engine.create_session("planner", context={"goal": "ship"})
        engine.append_message(session.id, "user", "hello")
        engine.append_message(session.id, "assistant", "hi")
        forked = engine.fork_session(session.id, 1, name="branch")
        assert forked.forked_from == ForkedFrom(session_id=session.id, seq=1)
        assert (forked.name, forked.message_count, forked.context) == ("branch", 1, {"goal": "ship"})
        assert engine.get_session(session.id).forked_from is None
        with pytest.raises(ValidationError):
            engine.fork_session(session.id, 3)


def test_the_mcp_tool_forks_a_session_and_refuses_as_the_route_does(ray_server: ServerProcess) -> None:
    org = ORGS[607]
    with httpx.Client(base_url=ray_server.url, timeout=60) as client:
        sid = source(Api(client, org))["id"]
        route = Api(client, org).post(f"/sessions/{sid}/fork", json={"at_seq": 9})
    expected = assert_error(route, 422, "VALIDATION_ERROR")

    async def agent(session: ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
        made = await call(session, "fork_session", session_id=sid, fork={"at_seq": 2, "name": "b"})
        arguments = {"session_id": sid, "fork": {"at_seq": 9}}
        refused = error_body(await session.call_tool("fork_session", arguments))
        return made, refused

    made, refused = with_tools(ray_server, f"key-{org}", agent)
    assert made["forked_from"] == {"session_id": sid, "seq": 2}
    assert (made["name"], made["message_count"]) == ("b", 2)
    assert (refused["code"], refused["details"]) == (expected["code"], expected["details"])
