"""Real processes, killed for real: every acknowledged write must be there afterwards."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import ray

from benchmarks.server import ServerProcess, joined_server
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.lock import DirectoryLock
from engine.storage.snapshot import snapshots
from engine.storage.wal import read_log

from .fleet import FleetWriter, check_everything_acknowledged_survived

KEY = "crash-key"
ENV = {"SESSION_ENGINE_API_KEYS": f"{KEY}=crash", "RAY_ADDRESS": ""}


def test_sigkill_of_the_whole_server_mid_load_loses_no_acknowledged_write(tmp_data: Path) -> None:
    server = ServerProcess(tmp_data, [], ENV).wait_ready()
    writers = [FleetWriter(server.url, KEY, f"w{i}", seconds=20) for i in range(4)]
    try:
        for w in writers:
            w.start()
        # Kill mid-load once the load has acknowledged enough to matter (bounded: a slow machine
        # gets up to 15 s), not after a fixed time that a busy CI machine may not fill.
        deadline = time.monotonic() + 15
        while sum(w.acknowledged_writes() for w in writers) < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.kill_session()
        server.stop()
    for w in writers:
        w.join(30)
    acknowledged = sum(w.acknowledged_writes() for w in writers)
    assert acknowledged > 100, "the load ran long enough to matter"

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            assert check_everything_acknowledged_survived(client, writers) == sum(
                len(w.sessions) for w in writers
            )
    finally:
        restarted.stop()


def test_a_shard_killed_alone_answers_503_then_recovers_everything(tmp_data: Path, ray_address: str) -> None:
    server = joined_server(tmp_data, ray_address, {"SESSION_ENGINE_API_KEYS": f"{KEY}=crash"})
    namespace = server.env["SESSION_ENGINE_RAY__NAMESPACE"]
    writers = [FleetWriter(server.url, KEY, f"w{i}", seconds=8) for i in range(3)]
    try:
        for w in writers:
            w.start()
        time.sleep(2)
        ray.kill(ray.get_actor("session-shard-0", namespace=namespace), no_restart=False)
        for w in writers:
            w.join(30)
        errors = [s for w in writers for s in w.statuses if s >= 400]
        assert 503 in errors, "requests reaching the dead shard were told it is unavailable"
        assert set(errors) == {503}, f"no other failure while the shard restarted: {sorted(set(errors))}"
        for w in writers:
            for body in w.error_bodies:
                assert body["code"] == "UNAVAILABLE" and body["hint"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the shard came back"
            time.sleep(0.2)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            assert check_everything_acknowledged_survived(client, writers) > 0
    finally:
        server.stop()


def test_sigterm_drains_snapshots_every_shard_and_exits_zero(tmp_data: Path) -> None:
    server = ServerProcess(tmp_data, [], ENV).wait_ready()
    writers = [FleetWriter(server.url, KEY, "w", seconds=2)]
    writers[0].run()
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(120) == 0, server.output()
    server.stop()
    shard_dirs = sorted((tmp_data / "shards").iterdir())
    assert len(shard_dirs) == 2
    for shard in shard_dirs:
        (lsn, _), *older = snapshots(shard, SNAPSHOT_PREFIX)
        assert not older, f"{shard.name}: exactly one snapshot, the final one"
        assert list(read_log(shard, after_lsn=lsn)) == [], f"{shard.name}: nothing logged after it"
        DirectoryLock(shard, wait_s=0.5).release()  # the stopped shard let go of its directory
    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            assert check_everything_acknowledged_survived(client, writers) == len(writers[0].sessions)
    finally:
        restarted.stop()
