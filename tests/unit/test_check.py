"""`session-engine check DATA_DIR`: what a start would use, cut, quarantine or refuse, without
changing a byte; and `serve` on a disk it cannot write answers with one line."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.check import CLEAN, check_directory
from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import CorruptFile
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import UpsertVectors
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.frames import HEADER, read_frames
from engine.storage.identity import NotThisShardsData, ShardIdentity, write_identity
from engine.storage.layout import claim_layout, memory_directory, shard_directory
from engine.storage.snapshot import snapshots
from engine.storage.wal import WAL_MAGIC, segments
from session_engine import cli, serve


def everything(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def data_dir(tmp_path: Path) -> Path:
    """Two session shards (one with a snapshot and log after it) and a memory shard."""
    for index in range(2):
        shard = DurableSessions(
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
    running = DurableSessions(shard_directory(root, 0), DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
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


# -- `check` and a real start agree ----------------------------------------------------------------


def session_history(directory: Path) -> None:
    """Snapshots at records 3 and 5 (the newest and the one before it) and segments wal-4 (records
    4-5: only the older snapshot needs it), wal-6 (6-7) and wal-8 (8-9, the last)."""
    shard = DurableSessions(directory, DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
    sid = new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 60, {})])
    for text in ("1", "2", "snapshot", "3", "4", "snapshot", "5", "6", "rotate", "7", "8"):
        if text == "snapshot":
            shard.snapshot_now()
        elif text == "rotate":  # a snapshot that never finished: the log rotated, nothing else
            shard.begin_snapshot()
            shard.abandon_snapshot()
        else:
            shard.commit([AppendMessages("acme", sid, (NewMessage("user", text),))])
    shard.close(snapshot=False)
    assert [lsn for lsn, _ in snapshots(directory, SNAPSHOT_PREFIX)] == [3, 5]
    assert [lsn for lsn, _ in segments(directory)] == [4, 6, 8]


def memory_history(directory: Path) -> None:
    """The same shape for a memory shard: snapshots at 1 and 2, segments wal-2 and wal-3 (3-4)."""
    memory = DurableMemory(directory, DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    for i in range(4):
        memory.commit([UpsertVectors("acme", "n", (f"v{i}",), np.ones((1, 2), dtype=np.float32), ({},))])
        if i < 2:
            memory.snapshot_now()
    memory.close(snapshot=False)
    assert [lsn for lsn, _ in segments(directory)] == [2, 3]


def segment(directory: Path, first_lsn: int) -> Path:
    return dict(segments(directory))[first_lsn]


def flip(path: Path, offset: int, bits: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bits
    path.write_bytes(bytes(data))


def record_at(path: Path, index: int) -> tuple[int, int]:
    """(offset, payload length) of a log segment's record `index` (-1: the last)."""
    offset, payload = list(read_frames(path, WAL_MAGIC))[index]
    return offset, len(payload)


def flip_in_payload(path: Path, index: int) -> None:
    offset, length = record_at(path, index)
    flip(path, offset + HEADER.size + length // 2)


def newest_snapshot(directory: Path) -> Path:
    return max(directory.glob("*.snap"))


def damage_case(case: str, directory: Path) -> None:
    if case == "a segment only the older snapshot needs":
        flip_in_payload(segment(directory, 4), 0)
    elif case == "a segment the newest snapshot needs":
        flip_in_payload(segment(directory, 6), -1)  # its last record, but not the log's
    elif case == "the newest snapshot, with an older one intact":
        flip(newest_snapshot(directory), newest_snapshot(directory).stat().st_size // 2)
    elif case == "the newest snapshot and a segment the older one needs":
        flip(newest_snapshot(directory), newest_snapshot(directory).stat().st_size // 2)
        flip_in_payload(segment(directory, 4), 0)
    elif case == "a torn tail":
        last = segment(directory, 8)
        os.truncate(last, last.stat().st_size - 3)
    elif case == "a bit flip in the last record":
        flip_in_payload(segment(directory, 8), -1)
    elif case == "a bit flip in the last record's length":
        offset, _ = record_at(segment(directory, 8), -1)
        flip(segment(directory, 8), offset + 2, 0x40)  # the length now runs far past the file's end
    elif case == "a bit flip mid-log":
        flip_in_payload(segment(directory, 8), 0)
    elif case == "memory: a segment only the older snapshot needs":
        flip_in_payload(segment(directory, 2), 0)
    elif case == "memory: a bit flip in the last record":
        flip_in_payload(segment(directory, 3), -1)
    else:
        assert case == "nothing", case


AGREEMENT = [
    ("nothing", "clean"),
    ("a segment only the older snapshot needs", "clean"),
    ("a segment the newest snapshot needs", "refused"),
    ("the newest snapshot, with an older one intact", "repairs"),
    ("the newest snapshot and a segment the older one needs", "refused"),
    ("a torn tail", "repairs"),
    ("a bit flip in the last record", "repairs"),
    ("a bit flip in the last record's length", "repairs"),
    ("a bit flip mid-log", "refused"),
    ("memory: a segment only the older snapshot needs", "clean"),
    ("memory: a bit flip in the last record", "repairs"),
]


def start(directory: Path, kind: str) -> tuple[str, dict[str, Any]]:
    """What a real start does with the directory: its verdict, and what it recovered."""
    shard: DurableSessions | DurableMemory
    try:
        if kind == "session shard":
            shard = DurableSessions(directory, DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
            size = f"{len(shard.store)} sessions"
        else:
            shard = DurableMemory(directory, DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
            held = shard.recovery.held
            size = f"{held['namespaces']} namespaces, {held['vectors']} vectors"
    except CorruptFile as exc:
        return "refused", {"refused": str(exc)}
    shard.close(snapshot=False)
    notes = shard.recovery.notes
    verdict = "repairs" if notes["damaged_snapshots"] or notes["cut_tails"] else "clean"
    return verdict, {
        "snapshot_lsn": shard.recovery.snapshot_lsn,
        "records_replayed": shard.recovery.records_replayed,
        "size": size,
        "notes": notes,
    }


def within(found: dict[str, Any], directory: Path) -> dict[str, Any]:
    """`found` with the directory's path left out of every message, to compare two copies."""
    return dict(orjson.loads(orjson.dumps(found).replace(str(directory).encode(), b"<dir>")))


def without_repairs(notes: dict[str, Any]) -> dict[str, Any]:
    """Recovery's notes less the names of what a start set aside or quarantined (check makes none)."""
    return {
        "damaged_snapshots": [{**d, "set_aside": None} for d in notes["damaged_snapshots"]],
        "cut_tails": [{**c, "quarantine": None} for c in notes["cut_tails"]],
    }


@pytest.mark.parametrize(("case", "expected"), AGREEMENT, ids=[case for case, _ in AGREEMENT])
def test_check_and_a_real_start_reach_the_same_verdict_on_the_same_damage(
    tmp_path: Path, case: str, expected: str
) -> None:
    kind = "memory shard" if case.startswith("memory:") else "session shard"
    original = tmp_path / "original"
    (memory_history if kind == "memory shard" else session_history)(original)
    damage_case(case, original)
    checked, started = tmp_path / "checked", tmp_path / "started"
    shutil.copytree(original, checked)
    shutil.copytree(original, started)

    report = within(check_directory(checked, kind).as_dict(), checked)
    verdict, found = start(started, kind)
    found = within(found, started)
    assert (report["verdict"], verdict) == (expected, expected), report["refused"] or found
    assert everything(checked) == everything(original), "check changes nothing"
    if verdict == "refused":
        assert report["refused"] == found["refused"], "the same file, offset and reason"
        return
    assert {k: report[k] for k in ("snapshot_lsn", "records_replayed", "size")} == {
        k: found[k] for k in ("snapshot_lsn", "records_replayed", "size")
    }
    assert report["notes"] == without_repairs(found["notes"])
    # What a start repaired checks clean afterwards.
    assert check_directory(started, kind).verdict == CLEAN


def test_a_cut_record_that_was_whole_is_reported_as_possibly_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record cut short by a crash was never acknowledged (fsync always); a whole record whose
    bytes no longer match may have been, and check and the start's notes say which."""
    for case, whole in (
        ("a torn tail", False),
        ("a bit flip in the last record", True),
        ("a bit flip in the last record's length", True),
    ):
        directory = shard_directory(tmp_path / case.replace(" ", "-").replace("'", ""), 0)
        session_history(directory)
        damage_case(case, directory)
        assert cli.main(["check", str(directory.parent.parent)]) == 3
        out = capsys.readouterr().out
        assert ("it may have been acknowledged" in out) == whole, out
        _, found = start(directory, "session shard")
        (cut,) = found["notes"]["cut_tails"]
        assert cut["may_have_been_acknowledged"] == whole, cut


def test_check_refuses_a_directory_that_names_another_shard_as_a_start_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard restored into the wrong place (shard 0's files as shard 1): a start refuses it, so
    check does too, though both name the same cluster."""
    cluster = claim_layout(tmp_path, 2, 1)
    root = data_dir(tmp_path)
    write_identity(shard_directory(root, 1), ShardIdentity(cluster, "session", 0))
    assert cli.main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "'index': 0" in out
    with pytest.raises(NotThisShardsData):
        DurableSessions(
            shard_directory(root, 1),
            DurabilityConfig(),
            lock_wait_s=0.2,
            identity=ShardIdentity(cluster, "session", 1),
        )
