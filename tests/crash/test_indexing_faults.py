"""Session memory while the embedders die mid-index: appends never wait for indexing, and sessions whose
indexing was cut off by the kill are indexed whole once the embedder is back (Ray restarts it and
the job's next index attempt indexes the session again, entry ids by seq, so nothing doubles). Their
summaries, made before the index, are ready at the first attempt whatever the kills do."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import ray

from benchmarks.server import joined_server
from engine.config import EngineConfig
from engine.runtime.names import background_embedder_names, embedder_names

KEY = "index-key"
ENV = {
    "SESSION_ENGINE_API_KEYS": f"{KEY}=indexing",
    # Attempts enough to outlast the kills and the embedder's restarts.
    "SESSION_ENGINE_MODELS__SUMMARIZER__MAX_ATTEMPTS": "8",
    "SESSION_ENGINE_MODELS__SUMMARIZER__RETRY_BACKOFF_S": "0.5",
    # Every turn is embedded by the closing jobs at close, so the kills below cut them off mid-way:
    # with live memory on, most turns would be in before the close (its own crash test is
    # tests/crash/test_live_memory_recovery.py).
    "SESSION_ENGINE_MEMORY__LIVE__ENABLED": "false",
}
SESSIONS = 24
MESSAGES = 80


def closed_sessions(client: httpx.Client) -> list[dict[str, Any]]:
    return list(client.get("/sessions", params={"status": "closed", "limit": 100}).json()["sessions"])


def test_an_embedder_killed_mid_index_loses_nothing(tmp_data: Path, ray_address: str) -> None:
    server = joined_server(tmp_data, ray_address, ENV)
    namespace = server.env["SESSION_ENGINE_RAY__NAMESPACE"]
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
            live = client.post("/sessions", json={"name": "still talking"}).json()["id"]
            ids = []
            for s in range(SESSIONS):
                sid = client.post("/sessions", json={"name": f"chat {s}"}).json()["id"]
                messages = [
                    {"role": "user" if i % 2 == 0 else "assistant", "content": f"token{s}x{i} about item {i}"}
                    for i in range(MESSAGES)
                ]
                assert (
                    client.post(f"/sessions/{sid}/messages", json={"messages": messages}).status_code == 201
                )
                ids.append(sid)
            for sid in ids:
                assert client.post(f"/sessions/{sid}/close").status_code == 200
            # Closing jobs embed on indexing's own embedders (models.embedder.background_replicas),
            # and on the query embedders while those are down: while they are indexing, kill them
            # all, Ray restarts them.
            config = EngineConfig()
            assert background_embedder_names(config), (
                "the default config gives indexing an embedder of its own"
            )
            indexing = [*background_embedder_names(config), *embedder_names(config)]
            for _ in range(3):
                time.sleep(0.3)
                for name in indexing:
                    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
                appended = client.post(
                    f"/sessions/{live}/messages", json={"role": "user", "content": "still here"}
                )
                assert appended.status_code == 201, "appends never wait for indexing"
            deadline = time.monotonic() + 180
            while True:
                statuses = {s["id"]: s["index_status"] for s in closed_sessions(client)}
                if all(statuses.get(sid) == "ready" for sid in ids) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert all(statuses[sid] == "ready" for sid in ids), statuses
            attempts = [s["summary_attempts"] for s in closed_sessions(client) if s["id"] in ids]
            assert set(attempts) == {1}, "a summary is made before its index: no kill fails it"
            retried = [
                float(line.rsplit(" ", 1)[1])
                for line in client.get("/metrics").text.splitlines()
                if line.startswith("session_engine_summary_attempts_total{") and '"index_retried"' in line
            ]
            assert sum(retried) > 0, "the kills cut indexing off mid-way (it was tried again)"
            for s, sid in enumerate(ids):
                for i in (0, MESSAGES // 2, MESSAGES - 1):  # first, middle and last message: all there
                    body = {"namespace": "session-memory", "query_text": f"token{s}x{i}", "mode": "lexical"}
                    matches = client.post("/vectors/query", json=body).json()["matches"]
                    assert [m["id"] for m in matches][:1] == [sid], (s, i, matches)
                    assert matches[0]["metadata"]["highlights"][0]["seq"] == i + 1
            everything = {
                "namespace": "session-memory",
                "query_text": "item",
                "mode": "lexical",
                "top_k": 100,
            }
            found = [m["id"] for m in client.post("/vectors/query", json=everything).json()["matches"]]
            assert sorted(found) == sorted(ids), "one match per session, none doubled"
    finally:
        server.stop()
