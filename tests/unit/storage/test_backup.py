"""Online backup, incremental backup, log archiving and point-in-time restore over real shard
directories (DurableSessions and DurableMemory in this process), driven by the same code the CLI
runs: engine.backup.take with each shard reached in-process instead of through Ray."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.backup import restore as restoring
from engine.backup import take as taking
from engine.backup.manifest import MANIFEST, BackupRefused, read_manifest
from engine.backup.take import take_backup
from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams, normalized
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.storage import backup as storage_backup
from engine.storage.archive import archived_segments
from engine.storage.backup import STAGING_PREFIX, ShardBackups
from engine.storage.frames import frame
from engine.storage.identity import ShardIdentity
from engine.storage.layout import claim_layout, memory_directory, read_layout, shard_directory
from engine.storage.wal import encode_record, segments

ORG = "acme"
DIM = 8
ALL_SHARDS: list[LocalShard] = []  # of the test running now (a read may sweep every shard's backups)


@dataclass
class LocalShard:
    """A shard as engine.backup.take reaches it, in this process (the runtime does it through Ray)."""

    kind: str
    index: int
    directory: str
    durable: Any
    backups: ShardBackups | None = None
    after_begin: Callable[[], None] | None = None  # runs once the shard is cut, before the copy
    slow_s: float = 0.0  # each read of bytes takes this long
    idle_s: float | None = None  # each read drops the backups of every shard unread this long

    def __post_init__(self) -> None:
        self.backups = ShardBackups(self.durable.directory, self.durable.SNAPSHOT_PREFIX)
        ALL_SHARDS.append(self)

    async def begin(self, backup_id: str, since_lsn: int | None, since_crc: int | None) -> dict[str, Any]:
        assert self.backups is not None
        lsn, sealed_before, end, last_record = self.durable.backup_point()
        now = self.durable._clock.now_ms()
        staged = self.backups.begin(
            backup_id, lsn, sealed_before, end, last_record, since_lsn, since_crc, now
        )
        staged.resolve()
        if self.after_begin is not None:
            self.after_begin()
        return {
            "kind": self.kind,
            "index": self.index,
            "cluster_id": self.durable._identity.cluster_id,
            **staged.describe(),
        }

    async def read(self, backup_id: str, piece: int, offset: int, size: int) -> bytes:
        assert self.backups is not None
        if self.idle_s is not None:
            for shard in ALL_SHARDS:
                assert shard.backups is not None
                shard.backups.sweep(self.idle_s)
        staged = self.backups.get(backup_id)
        if not size:
            return b""
        await asyncio.sleep(self.slow_s)
        return staged.pieces[piece].read(offset, size)

    async def end(self, backup_id: str) -> None:
        assert self.backups is not None
        self.backups.end(backup_id)


class Cluster:
    """One session shard and one memory shard on a data directory, with a clock the test moves."""

    def __init__(self, data_dir: Path, config: DurabilityConfig) -> None:
        self.data_dir = data_dir
        self.clock = ManualClock(1_700_000_000_000)
        cluster_id = claim_layout(data_dir, 1, 1)
        self.cluster_id = cluster_id
        self.sessions = DurableSessions(
            shard_directory(data_dir, 0),
            config,
            self.clock,
            lock_wait_s=0.2,
            identity=ShardIdentity(cluster_id, "session", 0),
        )
        self.memory = DurableMemory(
            memory_directory(data_dir, 0),
            config,
            IndexParams(),
            self.clock,
            lock_wait_s=0.2,
            identity=ShardIdentity(cluster_id, "memory", 0),
        )
        self.shards = [
            LocalShard("session", 0, "shards/shard-0000", self.sessions),
            LocalShard("memory", 0, "memory/memory-0000", self.memory),
        ]

    def create(self) -> str:
        sid = new_session_id()
        (created,) = self.sessions.commit([CreateSession(ORG, sid, "s", 3600, {"k": sid})])
        assert not isinstance(created, Exception), created
        return sid

    def say(self, sid: str, text: str) -> None:
        self.clock.advance(1000)
        (result,) = self.sessions.commit([AppendMessages(ORG, sid, (NewMessage("user", text),))])
        assert not isinstance(result, Exception), result

    def vector(self, vid: str, seed: int) -> None:
        rows = normalized(np.random.default_rng(seed).standard_normal((1, DIM)).astype(np.float32))
        (result,) = self.memory.commit([UpsertVectors(ORG, "notes", (vid,), rows, ({"v": vid},))])
        assert not isinstance(result, Exception), result

    def backup(self, dest: Path, previous: Path | None = None) -> Any:
        self.clock.advance(1)  # a cut vouches for what was logged before its millisecond
        return asyncio.run(
            take_backup(dest, self.shards, {"shards": 1, "memory_shards": 1}, previous=previous)
        )

    def archive_tick(self) -> None:
        """What each shard's archive timer does (engine.runtime.hosted): seal a segment that holds
        records, copy what is sealed, or record that nothing was logged since."""
        self.clock.advance(1)  # a seal or a beat vouches for what was logged before its millisecond
        for durable in (self.sessions, self.memory):
            idle = durable.seal_for_archive()
            durable.archive_sealed()
            if idle is not None:
                durable.archive_heartbeat(*idle)

    def close(self) -> None:
        self.sessions.close(snapshot=False)
        self.memory.close(snapshot=False)


def sessions_of(data_dir: Path, cluster_id: str | None = None) -> dict[str, Any]:
    shard = DurableSessions(shard_directory(data_dir, 0), DurabilityConfig(), lock_wait_s=0.2)
    try:
        return {key[1]: encode_session(s) for key, s in shard.store._sessions.items()}
    finally:
        shard.close(snapshot=False)


def vector_ids(data_dir: Path) -> list[str]:
    memory = DurableMemory(memory_directory(data_dir, 0), DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    try:
        probe = normalized(np.ones((1, DIM), dtype=np.float32))[0]
        (found,) = memory.commit([QueryVectors(ORG, "notes", probe, 100)])
        return sorted(m.id for m in found)
    finally:
        memory.close(snapshot=False)


@pytest.fixture(autouse=True)
def _forget_shards() -> Any:
    yield
    ALL_SHARDS.clear()


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    config = DurabilityConfig(archive_dir=tmp_path / "archive")
    made = Cluster(tmp_path / "data", config)
    yield made
    made.close()


def test_writes_and_snapshots_after_the_cut_do_not_reach_the_backup(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    for i in range(5):
        cluster.say(sid, f"before the snapshot {i}")
    cluster.vector("v1", 1)
    cluster.sessions.snapshot_now()
    cluster.say(sid, "after the snapshot")
    at_cut = sessions_of_live(cluster)

    def meanwhile() -> None:
        # Between the cut and the copy: more writes, and snapshots that delete the files it pinned.
        cluster.say(sid, "after the cut")
        cluster.vector("v2", 2)
        for _ in range(2):
            cluster.sessions.snapshot_now()
            cluster.memory.snapshot_now()

    cluster.shards[1].after_begin = meanwhile
    taken = cluster.backup(tmp_path / "b")
    assert not list(cluster.sessions.directory.glob(f"{STAGING_PREFIX}*"))  # unpinned at the end
    manifest = read_manifest(tmp_path / "b")
    assert manifest.backup_id == taken.manifest.backup_id
    assert {s.directory for s in manifest.shards} == {"shards/shard-0000", "memory/memory-0000"}
    assert restoring.verify(tmp_path / "b").shards

    done = restoring.restore(tmp_path / "b", tmp_path / "r")
    assert done.cluster_id != cluster.cluster_id  # a new history: never archived over the old one
    layout = read_layout(tmp_path / "r")
    assert layout is not None and layout["restored_from"]["backup_id"] == manifest.backup_id
    assert sessions_of(tmp_path / "r") == at_cut
    assert vector_ids(tmp_path / "r") == ["v1"]


def sessions_of_live(cluster: Cluster) -> dict[str, Any]:
    return {key[1]: encode_session(s) for key, s in cluster.sessions.store._sessions.items()}


def test_restore_equals_the_state_the_backup_cut(cluster: Cluster, tmp_path: Path) -> None:
    sids = [cluster.create() for _ in range(3)]
    for i in range(20):
        cluster.say(sids[i % 3], f"message {i}")
        if i == 10:
            cluster.sessions.snapshot_now()
    cluster.vector("a", 1)
    cluster.vector("b", 2)
    at_backup = sessions_of_live(cluster)
    cluster.backup(tmp_path / "b")
    cluster.say(sids[0], "later")
    restoring.restore(tmp_path / "b", tmp_path / "r")
    assert sessions_of(tmp_path / "r") == at_backup
    assert vector_ids(tmp_path / "r") == ["a", "b"]


def test_an_incremental_backup_holds_only_what_is_new_and_restores_the_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    sid = cluster.create()
    for i in range(30):
        cluster.say(sid, f"m{i}")
    full = cluster.backup(tmp_path / "full")
    for i in range(3):
        cluster.say(sid, f"n{i}")
    cluster.vector("late", 3)
    at_second = sessions_of_live(cluster)
    second = cluster.backup(tmp_path / "inc1", previous=tmp_path / "full")
    entry = second.manifest.shard("session", 0)
    assert entry is not None and entry.snapshot_lsn is None  # log records only
    assert entry.from_lsn == full.manifest.shard("session", 0).lsn + 1
    assert second.bytes < full.bytes
    # A third, after snapshots dropped the segments the second one ended in, takes a snapshot again.
    cluster.say(sid, "x")
    cluster.sessions.snapshot_now()
    cluster.say(sid, "y")
    cluster.sessions.snapshot_now()
    cluster.say(sid, "z")
    at_third = sessions_of_live(cluster)
    third = cluster.backup(tmp_path / "inc2", previous=tmp_path / "inc1")
    assert third.manifest.shard("session", 0).snapshot_lsn is not None

    restoring.restore(tmp_path / "inc1", tmp_path / "r1")
    assert sessions_of(tmp_path / "r1") == at_second
    assert vector_ids(tmp_path / "r1") == ["late"]
    restoring.restore(tmp_path / "inc2", tmp_path / "r2")
    assert sessions_of(tmp_path / "r2") == at_third


def test_the_archive_restores_to_a_moment_between_two_writes(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.say(sid, "in the backup")
    cluster.backup(tmp_path / "b")
    cluster.say(sid, "first")
    moment = cluster.clock.now_ms()
    cluster.say(sid, "second")
    cluster.clock.advance(1000)
    cluster.archive_tick()  # seals the segment holding both (archived), and the idle memory shard's beat
    archive = tmp_path / "archive"
    assert archived_segments(archive, cluster.cluster_id, Path("shards/shard-0000"))

    restoring.restore(tmp_path / "b", tmp_path / "pitr", archive=archive, until_ms=moment)
    texts = _texts(tmp_path / "pitr", sid)
    assert "first" in texts and "second" not in texts
    restoring.restore(tmp_path / "b", tmp_path / "latest", archive=archive)
    assert "second" in _texts(tmp_path / "latest", sid)


def _texts(data_dir: Path, sid: str) -> list[str]:
    shard = DurableSessions(shard_directory(data_dir, 0), DurabilityConfig(), lock_wait_s=0.2)
    try:
        return [m.content for m in shard.store._sessions[(ORG, sid)].messages]
    finally:
        shard.close(snapshot=False)


def test_a_segment_is_not_deleted_before_it_is_archived(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    cluster = Cluster(tmp_path / "data", DurabilityConfig(archive_dir=archive))
    try:
        sid = cluster.create()
        cluster.say(sid, "one")
        blocker = archive / cluster.cluster_id / "shards"
        blocker.parent.mkdir(parents=True)
        blocker.write_text("not a folder")  # the archive refuses the shard's segments (even to root)
        for _ in range(3):
            cluster.say(sid, "more")
            cluster.sessions.snapshot_now()
        kept = segments(cluster.sessions.directory)
        assert len(kept) >= 4  # nothing dropped that the archive lacks
        assert cluster.sessions.disk_status()["unarchived_segments"] >= 3  # and status shows it
        blocker.unlink()
        cluster.say(sid, "again")
        cluster.sessions.snapshot_now()
        cluster.sessions.snapshot_now()
        archived = archived_segments(archive, cluster.cluster_id, Path("shards/shard-0000"))
        assert [a.first for a in archived][:1] == [1]
        assert cluster.sessions.disk_status()["unarchived_segments"] == 0
    finally:
        cluster.close()


def test_refusals_change_nothing(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.say(sid, "x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("mine")
    with pytest.raises(BackupRefused, match="not empty"):
        cluster.backup(busy)
    assert [p.name for p in busy.iterdir()] == ["something"]

    cluster.backup(tmp_path / "b")
    with pytest.raises(BackupRefused, match="not empty"):
        restoring.restore(tmp_path / "b", busy)

    # A damaged file: verify and restore say so in one line; the target is not left behind.
    entry = read_manifest(tmp_path / "b").shard("session", 0)
    assert entry is not None
    victim = tmp_path / "b" / entry.directory / entry.files[-1].name
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BackupRefused, match="damaged"):
        restoring.verify(tmp_path / "b")
    with pytest.raises(BackupRefused, match="damaged"):
        restoring.restore(tmp_path / "b", tmp_path / "r")
    assert not (tmp_path / "r").exists()

    # An archive of another cluster.
    other = tmp_path / "other-archive"
    (other / "cl_someone_else").mkdir(parents=True)
    cluster.backup(tmp_path / "b2")
    with pytest.raises(BackupRefused, match="no log of cluster"):
        restoring.restore(tmp_path / "b2", tmp_path / "r", archive=other)
    assert not (tmp_path / "r").exists()
    assert (tmp_path / "b2" / MANIFEST).is_file()


def test_a_gap_in_the_archive_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.backup(tmp_path / "b")
    for i in range(4):
        cluster.say(sid, f"m{i}")
        cluster.sessions.snapshot_now()
    archive = tmp_path / "archive"
    found = archived_segments(archive, cluster.cluster_id, Path("shards/shard-0000"))
    assert len(found) >= 3
    found[1].path.unlink()
    with pytest.raises(BackupRefused, match="gap"):
        restoring.restore(tmp_path / "b", tmp_path / "r", archive=archive)
    assert not (tmp_path / "r").exists()


def test_an_incremental_backup_and_the_archive_overlap_without_a_gap(
    cluster: Cluster, tmp_path: Path
) -> None:
    # The archive's whole segment holds the records of the full backup's cut copy, the incremental's
    # piece that begins mid-segment, and the records after it: each is taken once, in order.
    sid = cluster.create()
    cluster.say(sid, "a")
    cluster.backup(tmp_path / "full")
    cluster.say(sid, "b")
    cluster.backup(tmp_path / "inc", previous=tmp_path / "full")
    cluster.say(sid, "c")
    cluster.sessions.snapshot_now()  # seals the one segment that holds a, b and c
    cluster.say(sid, "d")
    cluster.sessions.snapshot_now()
    # Without the memory shard's heartbeat its log is complete only to the incremental backup's
    # cut, so "the latest moment" is that one: every shard comes back as of one moment.
    restoring.restore(tmp_path / "inc", tmp_path / "early", archive=tmp_path / "archive")
    assert _texts(tmp_path / "early", sid) == ["a", "b"]
    cluster.clock.advance(1000)
    cluster.archive_tick()
    expected = [m.content for m in cluster.sessions.store._sessions[(ORG, sid)].messages]
    restoring.restore(tmp_path / "inc", tmp_path / "r", archive=tmp_path / "archive")
    assert _texts(tmp_path / "r", sid) == expected == ["a", "b", "c", "d"]


def test_a_chain_of_backups_moved_together_still_restores(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.say(sid, "a")
    cluster.backup(tmp_path / "made" / "full")
    cluster.say(sid, "b")
    cluster.backup(tmp_path / "made" / "inc", previous=tmp_path / "made" / "full")
    (tmp_path / "made").rename(tmp_path / "moved")
    restoring.restore(tmp_path / "moved" / "inc", tmp_path / "r")
    assert _texts(tmp_path / "r", sid) == ["a", "b"]


def test_an_incremental_backup_of_another_history_takes_the_snapshot_again(tmp_path: Path) -> None:
    # The data directory is put back to an older copy (same cluster), and the record at the
    # previous backup's watermark is now a different one: the records after it are not a
    # continuation, so the incremental backup holds a snapshot and log of its own.
    data = tmp_path / "data"
    cluster = Cluster(data, DurabilityConfig())
    sid = cluster.create()
    cluster.say(sid, "kept")
    cluster.close()
    shutil.copytree(data, tmp_path / "copy")
    cluster = Cluster(data, DurabilityConfig())
    cluster.say(sid, "lost with the disk")
    cluster.backup(tmp_path / "full")
    cluster.close()
    shutil.rmtree(data)
    (tmp_path / "copy").rename(data)
    cluster = Cluster(data, DurabilityConfig())
    try:
        cluster.say(sid, "the new history")
        inc = cluster.backup(tmp_path / "inc", previous=tmp_path / "full")
        assert inc.manifest.shard("session", 0).snapshot_lsn is not None
        restoring.restore(tmp_path / "inc", tmp_path / "r")
        assert _texts(tmp_path / "r", sid) == ["kept", "the new history"]
    finally:
        cluster.close()


def _append_stale_record(segment: Path, lsn: int, now_ms: int) -> None:
    """What a fenced incarnation leaves: a record past where the next segment begins."""
    with segment.open("ab") as f:
        f.write(frame(encode_record(lsn, now_ms, [])))


def test_a_fenced_incarnations_tail_reaches_neither_a_backup_nor_the_archive(
    cluster: Cluster, tmp_path: Path
) -> None:
    sid = cluster.create()
    cluster.say(sid, "one")
    cluster.archive_tick()  # seals the segment: the current one begins after it
    sealed, current = segments(cluster.sessions.directory)[-2:]
    _append_stale_record(sealed[1], current[0], cluster.clock.now_ms())
    cluster.backup(tmp_path / "b")
    entry = read_manifest(tmp_path / "b").shard("session", 0)
    assert entry is not None and all((f.last_lsn or 0) <= entry.lsn for f in entry.files if f.kind == "log")
    cluster.say(sid, "two")  # record current[0]: the acknowledged one of that number
    cluster.archive_tick()
    archived = archived_segments(tmp_path / "archive", cluster.cluster_id, Path("shards/shard-0000"))
    assert [a.last for a in archived if a.first == sealed[0]] == [current[0] - 1]
    cluster.clock.advance(1000)
    cluster.archive_tick()
    restoring.restore(tmp_path / "b", tmp_path / "r", archive=tmp_path / "archive")
    assert _texts(tmp_path / "r", sid) == ["one", "two"]


def test_the_archive_never_overwrites_another_history_under_the_same_name(
    cluster: Cluster, tmp_path: Path
) -> None:
    sid = cluster.create()
    cluster.say(sid, "one")
    cluster.archive_tick()
    first_name = segments(cluster.sessions.directory)[0][1].name
    archived = tmp_path / "archive" / cluster.cluster_id / "shards" / "shard-0000" / first_name
    before = archived.read_bytes()
    # Another history's segment of the same name: a fresh inode with other bytes.
    local = cluster.sessions.directory / first_name
    content = bytearray(local.read_bytes())
    local.unlink()
    content[-1] ^= 0xFF
    local.write_bytes(bytes(content))
    os.utime(local, ns=(1, 1))  # another file's times, however fast this test runs
    cluster.sessions.archive_sealed()
    assert archived.read_bytes() == before
    assert cluster.sessions.disk_status()["unarchived_segments"] >= 1
    cluster.say(sid, "two")
    cluster.sessions.snapshot_now()
    cluster.sessions.snapshot_now()
    assert local.exists()  # kept: the archive does not hold it


def test_until_past_where_a_shards_log_ends_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.backup(tmp_path / "b")
    cluster.say(sid, "x")
    cluster.archive_tick()
    complete = cluster.clock.now_ms() - 1
    with pytest.raises(BackupRefused, match="complete only up to"):
        restoring.restore(
            tmp_path / "b", tmp_path / "r", archive=tmp_path / "archive", until_ms=complete + 60_000
        )
    assert not (tmp_path / "r").exists()
    restoring.restore(tmp_path / "b", tmp_path / "r", archive=tmp_path / "archive", until_ms=complete)
    assert _texts(tmp_path / "r", sid) == ["x"]


def test_a_snapshot_damaged_before_its_backup_is_refused_in_one_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    sid = cluster.create()
    cluster.say(sid, "x")
    cluster.sessions.snapshot_now()
    cluster.backup(tmp_path / "b")
    manifest_path = tmp_path / "b" / MANIFEST
    found = orjson.loads(manifest_path.read_bytes())
    shard = next(s for s in found["shards"] if s["kind"] == "session")
    entry = next(f for f in shard["files"] if f["kind"] == "snapshot")
    path = tmp_path / "b" / shard["directory"] / entry["name"]
    # A header that reads back (its checksum matches) but is not a snapshot's, and a manifest
    # that agrees with the bytes: damage that happened on the shard, before the backup.
    magic = path.read_bytes()[:8]
    rest = path.read_bytes()[8:]
    length = int.from_bytes(rest[:4], "little")
    content = magic + frame(b'{"format":1}') + rest[8 + length :]
    path.write_bytes(content)
    entry["bytes"], entry["sha256"] = len(content), hashlib.sha256(content).hexdigest()
    manifest_path.write_bytes(orjson.dumps(found))
    with pytest.raises(BackupRefused, match="damaged"):
        restoring.verify(tmp_path / "b")
    with pytest.raises(BackupRefused, match="damaged"):
        restoring.restore(tmp_path / "b", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_backup_that_lacks_a_shard_of_its_layout_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create()
    cluster.backup(tmp_path / "b")
    manifest_path = tmp_path / "b" / MANIFEST
    found = orjson.loads(manifest_path.read_bytes())
    found["shards"] = [s for s in found["shards"] if s["kind"] == "session"]
    manifest_path.write_bytes(orjson.dumps(found))
    with pytest.raises(BackupRefused, match="memory shard 0"):
        restoring.restore(tmp_path / "b", tmp_path / "r")


def test_shards_waiting_for_their_turn_are_kept_from_lapsing(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One piece at a time, slowly, and a shard drops a backup unread for a moment: without the
    # keep-alive, the memory shard's staged files would lapse before its turn.
    monkeypatch.setattr(taking, "COPIES_AT_ONCE", 1)
    monkeypatch.setattr(taking, "KEEP_ALIVE_S", 0.02)
    sid = cluster.create()
    for i in range(3):
        cluster.say(sid, f"m{i}")
        cluster.sessions.snapshot_now()
    cluster.vector("v", 1)  # the memory shard has pieces too, copied after the session shard's
    cluster.memory.snapshot_now()
    for shard in cluster.shards:
        shard.slow_s, shard.idle_s = 0.1, 0.08
    taken = cluster.backup(tmp_path / "b")
    assert taken.manifest.shard("memory", 0).files  # the memory shard's turn came, and was read
    assert restoring.verify(tmp_path / "b").shards


def test_a_graceful_stop_leaves_the_archive_complete_to_the_stop(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cluster = Cluster(tmp_path / "data", DurabilityConfig(archive_dir=archive))
    sid = cluster.create()
    cluster.backup(tmp_path / "b")
    cluster.say(sid, "before the stop")
    cluster.clock.advance(1000)
    stopped_at = cluster.clock.now_ms()
    cluster.sessions.close(snapshot=True)
    cluster.memory.close(snapshot=True)  # idle: its heartbeat says nothing was logged up to the stop
    done = restoring.restore(tmp_path / "b", tmp_path / "r", archive=archive)
    assert done.until_ms is not None and done.until_ms >= stopped_at - 1
    assert _texts(tmp_path / "r", sid) == ["before the stop"]


def test_another_history_archived_beside_the_first_is_refused_not_spliced(tmp_path: Path) -> None:
    # A copy of the data directory (same cluster) runs beside the original, both archiving: the
    # archive ends up holding segments of two histories, and a restore refuses to mix them.
    archive = tmp_path / "archive"
    config = DurabilityConfig(archive_dir=archive)
    cluster = Cluster(tmp_path / "data", config)
    sid = cluster.create()
    cluster.say(sid, "base")
    cluster.backup(tmp_path / "b")
    cluster.close()
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    histories = {
        tmp_path / "data": [["A0", "A1", "A2"], ["A3", "A4"]],
        tmp_path / "copy": [["B0"], ["B1", "B2", "B3", "B4", "B5"]],
    }
    for data, runs in histories.items():
        again = Cluster(data, config)
        again.clock = cluster.clock
        again.sessions._clock = again.memory._clock = cluster.clock
        again.archive_tick()
        for run in runs:
            for text in run:
                again.say(sid, text)
            again.archive_tick()
        again.close()
    with pytest.raises(BackupRefused, match="another history"):
        restoring.restore(tmp_path / "b", tmp_path / "r", archive=archive)
    assert not (tmp_path / "r").exists()


def test_the_cut_reads_no_record_headers_of_the_segment_being_written(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = cluster.create()
    for i in range(20):
        cluster.say(sid, f"m{i}")
    walked: list[Path] = []
    real = storage_backup.frame_headers

    def counting(path: Path, start: int, end: int) -> Any:
        walked.append(path)
        return real(path, start, end)

    monkeypatch.setattr(storage_backup, "frame_headers", counting)
    taken = cluster.backup(tmp_path / "b")
    assert walked == []
    assert taken.manifest.shard("session", 0).lsn_crc is not None
    restoring.restore(tmp_path / "b", tmp_path / "r")
    assert _texts(tmp_path / "r", sid) == [f"m{i}" for i in range(20)]


def test_a_backup_does_not_make_archived_segments_look_unarchived(cluster: Cluster, tmp_path: Path) -> None:
    sid = cluster.create()
    cluster.say(sid, "one")
    cluster.archive_tick()
    cluster.say(sid, "two")
    cluster.archive_tick()
    assert cluster.sessions.disk_status()["unarchived_segments"] == 0
    cluster.backup(tmp_path / "b")  # links and unlinks each segment: its change time moves
    assert cluster.sessions.disk_status()["unarchived_segments"] == 0


def test_a_pace_that_is_not_a_positive_rate_is_refused_before_any_shard_is_cut(
    cluster: Cluster, tmp_path: Path
) -> None:
    for rate in (0.0, -1.0, float("nan")):
        with pytest.raises(BackupRefused, match="pace"):
            asyncio.run(taking.take_backup(tmp_path / "b", cluster.shards, {}, max_bytes_s=rate))
        assert not (tmp_path / "b").exists()
