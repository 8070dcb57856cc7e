"""A backup of a two-node cluster, taken by `session-engine backup --ray-address` through the shards
on both nodes, restores onto one node: a plain embedded server on the restored directory serves
every session, message, context and vector the cluster acknowledged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from benchmarks.server import ServerProcess

from .conftest import RayNodes, _env, client


def test_a_backup_of_a_two_node_cluster_restores_onto_one_node(nodes: RayNodes, tmp_path: Path) -> None:
    gateway = nodes.gateway().wait_ready(timeout_s=180)
    dest, restored = tmp_path / "backup", tmp_path / "restored"
    written: dict[str, tuple[list[str], dict[str, int]]] = {}
    try:
        assert len(set(nodes.shard_nodes().values())) == 2, "the shards are spread over both nodes"
        with client(gateway) as http:
            for i in range(16):
                sid = http.post("/sessions", json={"name": f"s{i}"}).json()["id"]
                texts = [f"{i}-{j}" for j in range(3)]
                batch = {"messages": [{"role": "user", "content": t} for t in texts]}
                assert http.post(f"/sessions/{sid}/messages", json=batch).status_code == 201
                assert http.put(f"/sessions/{sid}/context", json={"i": i}).status_code == 200
                written[sid] = (texts, {"i": i})
            vectors = [
                {"id": f"v{i}", "values": [1.0, float(i), 2.0], "metadata": {"i": i}} for i in range(20)
            ]
            for namespace in ("facts", "notes"):  # namespaces land on either memory shard
                body = {"namespace": namespace, "vectors": vectors}
                assert http.post("/vectors/upsert", json=body).status_code == 200
        taken = nodes.command("backup", str(dest), "--json")
        assert taken.returncode == 0, taken.stderr
        manifest = orjson.loads(taken.stdout)
        assert sorted((s["kind"], s["index"]) for s in manifest["shards"]) == [
            ("memory", 0),
            ("memory", 1),
            *(("session", i) for i in range(4)),
        ]
    finally:
        gateway.stop()

    done = subprocess.run(
        [sys.executable, "-m", "session_engine", "restore", str(dest), "--data-dir", str(restored)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env({"RAY_ADDRESS": ""}),
    )
    assert done.returncode == 0, done.stderr
    layout = {"SESSION_ENGINE_SHARDS": "4", "SESSION_ENGINE_MEMORY__SHARDS": "2"}
    single = ServerProcess(restored, [], {**nodes.env, **layout}).wait_ready(timeout_s=180)
    try:
        with client(single) as http:
            for sid, (texts, context) in written.items():
                session = http.get(f"/sessions/{sid}").json()
                assert [m["content"] for m in session["messages"]] == texts, sid
                assert [m["seq"] for m in session["messages"]] == [1, 2, 3], sid
                assert session["context"] == context, sid
            for namespace in ("facts", "notes"):
                probe = {"namespace": namespace, "vector": [1.0, 1.0, 2.0], "top_k": 50}
                found = {
                    m["id"]: m["metadata"] for m in http.post("/vectors/query", json=probe).json()["matches"]
                }
                assert found == {f"v{i}": {"i": i} for i in range(20)}, namespace
    finally:
        single.stop()
