"""An operator's cluster, on a real multi-node Ray: gateways that must agree with it, shards that
serve only their own data, node loss and rebalancing under load, drain and stop, and a gateway
that loses Ray. The tests share one cluster and run in order; each leaves it serving."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.server import ServerProcess
from engine.routing import shard_for
from engine.storage.layout import shard_directory
from engine.storage.lock import lock_holder
from tests.crash.fleet import FleetWriter, check_everything_acknowledged_survived

from .conftest import KEY, NODE_ARGS, RayNodes, client, wait_for


@pytest.fixture(scope="module")
def gateway(nodes: RayNodes) -> Iterator[ServerProcess]:
    server = nodes.gateway().wait_ready(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


def actor_exists(nodes: RayNodes, name: str) -> bool:
    """Whether the cluster's namespace has an actor of this name (asked by a driver of its own)."""
    probe = (
        "import ray, sys\n"
        f"ray.init(address={nodes.address!r})\n"
        f"try:\n    ray.get_actor({name!r}, namespace={nodes.env['SESSION_ENGINE_RAY__NAMESPACE']!r})\n"
        "except ValueError:\n    sys.exit(3)\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}
    command = [sys.executable, "-c", probe]
    asked = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert asked.returncode in (0, 3), asked.stderr  # anything else: the probe failed, not an answer
    return asked.returncode == 0


def serve_once(nodes: RayNodes, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}, **nodes.env}
    command = [sys.executable, "-m", "session_engine", "serve", "--port", "0", "--ray-address", nodes.address]
    return subprocess.run(
        [*command, *nodes.config_args, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_shards_spread_over_the_nodes_and_status_shows_each_one(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    status = nodes.status()
    shards = [a for a in status["actors"] if a["role"].endswith("shard")]
    assert len(shards) == 6 and all(a["described"]["state"] == "serving" for a in shards)
    assert all(a["described"]["epoch"] == 1 and a["restarts"] == 0 for a in shards)
    assert len({a["node_id"] for a in shards}) == 2, "SPREAD puts shards on both nodes"
    roles = Counter(a["role"] for a in status["actors"])
    # Two embedders: the query embedder and indexing's own (models.embedder.background_replicas).
    assert roles == {"session shard": 4, "memory shard": 2, "embedder": 2, "summarizer pool": 1} | {
        "summarizer": 1,
        "controller": 1,
    }
    detail = httpx.get(f"{gateway.url}/readyz", params={"detail": "cluster"}, timeout=30).json()
    assert {a["name"] for a in detail["cluster"]["actors"]} == {a["name"] for a in status["actors"]}
    # The gateway's /metrics holds every shard's series, wherever the shard runs.
    scraped = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    for shard in [f"session-{i}" for i in range(4)] + ["memory-0", "memory-1"]:
        assert f'session_engine_shard_state{{shard="{shard}",state="serving"}} 1.0' in scraped, shard
    assert "session_engine_shard_scrape_errors{" not in scraped


def test_a_gateway_with_other_settings_is_refused_and_creates_nothing(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    more = serve_once(nodes, "--shards", "6")
    assert more.returncode == 2
    assert "shards: 6 here vs 4 in the running cluster" in more.stderr and "Traceback" not in more.stderr
    assert actor_exists(nodes, "session-shard-3")  # the probe sees the cluster's own actors
    assert not actor_exists(nodes, "session-shard-4") and not actor_exists(nodes, "session-shard-5")

    elsewhere = nodes.data_dir.with_name("elsewhere")
    other = serve_once(nodes, "--data-dir", str(elsewhere))
    assert other.returncode == 2 and "data_dir" in other.stderr
    assert not elsewhere.exists()
    assert client(gateway).get("/sessions").status_code == 200  # the cluster serves on


def test_a_shard_that_cannot_see_its_data_refuses_and_never_serves_an_empty_state(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    api = client(gateway)
    sid = api.post("/sessions", json={"name": "held"}).json()["id"]
    for i in range(5):
        assert (
            api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": f"m{i}"}).status_code
            == 201
        )
    name = f"session-shard-{shard_for('acme', sid, 4)}"
    (entry,) = [a for a in nodes.status()["actors"] if a["name"] == name]
    away = nodes.data_dir.with_name("data-away")
    nodes.data_dir.rename(away)  # the node it restarts on does not see the shared directory
    try:
        os.kill(entry["pid"], signal.SIGKILL)
        refused = wait_for(
            lambda: (
                (r := api.get(f"/sessions/{sid}")).status_code == 503
                and r.json()["details"].get("refused")
                and r
            ),
            90,
            "the restarted shard to refuse",
        )
        assert "refuses to serve" in refused.json()["error"] and refused.headers["Retry-After"]
        assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 503
        assert not nodes.data_dir.exists(), "the shard created nothing in place of the data directory"
    finally:
        away.rename(nodes.data_dir)
    found = wait_for(
        lambda: (r := api.get(f"/sessions/{sid}")).status_code == 200 and r.json(), 60, "the shard"
    )
    assert [m["content"] for m in found["messages"]] == [f"m{i}" for i in range(5)]


def run_fleet(gateway: ServerProcess, seconds: float) -> list[FleetWriter]:
    writers = [FleetWriter(gateway.url, KEY, f"w{i}", seconds=seconds) for i in range(3)]
    for writer in writers:
        writer.start()
    wait_for(lambda: sum(w.acknowledged_writes() for w in writers) > 60, 60, "the fleet to get going")
    return writers


def test_losing_a_node_under_load_loses_no_acknowledged_write(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    writers = run_fleet(gateway, seconds=40)
    nodes.cluster.remove_node(nodes.workers.pop(), allow_graceful=False)  # its raylet and workers die
    for writer in writers:
        writer.join(90)
    api = client(gateway)
    wait_for(lambda: httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200, 120, "ready again")
    assert check_everything_acknowledged_survived(api, writers) > 0
    assert len(set(nodes.shard_nodes().values())) == 1  # every shard now on the head


def test_rebalance_moves_shards_onto_a_node_that_joined_under_load(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    nodes.workers.append(nodes.cluster.add_node(**NODE_ARGS))
    assert len(set(nodes.shard_nodes().values())) == 1, "a node that joins gets no work by itself"
    writers = run_fleet(gateway, seconds=60)
    moved = nodes.command("rebalance")
    for writer in writers:
        writer.stopped.set()
        writer.join(60)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.count("moving ") == 3, moved.stdout  # 6 shards, 3 to each node
    load = Counter(nodes.shard_nodes().values())
    assert sorted(load.values()) == [3, 3]
    assert check_everything_acknowledged_survived(client(gateway), writers) > 0


def test_when_rebalance_says_a_shard_serves_again_the_gateway_answers_at_once(
    nodes: RayNodes, gateway: ServerProcess
) -> None:
    api = client(gateway)
    on_shard: dict[int, str] = {}
    while len(on_shard) < 4:  # a session on every session shard
        sid = api.post("/sessions", json={"name": "moved"}).json()["id"]
        on_shard.setdefault(shard_for("acme", sid, 4), sid)
    vector = {"namespace": "moved", "vectors": [{"id": "v", "values": [1.0, 0.0, 0.0]}]}
    assert api.post("/vectors/upsert", json=vector).status_code == 200
    nodes.workers.append(nodes.cluster.add_node(**NODE_ARGS))  # a third node: two shards move there
    moved = nodes.command("rebalance")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.count("serves again") == 2, moved.stdout
    # No request reached the gateway during the moves, so its handles to the moved shards are
    # those of the stopped actors: the first request to each finds the new one at once.
    assert api.get("/sessions").status_code == 200  # every session shard
    for sid in on_shard.values():
        assert api.get(f"/sessions/{sid}").status_code == 200
    query = {"namespace": "moved", "vector": [1.0, 0.0, 0.0], "top_k": 1}
    assert api.post("/vectors/query", json=query).status_code == 200  # acme's memory shard
    assert sorted(Counter(nodes.shard_nodes().values()).values()) == [2, 2, 2]


def test_drain_refuses_changes_and_stop_releases_everything(nodes: RayNodes, gateway: ServerProcess) -> None:
    api = client(gateway)
    sid = api.post("/sessions", json={"name": "kept"}).json()["id"]
    assert nodes.command("drain").returncode == 0
    refused = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "no"})
    assert (
        refused.status_code == 503
        and refused.headers["Retry-After"]
        and refused.json()["details"]["draining"]
    )
    assert refused.json()["details"]["state"] == "draining" and "drain --undo" in refused.json()["hint"]
    assert api.get(f"/sessions/{sid}").status_code == 200  # reads go on
    name = f"session-shard-{shard_for('acme', sid, 4)}"
    (entry,) = [a for a in nodes.status()["actors"] if a["name"] == name]
    os.kill(entry["pid"], signal.SIGKILL)  # a shard restarted during a drain stays drained
    before = entry["described"]["epoch"]

    def drained_again() -> bool:
        found = nodes.described(name)
        return bool(found.get("epoch", 0) > before and found.get("state") == "draining")

    wait_for(drained_again, 90, "the restarted shard, drained")
    again = api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "no"})
    assert again.status_code == 503
    assert again.json()["details"]["draining"]
    assert nodes.command("drain", "--undo").returncode == 0
    assert api.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "yes"}).status_code == 201

    stopped = nodes.command("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert all(lock_holder(shard_directory(nodes.data_dir, i)) is None for i in range(4))
    after = nodes.command("status")
    assert after.returncode == 2 and "no cluster runs" in after.stderr
    assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 503
    gone = api.get(f"/sessions/{sid}")  # what a client of a gateway left running is told
    assert gone.status_code == 503 and gone.json()["details"]["state"] == "stopped"
    assert "session-engine stop" in gone.json()["hint"] and "moving" not in gone.json()["hint"]
    gateway.stop()

    again = nodes.gateway().wait_ready(timeout_s=180)  # the first gateway of a new start
    try:
        found = client(again).get(f"/sessions/{sid}").json()
        assert [m["content"] for m in found["messages"]] == ["yes"]
    finally:
        again.stop()


def listening_after(port: int, timeout_s: float) -> bool:
    """Whether something still accepts connections on the port once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            return False
        if time.monotonic() > deadline:
            subprocess.run(["ss", "-ltnp", f"sport = :{port}"], check=False)  # who, in the test's output
            return True
        time.sleep(0.1)


def test_a_gateway_that_loses_ray_stops_and_leaves_no_listener(nodes: RayNodes) -> None:
    server = nodes.gateway("--workers", "2").wait_ready(timeout_s=180)
    try:
        nodes.cluster.remove_node(nodes.cluster.head_node, allow_graceful=False)  # the control store dies
        started = time.monotonic()
        code = server.proc.wait(120)
        assert code != 0 and time.monotonic() - started < 120
        assert "lost the Ray cluster" in server.output()
        # No orphaned worker keeps the port: the workers get SIGTERM as `serve` dies (PDEATHSIG)
        # and close their listening socket as their shutdown begins, a moment after it.
        assert not listening_after(server.port, timeout_s=10.0)
    finally:
        server.stop()
        for worker in nodes.workers:
            nodes.cluster.remove_node(worker, allow_graceful=False)
        nodes.workers.clear()
        shutil.rmtree(nodes.data_dir, ignore_errors=True)
