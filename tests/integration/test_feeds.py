"""The change feeds, through HTTP on a real gateway with two worker processes on a real local Ray:
what each feed carries, exact resumption (across workers, a gateway restart and a graceful stop of
the whole engine), isolation, the answers to bad input, and the cap on an organization's feeds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from benchmarks.server import joined_server
from tests.integration.conftest import API_KEYS, Api, assert_error

pytestmark = pytest.mark.integration
MAX_FEEDS = 3  # events.max_feeds_per_org: per worker, and the gateway has two


@pytest.fixture(scope="module")
def gateway(
    ray_address: str, servers_use_tiny_summarizer: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two worker processes, so consecutive connections land on different workers' feed hubs."""
    data_dir = tmp_path_factory.mktemp("feeds") / "data"
    env = {
        "SESSION_ENGINE_API_KEYS": API_KEYS,
        "SESSION_ENGINE_RAY__NAMESPACE": f"feeds-{uuid.uuid4().hex[:8]}",
        # Small enough for a test to pass them: each test has an organization of its own.
        "SESSION_ENGINE_EVENTS__MAX_FEEDS_PER_ORG": str(MAX_FEEDS),
        "SESSION_ENGINE_EVENTS__MAX_EVENTS": "300",
        "SESSION_ENGINE_EVENTS__HEARTBEAT_S": "1",  # a closed feed is noticed at its next write
    }
    state = {
        "server": joined_server(data_dir, ray_address, env, "--workers", "2"),
        "data_dir": data_dir,
        "env": env,
    }
    try:
        yield state
    finally:
        state["server"].stop()


@pytest.fixture
def client(gateway: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway["server"].url, timeout=30) as http:
        yield http


_orgs = iter(range(150, 200))


@pytest.fixture
def api(client: httpx.Client) -> Api:
    return Api(client, f"org{next(_orgs)}")


@pytest.fixture
def other_api(client: httpx.Client) -> Api:
    return Api(client, f"org{next(_orgs)}")


class Sse:
    """A feed read on a thread of its own: events arrive in `events` as (id, type, data)."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.keep_created = path == "/events"
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, path, headers), daemon=True)
        self._thread.start()

    def _read(self, url: str, path: str, headers: dict[str, str]) -> None:
        timeout = httpx.Timeout(30, read=None)
        # A feed left open ends when its server stops: that is no failure of the test.
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", url + path, headers=headers, timeout=timeout) as response,
        ):
            self.status = response.status_code
            fields: dict[str, str] = {}
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line == "":
                    if "event" in fields:
                        self.events.append(
                            (fields.get("id", ""), fields["event"], orjson.loads(fields["data"]))
                        )
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[tuple[str, str, dict[str, Any]]]:
        """The events after feed.ready, once there are `count`. A feed opened without Last-Event-ID
        starts where its gateway's reader of the shard is, which may be just before the connection:
        so it may begin with the session's own session.created, which is left out here."""
        deadline = time.monotonic() + timeout_s
        while len(self.after_ready()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.after_ready()) >= count, self.events
        return self.after_ready()

    def after_ready(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [e for e in self.events[1:] if e[1] != "session.created" or self.keep_created]

    def close(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def feed(api: Api, path: str, last_event_id: str | None = None) -> Iterator[Sse]:
    headers = dict(api.auth)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    reader = Sse(str(api.client.base_url), path, headers)
    try:
        deadline = time.monotonic() + 30
        while not reader.events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.events[0][1] == "feed.ready"  # the consumer is registered from here on
        yield reader
    finally:
        reader.close()


def say(api: Api, sid: str, *texts: str) -> None:
    for text in texts:
        assert (
            api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": text}).status_code == 201
        )


def test_a_session_feed_carries_what_happens_to_the_session(api: Api) -> None:
    sid = api.new_session()["id"]
    with feed(api, f"/sessions/{sid}/events") as sse:
        assert sse.events[0][2]["session"] == {
            "status": "active",
            "summary_status": None,
            "index_status": None,
            "summary": None,
            "summary_error": None,
        }
        say(api, sid, "one", "two")
        assert api.put(f"/sessions/{sid}/context", json={"step": 2}).status_code == 200
        assert api.post(f"/sessions/{sid}/close").status_code == 200
        events = sse.wait_for(4)
        assert [kind for _, kind, _ in events[:4]] == [
            "message.appended",
            "message.appended",
            "context.updated",
            "status.changed",
        ]
        assert [data["message"]["seq"] for _, kind, data in events if kind == "message.appended"] == [1, 2]
        assert events[2][2]["context"] == {"step": 2} and events[3][2]["status"] == "closed"
        # The summary follows in the background (the tests' tiny model).
        done = sse.wait_for(5, timeout_s=90)[4]
        assert done[1] in ("summary.ready", "summary.failed") and done[2]["session_id"] == sid
        if done[1] == "summary.ready":  # then searchable: the index follows the summary
            indexed = sse.wait_for(6, timeout_s=90)[5]
            assert indexed[1] == "session.indexed" and indexed[2]["index_status"] == "ready"
            assert indexed[2]["indexed_at"] >= done[2]["summary_provenance"]["created_at"]
    # A feed opened afterwards starts with the state its events led to.
    with feed(api, f"/sessions/{sid}/events") as later:
        state = later.events[0][2]["session"]
        assert state["status"] == "closed" and state["summary_status"] == done[1].split(".")[1]
        assert (state["summary"] is not None) == (done[1] == "summary.ready")
        if done[1] == "summary.ready":
            assert state["index_status"] == "ready"


def test_a_feed_resumes_from_last_event_id_with_no_gap_and_no_duplicate(api: Api) -> None:
    sid = api.new_session()["id"]
    with feed(api, f"/sessions/{sid}/events") as sse:
        say(api, sid, *[f"m{i}" for i in range(5)])
        seen = sse.wait_for(5)
    position = seen[2][0]  # after the third message
    say(api, sid, *[f"m{i}" for i in range(5, 8)])  # while no one listens
    # A new connection (likely another worker of the gateway) picks up right after it.
    with feed(api, f"/sessions/{sid}/events", position) as resumed:
        resumed.wait_for(5)
        time.sleep(0.3)  # nothing more arrives
        assert [data["message"]["content"] for _, _, data in resumed.events[1:]] == [
            f"m{i}" for i in range(3, 8)
        ]
        assert resumed.events[0][0] == position  # feed.ready names where it starts


def test_the_organization_feed_has_its_own_sessions_and_never_another_organizations(
    api: Api, other_api: Api
) -> None:
    with feed(api, "/events") as sse:
        theirs = other_api.new_session()["id"]
        mine = [api.new_session()["id"] for _ in range(4)]  # spread over both shards
        say(api, mine[0], "not in the organization feed")
        assert api.post(f"/sessions/{mine[1]}/complete").status_code == 200
        assert api.delete(f"/sessions/{mine[2]}").status_code == 204
        other_api.post(f"/sessions/{theirs}/close")
        events = sse.wait_for(6)
        time.sleep(0.3)
        kinds = [(kind, data["session_id"]) for _, kind, data in sse.events[1:]]
        assert sorted(kinds) == sorted(
            [("session.created", s) for s in mine]
            + [("session.completed", mine[1]), ("session.deleted", mine[2])]
        )
        assert all(theirs not in str(data) for _, _, data in events)
        assert len(events[-1][0].split(",")) == 2  # one position per session shard


def test_a_feed_resumes_on_a_new_gateway_after_a_restart(ray_address: str, gateway: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway["server"].url, timeout=30) as http:
        api = Api(http, "org149")
        sid = api.new_session()["id"]
        with feed(api, f"/sessions/{sid}/events") as sse:
            say(api, sid, "before")
            position = sse.wait_for(1)[0][0]
    gateway["server"].stop()
    gateway["server"] = joined_server(gateway["data_dir"], ray_address, gateway["env"], "--workers", "2")
    with httpx.Client(base_url=gateway["server"].url, timeout=30) as http:
        api = Api(http, "org149")
        say(api, sid, "after")
        with feed(api, f"/sessions/{sid}/events", position) as sse:
            assert [data["message"]["content"] for _, _, data in sse.wait_for(1)] == ["after"]


def test_a_caught_up_feed_resumes_after_the_engine_stops_gracefully(
    ray_address: str, gateway: dict[str, Any]
) -> None:
    """`session-engine stop` snapshots every shard as it stops: consumers whose last ids are from
    before that resume exactly on the engine started again from those snapshots."""
    with httpx.Client(base_url=gateway["server"].url, timeout=30) as http:
        api = Api(http, "org148")
        sid, quiet = api.new_session()["id"], api.new_session()["id"]
        with feed(api, f"/sessions/{quiet}/events") as waiting:
            time.sleep(0.3)
            quiet_id = waiting.events[-1][0]  # the last id it got: nothing more happens to it
        with feed(api, f"/sessions/{sid}/events") as sse, feed(api, "/events") as org:
            say(api, sid, "before")
            assert api.post(f"/sessions/{sid}/complete").status_code == 200
            last_id = sse.wait_for(2)[-1][0]  # status.changed: the newest event of its shard
            deadline = time.monotonic() + 30
            while not any(kind == "session.completed" for _, kind, _ in org.events):
                assert time.monotonic() < deadline, org.events
                time.sleep(0.02)
            org_id = org.events[-1][0]
    gateway["server"].stop()
    command = [sys.executable, "-m", "session_engine", "stop", "--data-dir", str(gateway["data_dir"])]
    stopped = subprocess.run(
        [*command, "--ray-address", ray_address],
        env={**os.environ, **gateway["env"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 0, stopped.stderr
    gateway["server"] = joined_server(gateway["data_dir"], ray_address, gateway["env"], "--workers", "2")
    with httpx.Client(base_url=gateway["server"].url, timeout=30) as http:
        api = Api(http, "org148")
        with feed(api, f"/sessions/{sid}/events", last_id) as sse, feed(api, "/events", org_id) as org:
            time.sleep(0.3)
            assert sse.after_ready() == [] and org.after_ready() == []  # caught up: nothing, no 410
            assert api.delete(f"/sessions/{sid}").status_code == 204
            assert [kind for _, kind, _ in sse.wait_for(1)] == ["session.deleted"]
            assert [(kind, data["session_id"]) for _, kind, data in org.wait_for(1)] == [
                ("session.deleted", sid)
            ]
        # A session quiet since its consumer's last id, while others' events came and went.
        with feed(api, f"/sessions/{quiet}/events", quiet_id) as sse:
            say(api, quiet, "after")
            assert [data["message"]["content"] for _, _, data in sse.wait_for(1)] == ["after"]


def test_feed_bad_input_gets_clear_answers(api: Api, other_api: Api) -> None:
    sid = api.new_session()["id"]
    assert_error(api.get("/sessions/sess_" + "0" * 32 + "/events"), 404, "NOT_FOUND")
    assert_error(other_api.get(f"/sessions/{sid}/events"), 404, "NOT_FOUND")
    for bad in ("yesterday", "1.2.3", "-4.0", "1.0,2.0"):
        body = assert_error(
            api.get(f"/sessions/{sid}/events", headers={"Last-Event-ID": bad}), 422, "VALIDATION_ERROR"
        )
        assert body["details"]["field"] == "Last-Event-ID"
    assert_error(api.get("/events", headers={"Last-Event-ID": "1.0"}), 422, "VALIDATION_ERROR")
    # A position past the feed's end is none this feed gave.
    for path, future in ((f"/sessions/{sid}/events", "999999999.0"), ("/events", "999999999.0,1.0")):
        body = assert_error(api.get(path, headers={"Last-Event-ID": future}), 422, "VALIDATION_ERROR")
        assert body["details"]["field"] == "Last-Event-ID" and "without Last-Event-ID" in body["hint"]
    # An event past the end of its record (one message: one event).
    with feed(api, f"/sessions/{sid}/events") as sse:
        say(api, sid, "one")
        record = sse.wait_for(1)[0][0].split(".")[0]
    body = assert_error(
        api.get(f"/sessions/{sid}/events", headers={"Last-Event-ID": f"{record}.9"}), 422, "VALIDATION_ERROR"
    )
    assert body["details"]["events"] == 1
    # 410 once an event the feed wants is no longer kept: 400 more than events.max_events (300).
    for batch in range(4):
        messages = [{"role": "user", "content": f"m{batch}.{i}"} for i in range(100)]
        assert api.post(f"/sessions/{sid}/messages", json={"messages": messages}).status_code == 201
    gone = assert_error(api.get(f"/sessions/{sid}/events", headers={"Last-Event-ID": "0.0"}), 410, "GONE")
    assert "without Last-Event-ID" in gone["hint"] and gone["details"]["oldest_resumable"]
    # A deleted session's feed is not there, from any position.
    assert api.delete(f"/sessions/{sid}").status_code == 204
    assert_error(api.get(f"/sessions/{sid}/events", headers={"Last-Event-ID": "0.0"}), 404, "NOT_FOUND")
    assert_error(httpx.get(f"{api.client.base_url}/events"), 401, "AUTH_REQUIRED")


def feeds_refused(text: str, org: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("session_engine_feeds_refused_total{")
        and f'org="{org}"' in line
        and 'reason="max_feeds_per_org"' in line
    )


def test_an_organization_holds_at_most_max_feeds_per_org_on_each_worker(api: Api, other_api: Api) -> None:
    url = str(api.client.base_url)
    # Two workers, three each: of seven feeds held open at once, at least one is refused.
    readers = [Sse(url, "/events", dict(api.auth)) for _ in range(2 * MAX_FEEDS + 1)]
    try:
        settled(readers)
        statuses = sorted(r.status or 0 for r in readers)
        assert 429 in statuses and statuses.count(200) <= 2 * MAX_FEEDS, statuses
        refused = refused_feed(api)
        body = assert_error(refused, 429, "RATE_LIMITED")
        assert "GET /events" in body["hint"] and body["details"]["limit"] == MAX_FEEDS
        assert int(refused.headers["retry-after"]) >= 1
        assert feeds_refused(httpx.get(f"{url}/metrics").text, api.org) >= 2
        with feed(other_api, "/events"):  # another organization has its own
            pass
    finally:
        for reader in readers:
            reader.close()
    # Closed feeds count no more (a server notices a closed connection at its next keep-alive,
    # events.heartbeat_s): a new one opens on whichever worker takes it.
    deadline = time.monotonic() + 30
    while True:
        again = Sse(url, "/events", dict(api.auth))
        settled([again])
        again.close()
        if again.status == 200:
            break
        assert time.monotonic() < deadline, "closed feeds stay counted"
        time.sleep(0.2)


def refused_feed(api: Api) -> httpx.Response:
    """A refused feed's answer; a feed that opens (its worker has room) is closed at once."""
    for _ in range(40):
        with api.client.stream("GET", "/events", headers=api.auth) as response:
            if response.status_code != 200:
                response.read()
                return response
    raise AssertionError("no worker refused a feed")


def settled(readers: list[Sse], timeout_s: float = 30.0) -> None:
    """Until each reader has its answer: refused, or its feed.ready."""
    deadline = time.monotonic() + timeout_s
    while any(r.status is None or (r.status == 200 and not r.events) for r in readers):
        assert time.monotonic() < deadline, [r.status for r in readers]
        time.sleep(0.05)
