"""Idempotency keys across a SIGKILL of the whole server, and retention purges run by the shards,
both on real servers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import orjson

from benchmarks.server import ServerProcess

ENV = {
    "SESSION_ENGINE_API_KEYS": "crash-key=crash,short-key=short",
    "RAY_ADDRESS": "",
    # Organization 'short' keeps ended sessions for about a second; everyone else, forever.
    "SESSION_ENGINE_LIMITS__ORGS": orjson.dumps({"short": {"retention_days": 1 / 86_400}}).decode(),
    "SESSION_ENGINE_LIMITS__RETENTION_CHECK_S": "0.2",
}


def client(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_keyed_writes_are_answered_not_applied_again_after_a_sigkill(tmp_data: Path) -> None:
    create, say, close = (str(uuid.uuid4()) for _ in range(3))
    server = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with client(server, "crash-key") as api:
            first = api.post("/sessions", json={"name": "once"}, headers={"Idempotency-Key": create})
            sid = first.json()["id"]
            said = api.post(
                f"/sessions/{sid}/messages",
                json={"role": "user", "content": "hi"},
                headers={"Idempotency-Key": say},
            )
            closed = api.post(f"/sessions/{sid}/complete", headers={"Idempotency-Key": close})
            assert (first.status_code, said.status_code, closed.status_code) == (201, 201, 200)
    finally:
        server.kill_session()
        server.stop()

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with client(restarted, "crash-key") as api:
            # The client never saw its answers (say) and retries everything blindly.
            again = api.post("/sessions", json={"name": "once"}, headers={"Idempotency-Key": create})
            assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
            again = api.post(
                f"/sessions/{sid}/messages",
                json={"role": "user", "content": "hi"},
                headers={"Idempotency-Key": say},
            )
            assert again.json() == said.json() and again.headers["idempotent-replayed"] == "true"
            again = api.post(f"/sessions/{sid}/complete", headers={"Idempotency-Key": close})
            assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
            session = api.get(f"/sessions/{sid}").json()
            assert (session["message_count"], session["status"]) == (1, "completed")
            assert len(api.get("/sessions").json()["sessions"]) == 1
    finally:
        restarted.stop()


def test_retention_purges_an_organizations_ended_sessions_and_their_vectors(tmp_data: Path) -> None:
    server = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with client(server, "short-key") as short, client(server, "crash-key") as keeper:
            ended, live = (
                short.post("/sessions", json={"name": "a"}).json(),
                short.post("/sessions", json={"name": "b"}).json(),
            )
            kept = keeper.post("/sessions", json={"name": "c"}).json()
            for api, session in ((short, ended), (keeper, kept)):
                api.post(
                    f"/sessions/{session['id']}/messages", json={"role": "user", "content": "plan the trip"}
                )
                assert api.post(f"/sessions/{session['id']}/close").status_code == 200
            deadline = time.monotonic() + 30
            while short.get(f"/sessions/{ended['id']}").status_code != 404:
                assert time.monotonic() < deadline, "the ended session was purged"
                time.sleep(0.2)
            query = {"namespace": "session-memory", "query_text": "plan the trip", "top_k": 10}
            while short.post("/vectors/query", json=query).json()["count"]:
                assert time.monotonic() < deadline, "its summary vector went with it"
                time.sleep(0.2)
            assert short.get(f"/sessions/{live['id']}").status_code == 200, "active sessions stay"
            # Searchable once indexed: a ready summary is in session memory only then.
            while keeper.get(f"/sessions/{kept['id']}").json()["index_status"] != "ready":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert keeper.post("/vectors/query", json=query).json()["count"] == 1, (
                "other organizations keep theirs"
            )
    finally:
        server.stop()
