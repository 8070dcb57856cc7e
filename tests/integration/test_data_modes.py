"""A real server's data directory is private to its user: after it wrote sessions, closed one
(indexed in memory and summarized) and snapshotted at its stop, every file is 0600 and every
directory 0700, though the server and its Ray ran under a umask that lets the group write."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.server import ServerProcess
from tests.support.modes import umask_of, wrong_modes


def test_every_file_a_server_writes_is_0600_and_every_directory_0700(tmp_data: Path) -> None:
    with umask_of(0o002):  # inherited by the processes started here: the server, its Ray, the actors
        keys = ["keys", "create", "--org", "modes", "--data-dir", str(tmp_data)]
        created = subprocess.run(
            [sys.executable, "-m", "session_engine", *keys],
            capture_output=True,
            text=True,
            check=True,
        )
        server = ServerProcess(tmp_data, [], {"RAY_ADDRESS": ""})
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for name in ("kept", "closed"):
                sid = client.post("/sessions", json={"name": name}).json()["id"]
                said = [{"role": "user", "content": f"{name}: plan a trip to Lisbon"}]
                assert client.post(f"/sessions/{sid}/messages", json={"messages": said}).status_code == 201
            assert client.post(f"/sessions/{sid}/close").status_code == 200
            deadline = time.monotonic() + 120
            # Ready first, then indexed (engine.closing.job): wait for both.
            while (session := client.get(f"/sessions/{sid}").json())["index_status"] != "ready":
                assert session["summary_status"] in ("pending", "running", "ready"), session
                assert time.monotonic() < deadline, session
                time.sleep(0.2)
            assert session["index_status"] == "ready"
    finally:
        assert server.stop() == 0, server.output()

    paths = [tmp_data, *tmp_data.rglob("*")]
    names = {p.name for p in paths}
    assert {"engine.json", "keys.json", "IDENTITY", "EPOCH", "LOCK", "shards", "memory"} <= names
    snapshots = {n.split("-")[0] for n in names if n.endswith(".snap")}
    assert snapshots == {"snapshot", "memory"}, "a session shard's and a memory shard's"
    assert wrong_modes(tmp_data) == {}
