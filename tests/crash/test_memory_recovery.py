"""Vector memory and summary jobs across a SIGKILL of the whole server: acknowledged upserts are
there afterwards, and the closing jobs the server had queued or under way when it died (a summary
to make, or a ready summary still to index) are done after restart: every summary ready and every
session searchable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.server import ServerProcess

from .test_crash_recovery import ENV, KEY

SLOW_SUMMARIES = {  # the tiny model writing 3000 tokens: seconds per batch, so the kill lands mid-job
    "SESSION_ENGINE_MODELS__SUMMARIZER__MIN_NEW_TOKENS": "3000",
    "SESSION_ENGINE_MODELS__SUMMARIZER__MAX_NEW_TOKENS": "3000",
}


def wait_for(client: httpx.Client, sid: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    """The session once its summary reaches one of `statuses` and its index is no longer pending: a
    ready summary is in session memory only once `index_status` is ready (engine.closing.job)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = dict(client.get(f"/sessions/{sid}").json())
        if session["summary_status"] in statuses and session["index_status"] != "pending":
            return session
        time.sleep(0.05)
    raise AssertionError(f"{sid} never reached {statuses}: {session}")


def test_acknowledged_vectors_and_running_summary_jobs_survive_sigkill(tmp_data: Path) -> None:
    server = ServerProcess(tmp_data, [], {**ENV, **SLOW_SUMMARIES}).wait_ready()
    auth = {"Authorization": f"Bearer {KEY}"}
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for batch in range(20):
                vectors = [
                    {"id": f"v{batch}-{i}", "values": [1.0, batch, i], "metadata": {"batch": batch}}
                    for i in range(50)
                ]
                response = client.post("/vectors/upsert", json={"namespace": "facts", "vectors": vectors})
                assert response.status_code == 200, response.text
                acknowledged += [v["id"] for v in vectors]
            deleted = [f"v0-{i}" for i in range(10)]
            assert (
                client.post("/vectors/delete", json={"namespace": "facts", "ids": deleted}).json()["deleted"]
                == 10
            )
            sessions = []
            for topic in ("gardening", "taxes", "chess"):
                sid = client.post("/sessions", json={"name": topic}).json()["id"]
                client.post(
                    f"/sessions/{sid}/messages", json={"role": "user", "content": f"talk about {topic}"}
                )
                assert client.post(f"/sessions/{sid}/close").json()["summary_status"] == "pending"
                sessions.append(sid)
            # Killed at once: the closes are in the log, their jobs queued or under way (a summary
            # is ready within moments of its close, its index follows; either may be cut off).
    finally:
        server.kill_session()
        server.stop()

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers=auth, timeout=30) as client:
            survivors = set(acknowledged) - set(deleted)
            recovered: set[str] = set()
            for batch in range(20):
                probe = {
                    "namespace": "facts",
                    "vector": [1.0, 1.0, 1.0],
                    "top_k": 100,
                    "filter": {"batch": batch},
                }
                recovered |= {m["id"] for m in client.post("/vectors/query", json=probe).json()["matches"]}
            assert recovered == survivors
            for sid in sessions:
                session = wait_for(client, sid, {"ready", "failed"})
                assert (session["summary_status"], session["index_status"]) == ("ready", "ready"), session
            memory = client.post(
                "/vectors/query", json={"namespace": "session-memory", "query_text": "talk", "top_k": 10}
            ).json()
            assert sorted(m["id"] for m in memory["matches"]) == sorted(sessions)
    finally:
        restarted.stop()

    again = ServerProcess(tmp_data, [], ENV).wait_ready()  # after a graceful stop, nothing is lost either
    try:
        with httpx.Client(base_url=again.url, headers=auth, timeout=30) as client:
            memory = client.post(
                "/vectors/query", json={"namespace": "session-memory", "query_text": "talk", "top_k": 10}
            ).json()
            assert sorted(m["id"] for m in memory["matches"]) == sorted(sessions)
            stats = client.post(
                "/vectors/query", json={"namespace": "facts", "vector": [1, 1, 1], "top_k": 100}
            )
            assert stats.json()["count"] == 100
    finally:
        again.stop()
