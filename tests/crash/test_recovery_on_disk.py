"""Recovery against real servers and a real small disk: a restart on a full disk starts read-only
and takes writes once there is room; a damaged snapshot and a damaged log tail are passed over and
quarantined, damage in a log segment the newest snapshot covers stops nothing, `check` says so
first, and /readyz shows it; the HTTP edge of `serve`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.server import ServerProcess
from engine.routing import shard_for
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.frames import HEADER
from engine.storage.layout import shard_directory
from engine.storage.snapshot import snapshots
from engine.storage.wal import segments

KEY = "disk-key"
ENV = {"SESSION_ENGINE_API_KEYS": f"{KEY}=disk", "RAY_ADDRESS": ""}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of the test's own, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the disk is full, in smaller and smaller pieces; returns the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def sessions_with_messages(client: httpx.Client, count: int) -> dict[str, list[str]]:
    made = {}
    for i in range(count):
        sid = client.post("/sessions", json={"name": f"s{i}"}).json()["id"]
        texts = [f"{i}-{j}" for j in range(3)]
        for text in texts:
            assert (
                client.post(f"/sessions/{sid}/messages", json={"role": "user", "content": text}).status_code
                == 201
            )
        made[sid] = texts
    return made


def assert_all_there(client: httpx.Client, made: dict[str, list[str]]) -> None:
    for sid, texts in made.items():
        assert [m["content"] for m in client.get(f"/sessions/{sid}").json()["messages"]] == texts


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_restart_on_a_disk_that_refuses_writes_serves_reads_and_takes_writes_once_it_can(
    small_disk: Path, disk: str
) -> None:
    data = small_disk  # the server log goes beside it, off the small disk
    server = ServerProcess(data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            made = sessions_with_messages(client, 4)
    finally:
        assert server.stop() == 0
    filler = fill(small_disk) if disk == "full" else None
    if disk == "read-only":
        remount(small_disk, "ro")

    restarted = ServerProcess(data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers=AUTH, timeout=30) as client:
            assert_all_there(client, made)
            # A full disk may still take a small write into a block it already holds; a write that
            # needs a new block is refused. A read-only one refuses from the start.
            sid = next(iter(made))
            big = {"role": "user", "content": "x" * 200_000}
            refused = None
            for _ in range(50):
                answer = client.post(f"/sessions/{sid}/messages", json=big)
                if answer.status_code == 503:
                    refused = answer.json()
                    break
                assert answer.status_code == 201, answer.text
                made[sid].append(big["content"])
            assert (
                refused is not None and refused["code"] == "UNAVAILABLE" and refused["details"]["read_only"]
            )
            ready = httpx.get(f"{restarted.url}/readyz").json()
            assert ready["status"] == "degraded" and any("read_only" in n for n in ready["notices"])
            assert_all_there(client, made)
            if filler is not None:
                filler.unlink()
            else:
                remount(small_disk, "rw")
            deadline = time.monotonic() + 15
            while (created := client.post("/sessions", json={"name": "room"})).status_code != 201:
                assert created.status_code == 503 and time.monotonic() < deadline, created.text
                time.sleep(0.3)
            assert_all_there(client, made)
    finally:
        assert restarted.stop() == 0, restarted.output()
    assert "Traceback" not in restarted.output()


def test_a_damaged_snapshot_and_log_tail_are_passed_over_quarantined_and_reported(tmp_data: Path) -> None:
    """And a damaged segment that only the older snapshot needs is not read: check and the start
    both go on with the newest snapshot."""
    made: dict[str, list[str]] = {}
    for _ in range(2):  # two runs: two snapshots per shard, the newest and the one before it
        server = ServerProcess(tmp_data, [], ENV).wait_ready()
        try:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
                run = sessions_with_messages(client, 6)
                while {shard_for("disk", sid, 2) for sid in run} != {0, 1}:  # each shard gets writes
                    run |= sessions_with_messages(client, 1)
                made |= run
        finally:
            assert server.stop() == 0
    shard0, shard1 = shard_directory(tmp_data, 0), shard_directory(tmp_data, 1)
    _, (_, newest) = snapshots(shard0, SNAPSHOT_PREFIX)
    newest.write_bytes(newest.read_bytes()[:-30] + b"\xee" * 30)  # its trailer is damaged
    _, last_segment = segments(shard1)[-1]
    bad = HEADER.pack(5, 0) + b"hello"  # a whole record whose checksum does not match
    with last_segment.open("ab") as f:
        f.write(bad)
    # The first run's snapshot needs this segment (the second run's records), the newest does not.
    (_, older), (newest_lsn, _) = snapshots(shard1, SNAPSHOT_PREFIX)
    (first, covered), (after, _) = segments(shard1)
    assert older.name.endswith(f"{first - 1:020d}.snap") and after == newest_lsn + 1
    data = bytearray(covered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    covered.write_bytes(bytes(data))

    check = subprocess.run(
        [sys.executable, "-m", "session_engine", "check", str(tmp_data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 3, check.stdout + check.stderr
    assert f"damaged snapshot {newest.name} passed over" in check.stdout
    assert f"off {last_segment.name}" in check.stdout and "checksum mismatch" in check.stdout
    assert "it may have been acknowledged" in check.stdout  # whole, so possibly a lost acknowledged write
    assert covered.name not in check.stdout

    env = {**ENV, "SESSION_ENGINE_HTTP__MAX_HEADERS": "20", "SESSION_ENGINE_HTTP__READ_TIMEOUT_S": "1"}
    server = ServerProcess(tmp_data, [], env).wait_ready()
    try:
        notices = {n["shard"]: n["recovery"] for n in httpx.get(f"{server.url}/readyz").json()["notices"]}
        assert notices["session-0"]["damaged_snapshots"][0]["set_aside"] == newest.name + ".damaged"
        (cut,) = notices["session-1"]["cut_tails"]
        assert cut["reason"] == "checksum mismatch" and cut["bytes"] == len(bad)
        assert cut["may_have_been_acknowledged"] is True
        assert (shard1 / cut["quarantine"]).read_bytes() == bad
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            assert_all_there(client, made)
            # The HTTP edge of `serve`: its settings are in force.
            many = client.get("/sessions", headers={f"x-h{i}": "v" for i in range(30)})
            assert many.status_code == 431 and many.json()["code"] == "VALIDATION_ERROR"
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=15) as slow:
            slow.sendall(b"GET /sessions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            answer = b""
            while chunk := slow.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        assert server.stop() == 0
    again = subprocess.run(
        [sys.executable, "-m", "session_engine", "check", str(tmp_data)], capture_output=True, check=False
    )
    assert again.returncode == 0, again.stdout


def test_a_first_start_on_a_full_disk_says_so_in_one_line(small_disk: Path) -> None:
    """No keys anywhere, so serve must write one first: on a full disk it cannot."""
    fill(small_disk)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "session_engine",
            "serve",
            "--data-dir",
            str(small_disk / "data"),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert started.returncode == 2, started.stderr
    assert started.stderr.count("\n") == 1 and "No space left on device" in started.stderr
    assert "Traceback" not in started.stderr + started.stdout
