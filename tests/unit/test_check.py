"""`session-engine check DATA_DIR`: what a start would use, cut, quarantine or refuse, without
changing a byte; and `serve` on a disk it cannot write answers with one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.store import UpsertVectors
from engine.sessions.durable import DurableShard
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.identity import ShardIdentity, write_identity
from engine.storage.layout import claim_layout, memory_directory, shard_directory
from engine.storage.snapshot import snapshots
from engine.storage.wal import segments
from session_engine import cli, serve


def everything(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def data_dir(tmp_path: Path) -> Path:
    """Two session shards (one with a snapshot and log after it) and a memory shard."""
    for index in range(2):
        shard = DurableShard(
            shard_directory(tmp_path, index), DurabilityConfig(), ManualClock(), lock_wait_s=0.2
        )
        sid = new_session_id()
        shard.commit([CreateSession("acme", sid, "s", 60, {"pad": "x" * 100})])
        shard.snapshot_now()
        shard.commit([AppendMessages("acme", sid, (NewMessage("user", "hi"),))])
        shard.close(snapshot=False)
    memory = DurableMemory(memory_directory(tmp_path, 0), DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    memory.commit([UpsertVectors("acme", "n", ("a",), np.ones((1, 2), dtype=np.float32), ({},))])
    memory.close(snapshot=False)
    return tmp_path


def test_a_consistent_data_directory_checks_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir(tmp_path)
    assert cli.main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok: ") == 3 and "1 sessions" in out and "1 namespaces, 1 vectors" in out


def test_check_reports_what_a_start_would_pass_over_and_cut_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = data_dir(tmp_path)
    shard0 = shard_directory(root, 0)
    (_, snap), *_ = snapshots(shard0, SNAPSHOT_PREFIX)
    snap.write_bytes(snap.read_bytes()[:-20] + b"\xff" * 20)  # the snapshot's trailer is damaged
    _, last = segments(shard_directory(root, 1))[-1]
    data = bytearray(last.read_bytes())
    data[-2] ^= 0xFF
    last.write_bytes(bytes(data))
    before = everything(root)
    assert cli.main(["check", str(root)]) == 3
    out = capsys.readouterr().out
    assert f"would damaged snapshot {snap.name} passed over" in out
    assert "would cut " in out and f"off {last.name}" in out and "checksum mismatch" in out
    assert everything(root) == before, "check changes nothing"
    assert cli.main(["check", str(root), "--json"]) == 3
    reports = orjson.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in reports] == ["repairs", "repairs", "clean"]


def test_check_says_when_a_start_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir(tmp_path)
    directory = shard_directory(root, 0)
    for _, snap in snapshots(directory, SNAPSHOT_PREFIX):
        snap.write_bytes(b"garbage")
    segments(directory)[0][1].unlink()  # and the log from its start is gone
    assert cli.main(["check", str(root)]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_serve_on_a_disk_it_cannot_write_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serve, "claim_layout", full)
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err


def test_check_says_a_directory_is_in_use_and_leaves_its_lock_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = data_dir(tmp_path)
    running = DurableShard(shard_directory(root, 0), DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
    try:
        lock = (shard_directory(root, 0) / "LOCK").read_bytes()
        assert cli.main(["check", str(root)]) == 0
        assert f"in use by a running engine (pid {os.getpid()})" in capsys.readouterr().out
        assert (shard_directory(root, 0) / "LOCK").read_bytes() == lock
    finally:
        running.close(snapshot=False)


def test_check_names_each_directory_s_cluster_and_epoch_and_refuses_another_cluster_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = claim_layout(tmp_path, 2, 1)
    root = data_dir(tmp_path)  # each shard started once: epoch 1
    assert cli.main(["check", str(root)]) == 0
    assert capsys.readouterr().out.count(f"cluster {cluster}, epoch 1") == 3
    write_identity(shard_directory(root, 1), ShardIdentity("cl_another", "session", 1))
    assert cli.main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "cl_another" in out
