"""A start on a data directory of a few hundred sessions, as after a crash (`session-engine serve`,
its own Ray): sessions are served as soon as the session shards have recovered, while the models
still load; meanwhile /readyz is 200 "starting" and lists what loads, a memory query is 503 with
Retry-After and a hint that the models are loading, and the summary job the crash left waits for
them instead of failing. /readyz names no server path, after a recovery that passed over a damaged
snapshot too. `session-engine drain` makes /readyz say "draining". (The timing of a restart at
10,000 sessions is benchmarks.restart's, not a test's.)"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.server import ServerProcess
from engine.config import DurabilityConfig
from engine.routing import shard_for
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession, EndSession
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.layout import claim_layout, shard_directory
from engine.storage.snapshot import snapshots

KEY = "restart-key"
ORG = "restart"
ENV = {"SESSION_ENGINE_API_KEYS": f"{KEY}={ORG}", "RAY_ADDRESS": ""}
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSIONS = 300
POLL_S = 0.05


def crashed_data(data: Path) -> dict[str, str]:
    """SESSIONS sessions of 3 messages in 2 shards, as a server leaves them: shard 0 with two
    snapshots, the newer damaged, and a session closed whose summary job never ran. Returns the
    ids of an open session and of the closed one."""
    claim_layout(data, 2)
    ids: list[list[str]] = [[], []]
    for _ in range(SESSIONS):
        sid = new_session_id()
        ids[shard_for(ORG, sid, 2)].append(sid)
    said = tuple(NewMessage("user", f"the parcel to Lisbon is late, message {i}") for i in range(3))
    for index, shard_ids in enumerate(ids):
        shard = DurableSessions(shard_directory(data, index), DurabilityConfig(fsync="never"))
        shard.commit(
            [
                op
                for sid in shard_ids
                for op in (CreateSession(ORG, sid, sid, 86_400, {}), AppendMessages(ORG, sid, said))
            ]
        )
        shard.close(snapshot=True)
    closed = ids[0][0]
    shard = DurableSessions(shard_directory(data, 0), DurabilityConfig(fsync="never"))
    shard.commit([EndSession(ORG, closed, SessionStatus.CLOSED)])  # its summary job is queued in the log
    shard.close(snapshot=True)
    _, (_, newest) = snapshots(shard_directory(data, 0), SNAPSHOT_PREFIX)
    newest.write_bytes(newest.read_bytes()[:-30] + b"\xee" * 30)  # recovery passes over it
    return {"open": ids[1][0], "closed": closed}


class Watch(threading.Thread):
    """From the server's start: every /readyz answer, every memory query's, and the first append
    acknowledged, each with the seconds since the start."""

    def __init__(self, url: str, session_id: str, give_up_s: float = 240) -> None:
        super().__init__(daemon=True)
        self.url, self.session_id, self.give_up_s = url, session_id, give_up_s
        self.started = time.monotonic()
        self.readyz: list[tuple[float, int, dict[str, Any], str]] = []
        self.queries: list[tuple[float, int, dict[str, Any], dict[str, str]]] = []
        self.first_append_s: float | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=10) as client:
            while time.monotonic() - self.started < self.give_up_s:
                with contextlib.suppress(httpx.HTTPError):  # not listening yet
                    self._poll(client)
                if self.readyz and self.queries and self._done():
                    return
                time.sleep(POLL_S)

    def _done(self) -> bool:
        return self.readyz[-1][2].get("status") == "ready" and self.queries[-1][1] == 200

    def _poll(self, client: httpx.Client) -> None:
        ready = client.get("/readyz")
        self.readyz.append((self._now(), ready.status_code, ready.json(), ready.text))
        query = client.post("/vectors/query", json={"query_text": "a late parcel"})
        self.queries.append((self._now(), query.status_code, query.json(), dict(query.headers)))
        if self.first_append_s is None:
            added = client.post(
                f"/sessions/{self.session_id}/messages", json={"role": "user", "content": "back"}
            )
            if added.status_code == 201:
                self.first_append_s = self._now()

    def _now(self) -> float:
        return time.monotonic() - self.started


@pytest.fixture(scope="module")
def restarted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, Watch, dict[str, str], Path]]:
    data = tmp_path_factory.mktemp("restart") / "data"
    ids = crashed_data(data)
    server = ServerProcess(data, [], ENV)
    watch = Watch(server.url, ids["open"])
    watch.start()
    try:
        watch.join(300)
        server.wait_ready(timeout_s=120)
        yield server, watch, ids, data
    finally:
        server.stop()


def test_sessions_are_served_while_the_models_load(
    restarted: tuple[ServerProcess, Watch, dict[str, str], Path],
) -> None:
    _, watch, _, _ = restarted
    assert watch.first_append_s is not None, "no append was acknowledged"
    starting = [
        (t, body) for t, status, body, _ in watch.readyz if status == 200 and body["status"] == "starting"
    ]
    assert starting, [(t, s, b.get("status")) for t, s, b, _ in watch.readyz]
    assert any("embedder" in body["loading"] for _, body in starting)
    ready_at = next(t for t, status, body, _ in watch.readyz if status == 200 and body["status"] == "ready")
    assert watch.first_append_s < ready_at  # sessions did not wait for the models
    # Until the embedder has loaded, a memory query is a clear 503, never another error.
    refused = [(body, headers) for _, status, body, headers in watch.queries if status == 503]
    assert refused and all(status in (200, 503) for _, status, _, _ in watch.queries)
    for body, headers in refused:
        assert set(body) == {"error", "code", "details", "hint"} and body["code"] == "UNAVAILABLE"
        assert int(headers["retry-after"]) >= 1
    assert any("models are loading" in body["hint"] and body["details"].get("loading") for body, _ in refused)
    assert watch.readyz[-1][2]["loading"] == [] and watch.queries[-1][1] == 200


def test_the_summary_job_the_crash_left_waits_for_the_models_and_completes(
    restarted: tuple[ServerProcess, Watch, dict[str, str], Path],
) -> None:
    server, _, ids, _ = restarted
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        deadline = time.monotonic() + 120
        while (found := client.get(f"/sessions/{ids['closed']}").json())["summary_status"] in (
            "pending",
            "running",
        ) or found["index_status"] == "pending":  # a ready summary is indexed after it
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        assert found["index_status"] == "ready" and found["summary_status"] == "ready", found
        assert client.get("/sessions", params={"limit": 1000}).json()["count"] == SESSIONS


def test_readiness_names_no_server_path_after_a_recovery(
    restarted: tuple[ServerProcess, Watch, dict[str, str], Path],
) -> None:
    server, watch, _, data = restarted
    answers = [text for _, _, _, text in watch.readyz] + [
        httpx.get(f"{server.url}/readyz", timeout=30).text,
        httpx.get(f"{server.url}/readyz", params={"detail": "cluster"}, timeout=30).text,
        httpx.get(f"{server.url}/healthz", timeout=30).text,
    ]
    notices = httpx.get(f"{server.url}/readyz", timeout=30).json()["notices"]
    (damaged,) = next(n for n in notices if n["shard"] == "session-0")["recovery"]["damaged_snapshots"]
    assert damaged["file"] in damaged["reason"]  # what was damaged, by its name
    for text in answers:
        assert str(data) not in text and str(data.parent) not in text


def test_a_drained_engine_says_draining_and_then_ready_again(
    restarted: tuple[ServerProcess, Watch, dict[str, str], Path],
) -> None:
    server, _, ids, data = restarted

    def drain(*more: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "session_engine", "drain", "--data-dir", str(data), *more],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    drain()
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["status"] == "draining", ready.text
        refused = httpx.post(
            f"{server.url}/sessions/{ids['open']}/messages",
            json={"role": "user", "content": "no"},
            headers=AUTH,
        )
        assert refused.status_code == 503 and refused.json()["details"]["draining"]
    finally:
        drain("--undo")
    assert httpx.get(f"{server.url}/readyz", timeout=30).json()["status"] == "ready"
