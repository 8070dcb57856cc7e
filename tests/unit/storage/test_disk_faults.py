"""A disk that refuses writes (full, read-only, a file size limit, failing syncs), injected under the
write-ahead log: the shard turns read-only, answers changes with UNAVAILABLE and reads as before,
takes changes again once the disk does, and never acknowledges or keeps a change that is not on disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import LogWriteFailed, Unavailable
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams, normalized
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.sessions import durable as durable_module
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession, GetSession, ListSessions
from engine.sessions.session import NewMessage, new_session_id
from engine.storage import wal
from engine.storage.frames import read_frames
from engine.storage.wal import WAL_MAGIC, read_log, segments

FULL = OSError(errno.ENOSPC, "No space left on device")
TOO_LARGE = OSError(errno.EFBIG, "File too large")
READ_ONLY = OSError(errno.EROFS, "Read-only file system")
FAILING = OSError(errno.EIO, "Input/output error")


class FaultyDisk:
    """Stands in for `os` inside engine.storage.wal. The calls named in `errors` raise; a failing
    write first puts `partial_write` bytes on disk, as one cut short by a filling disk does."""

    def __init__(self) -> None:
        self.errors: dict[str, OSError] = {}
        self.partial_write = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if "write" not in self.errors:
            return os.write(fd, data)
        if self.partial_write:
            written, self.partial_write = os.write(fd, bytes(data[: self.partial_write])), 0
            return written
        raise self.errors["write"]

    def fsync(self, fd: int) -> None:
        if "fsync" in self.errors:
            raise self.errors["fsync"]
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        if "ftruncate" in self.errors:
            raise self.errors["ftruncate"]
        os.ftruncate(fd, length)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
    faulty = FaultyDisk()
    monkeypatch.setattr(wal, "os", faulty)
    return faulty


def open_shard(path: Path, config: DurabilityConfig | None = None) -> DurableSessions:
    return DurableSessions(path, config or DurabilityConfig(), ManualClock(), lock_wait_s=0.2)


def say(sid: str, *texts: str) -> AppendMessages:
    return AppendMessages("acme", sid, tuple(NewMessage("user", t) for t in texts))


def contents(shard: DurableSessions, sid: str) -> list[str]:
    (view,) = shard.commit([GetSession("acme", sid)])
    assert [m["seq"] for m in view["messages"]] == list(range(1, len(view["messages"]) + 1))
    return [m["content"] for m in view["messages"]]


def started(path: Path, *texts: str) -> tuple[DurableSessions, str]:
    shard, sid = open_shard(path), new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 600, {}), say(sid, *texts)])
    return shard, sid


def assert_log_intact(directory: Path) -> None:
    """Every segment whole (no torn tail, nothing damaged) and the records consecutive."""
    for _, path in segments(directory):
        list(read_frames(path, WAL_MAGIC))  # no `torn` list: any partial record raises
    lsns = [record.lsn for record in read_log(directory, after_lsn=0)]
    assert lsns == list(range(lsns[0], lsns[0] + len(lsns))) if lsns else True


def test_a_full_disk_turns_the_shard_read_only_and_reads_go_on(tmp_path: Path, disk: FaultyDisk) -> None:
    shard, sid = started(tmp_path, "one", "two")
    disk.errors["write"] = FULL
    refused, read = shard.commit([say(sid, "three"), GetSession("acme", sid)])
    assert refused is read, "the batch whose write failed is refused whole; its read saw its change"
    assert isinstance(refused, Unavailable) and refused.code == "UNAVAILABLE"
    assert "No space left on device" in str(refused) and tmp_path.name in str(refused)
    assert "Idempotency-Key" in refused.hint and refused.details["read_only"] is True
    assert shard.read_only
    assert contents(shard, sid) == ["one", "two"], "rebuilt from disk: the refused change is gone"
    (listing,) = shard.commit([ListSessions("acme", 10)])
    assert [view["id"] for _, view in listing["items"]] == [sid]
    other = new_session_id()
    assert all(
        isinstance(r, Unavailable)
        for r in shard.commit([CreateSession("acme", other, "s", 600, {}), say(sid, "four")])
    )
    assert not shard.resume_writes(), "the disk still refuses"
    shard.close()  # no snapshot while read-only: the disk refuses it


def test_writes_resume_once_the_disk_takes_them_and_nothing_refused_comes_back(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    shard, sid = started(tmp_path, "one")
    disk.errors["write"] = TOO_LARGE
    assert isinstance(shard.commit([say(sid, "refused")])[0], Unavailable)
    assert not shard.resume_writes()
    disk.errors.clear()
    assert shard.resume_writes() and not shard.read_only
    (stored,) = shard.commit([say(sid, "two")])
    assert [m["seq"] for m in stored] == [2]
    shard.close(snapshot=False)
    assert_log_intact(tmp_path)
    assert contents(open_shard(tmp_path), sid) == ["one", "two"]


def test_a_write_cut_short_on_a_disk_that_refuses_even_truncation_is_never_read_back(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    shard, sid = started(tmp_path, "one")
    [(_, segment)] = segments(tmp_path)
    size = segment.stat().st_size
    disk.errors |= {"write": FULL, "ftruncate": READ_ONLY}
    disk.partial_write = 7
    assert isinstance(shard.commit([say(sid, "torn")])[0], Unavailable)
    assert segment.stat().st_size == size + 7, "the torn bytes stay while the disk refuses everything"
    assert contents(shard, sid) == ["one"], "the rebuild neither reads nor needs to cut them"
    disk.errors.pop("write")
    assert not shard.resume_writes(), "not before the torn bytes can be cut"
    disk.errors.clear()
    assert shard.resume_writes()
    shard.commit([say(sid, "two")])
    shard.close(snapshot=False)
    assert_log_intact(tmp_path)
    assert contents(open_shard(tmp_path), sid) == ["one", "two"]


def test_a_record_written_whole_whose_sync_failed_is_not_kept(tmp_path: Path, disk: FaultyDisk) -> None:
    shard, sid = started(tmp_path, "one")
    disk.errors |= {"fsync": FAILING, "ftruncate": READ_ONLY}
    assert isinstance(shard.commit([say(sid, "unsynced")])[0], Unavailable)
    assert b"unsynced" in b"".join(p.read_bytes() for _, p in segments(tmp_path)), "in the file, whole"
    assert contents(shard, sid) == ["one"], "but never acknowledged, so not in the rebuilt state"
    disk.errors.clear()
    assert shard.resume_writes()
    shard.commit([say(sid, "two")])
    shard.close(snapshot=False)
    assert b"unsynced" not in b"".join(p.read_bytes() for _, p in segments(tmp_path))
    assert_log_intact(tmp_path)
    assert contents(open_shard(tmp_path), sid) == ["one", "two"]


def test_with_fsync_everysec_a_failed_sync_keeps_what_was_acknowledged(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    shard, sid = open_shard(tmp_path, DurabilityConfig(fsync="everysec")), new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 600, {}), say(sid, "one")])  # answered, not synced
    disk.errors["fsync"] = FAILING
    shard.sync()
    assert shard.read_only
    assert contents(shard, sid) == ["one"]
    assert isinstance(shard.commit([say(sid, "refused")])[0], Unavailable)
    disk.errors.clear()
    assert shard.resume_writes()
    shard.commit([say(sid, "two")])
    shard.close(snapshot=False)
    assert contents(open_shard(tmp_path), sid) == ["one", "two"]


def test_a_snapshot_under_way_when_the_log_fails_completes_with_the_acknowledged_state(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    shard = open_shard(tmp_path, DurabilityConfig(snapshot_chunk_sessions=1))
    sids = [new_session_id() for _ in range(3)]
    for sid in sids:
        shard.commit([CreateSession("acme", sid, "s", 600, {}), say(sid, sid)])
    shard.begin_snapshot()
    assert shard.snapshot_step()
    disk.errors["write"] = FULL
    assert isinstance(shard.commit([say(sids[2], "refused")])[0], Unavailable)
    disk.errors.clear()
    while shard.snapshot_step():
        pass
    shard.finish_snapshot_io()
    shard.complete_snapshot()
    assert shard.resume_writes()
    shard.commit([say(sids[0], "after")])
    shard.close(snapshot=False)
    assert_log_intact(tmp_path)
    reopened = open_shard(tmp_path)
    assert reopened.recovery.snapshot_lsn == 3
    assert [contents(reopened, sid) for sid in sids] == [[sids[0], "after"], [sids[1]], [sids[2]]]


def test_a_failed_segment_rotation_leaves_no_stray_segment_and_the_log_goes_on(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    shard, sid = started(tmp_path, "one")
    before = segments(tmp_path)
    disk.errors["write"] = FULL
    with pytest.raises(OSError, match="No space left"):
        shard.begin_snapshot()  # a new segment cannot get its header
    assert segments(tmp_path) == before
    disk.errors.clear()
    refused = shard.commit([say(sid, "refused")])[0]  # the log is closed since: read-only now
    assert isinstance(refused, Unavailable) and "No space left" in str(refused)
    assert shard.resume_writes()
    shard.commit([say(sid, "two")])
    shard.snapshot_now()
    shard.commit([say(sid, "three")])
    shard.close(snapshot=False)
    assert_log_intact(tmp_path)
    assert contents(open_shard(tmp_path), sid) == ["one", "two", "three"]


def test_a_shard_that_cannot_rebuild_itself_raises_so_its_host_restarts_it(
    tmp_path: Path, disk: FaultyDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard, sid = started(tmp_path, "one")

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise FAILING

    monkeypatch.setattr(durable_module, "recover", unreadable)
    disk.errors["write"] = FULL
    with pytest.raises(LogWriteFailed, match="cannot rebuild"):
        shard.commit([say(sid, "two")])


PARAMS = IndexParams(approximate_above=20, background=False)


def upsert(ids: list[str], seed: int) -> UpsertVectors:
    vectors = normalized(np.random.default_rng(seed).standard_normal((len(ids), 4)).astype(np.float32))
    return UpsertVectors("acme", "n", tuple(ids), vectors, tuple({"id": i} for i in ids))


def stored_ids(memory: DurableMemory) -> set[str]:
    probe = QueryVectors("acme", "n", normalized(np.ones((1, 4), dtype=np.float32))[0], 100)
    (matches,) = memory.commit([probe])
    return {m.id for m in matches}


def test_a_memory_shard_refuses_upserts_and_answers_queries_until_its_disk_is_back(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    memory = DurableMemory(tmp_path, DurabilityConfig(), PARAMS, lock_wait_s=0.2)
    memory.commit([upsert(["a", "b"], 1)])
    disk.errors["write"] = TOO_LARGE
    (refused,) = memory.commit([upsert(["c"], 2)])
    assert isinstance(refused, Unavailable) and "File too large" in str(refused) and memory.read_only
    assert stored_ids(memory) == {"a", "b"}
    assert not memory.resume_writes()
    disk.errors.clear()
    assert memory.resume_writes()
    memory.commit([upsert(["d"], 3)])
    memory.close(snapshot=False)
    assert_log_intact(tmp_path)
    assert stored_ids(DurableMemory(tmp_path, DurabilityConfig(), PARAMS, lock_wait_s=0.2)) == {"a", "b", "d"}


@pytest.mark.parametrize("error", [FULL, READ_ONLY], ids=["full", "read-only"])
def test_a_shard_started_on_a_disk_that_refuses_writes_starts_read_only(
    tmp_path: Path, disk: FaultyDisk, error: OSError
) -> None:
    shard, sid = started(tmp_path, "one")
    shard.close(snapshot=False)
    disk.errors["write"] = error  # the new log segment of a start cannot be written
    restarted = open_shard(tmp_path)
    assert restarted.read_only and restarted.condition["read_only"] == error.strerror
    assert contents(restarted, sid) == ["one"], "reads are served"
    (refused,) = restarted.commit([say(sid, "two")])
    assert isinstance(refused, Unavailable) and error.strerror in str(refused)
    assert not restarted.resume_writes() and not restarted.snapshot_due()
    disk.errors.clear()
    assert restarted.resume_writes() and not restarted.read_only and "read_only" not in restarted.condition
    restarted.commit([say(sid, "two")])
    restarted.close()
    assert_log_intact(tmp_path)
    assert contents(open_shard(tmp_path), sid) == ["one", "two"]


def test_a_memory_shard_started_on_a_full_disk_answers_queries(tmp_path: Path, disk: FaultyDisk) -> None:
    memory = DurableMemory(tmp_path, DurabilityConfig(), PARAMS, lock_wait_s=0.2)
    memory.commit([upsert(["a"], 1)])
    memory.close(snapshot=False)
    disk.errors["write"] = FULL
    restarted = DurableMemory(tmp_path, DurabilityConfig(), PARAMS, lock_wait_s=0.2)
    assert restarted.read_only and stored_ids(restarted) == {"a"}
    assert isinstance(restarted.commit([upsert(["b"], 2)])[0], Unavailable)
    disk.errors.clear()
    assert restarted.resume_writes()
    restarted.commit([upsert(["b"], 2)])
    restarted.close()
    assert stored_ids(DurableMemory(tmp_path, DurabilityConfig(), PARAMS, lock_wait_s=0.2)) == {"a", "b"}
