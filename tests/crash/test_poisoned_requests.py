"""The sequence that once took a shard down for every organization on it, against a
real server: one organization sends contexts of every depth while another appends beside it, in
the same coalesced shard calls; then SIGKILL and a restart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.server import ServerProcess

ENV = {"SESSION_ENGINE_API_KEYS": "key-a=org-a,key-b=org-b", "SESSION_ENGINE_SHARDS": "1", "RAY_ADDRESS": ""}
DEPTHS = [64, 65, 200, 251, 252, 253, 254, 300, 1023, 1024, 2000]


def deep(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_deep_contexts_beside_another_organization_harm_nothing_and_the_server_restarts(
    tmp_data: Path,
) -> None:
    server = ServerProcess(tmp_data, [], ENV).wait_ready()
    a = httpx.Client(base_url=server.url, headers={"Authorization": "Bearer key-a"}, timeout=30)
    b = httpx.Client(base_url=server.url, headers={"Authorization": "Bearer key-b"}, timeout=30)
    try:
        sid_a = a.post("/sessions", json={"name": "poisoner"}).json()["id"]
        sid_b = b.post("/sessions", json={"name": "bystander"}).json()["id"]

        def put(depth: int) -> httpx.Response:
            return a.put(f"/sessions/{sid_a}/context", content=deep(depth))

        def say(i: int) -> httpx.Response:
            return b.post(f"/sessions/{sid_b}/messages", json={"role": "user", "content": f"m{i}"})

        with ThreadPoolExecutor(8) as pool:
            puts = [pool.submit(put, d) for d in DEPTHS * 3]
            says = [pool.submit(say, i) for i in range(60)]
            put_answers = [f.result() for f in puts]
            say_answers = [f.result() for f in says]
        for depth, response in zip(DEPTHS * 3, put_answers, strict=True):
            if depth <= 64:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code in (400, 422), (depth, response.text)
                assert response.headers["x-request-id"]
        assert [r.status_code for r in say_answers] == [201] * 60, "the other organization is unharmed"

        # A keyed create refused for its context is refused again on retry, never replayed.
        keyed = {"Idempotency-Key": "deep-create", "Content-Type": "application/json"}
        body = b'{"name": "n", "context": ' + deep(300) + b"}"
        for _ in range(2):
            again = a.post("/sessions", content=body, headers=keyed)
            assert again.status_code == 422 and "idempotent-replayed" not in again.headers
        view = a.get(f"/sessions/{sid_a}").json()
        acknowledged_version = view["version"]
        assert acknowledged_version == 1 + 3  # the three depth-64 contexts, and nothing else
    finally:
        a.close()
        b.close()
        server.kill_session()
        server.stop()

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": "Bearer key-a"}) as a:
            after = a.get(f"/sessions/{sid_a}").json()
            assert after["version"] == acknowledged_version
            assert a.get("/sessions").json()["count"] == 1
        with httpx.Client(base_url=restarted.url, headers={"Authorization": "Bearer key-b"}) as b:
            messages = b.get(f"/sessions/{sid_b}").json()["messages"]
            assert sorted(m["content"] for m in messages) == sorted(f"m{i}" for i in range(60))
            assert [m["seq"] for m in messages] == list(range(1, 61))
    finally:
        restarted.stop()
