from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import ConfigError, CorruptFile, DirectoryLocked, Unavailable
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    GetSession,
    ReplaceContext,
    UpdateSession,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.layout import claim_layout
from engine.storage.snapshot import snapshots
from engine.storage.wal import WAL_MAGIC, segments
from tests.support.snapshots import snapshot_action

CHUNKY = DurabilityConfig(snapshot_chunk_sessions=2, snapshot_chunk_messages=3)  # steps end either way


def state(shard: DurableSessions) -> dict[tuple[str, str], list[Any]]:
    return {key: encode_session(s) for key, s in shard.store._sessions.items()}


def open_shard(path: Path, clock: ManualClock, config: DurabilityConfig = CHUNKY) -> DurableSessions:
    return DurableSessions(path, config, clock, lock_wait_s=0.2)


def session_op(kind: str, sid: str, arg: Any) -> Any:
    if kind == "say":
        return AppendMessages("acme", sid, tuple(NewMessage("user", f"{sid}-{i}") for i in range(arg)))
    if kind == "context":
        return ReplaceContext("acme", sid, {"n": arg}, None)
    if kind == "ttl":
        return UpdateSession("acme", sid, ttl_s=arg)
    if kind == "end":
        return EndSession("acme", sid, arg)
    return DeleteSession("acme", sid)


ENDINGS = [SessionStatus.CLOSED, SessionStatus.COMPLETED]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 4)),
        st.tuples(st.just("say"), st.integers(0, 9), st.integers(1, 3)),
        st.tuples(st.just("context"), st.integers(0, 9), st.integers(0, 3)),
        st.tuples(st.just("ttl"), st.integers(0, 9), st.integers(1, 5)),
        st.tuples(st.just("end"), st.integers(0, 9), st.sampled_from(ENDINGS)),
        st.tuples(st.just("delete"), st.integers(0, 9)),
        st.tuples(st.just("tick"), st.integers(0, 2500)),
        st.tuples(st.just("snapshot-begin")),
        st.tuples(st.just("snapshot-step")),
        st.tuples(st.just("snapshot-finish")),
        st.tuples(st.just("restart")),
    ),
    max_size=50,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_state_rebuilt_from_snapshot_and_log_equals_the_live_state(
    tmp_path_factory: Any, script: list[tuple]
) -> None:
    path = tmp_path_factory.mktemp("shard")
    clock = ManualClock()
    shard = open_shard(path, clock)
    ids: list[str] = []
    for step in script:
        kind = step[0]
        sid = ids[step[1] % len(ids)] if ids and len(step) > 1 and kind not in ("create", "tick") else None
        if kind == "create":
            ids.append(new_session_id())
            shard.commit([CreateSession("acme", ids[-1], "s", step[1], {})])
        elif kind == "tick":
            clock.advance(step[1])
            shard.commit([ExpireDue()])
        elif kind.startswith("snapshot-"):
            snapshot_action(shard, kind)
        elif kind == "restart":
            before = state(shard)
            shard.close(snapshot=False)
            shard = open_shard(path, clock)
            assert state(shard) == before
        elif sid is not None:
            op = session_op(kind, sid, step[2] if len(step) > 2 else None)
            # A batch of two: the second sees the first's effect, as on the live path.
            shard.commit([op, GetSession("acme", sid)])
    live = state(shard)
    shard.close(snapshot=False)
    assert state(open_shard(path, clock)) == live


def test_a_graceful_close_leaves_one_snapshot_and_an_empty_log(tmp_path: Path) -> None:
    clock = ManualClock()
    shard = open_shard(tmp_path, clock)
    sid = new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 60, {"k": 1})])
    shard.commit([AppendMessages("acme", sid, (NewMessage("user", "hi"),))])
    shard.close()
    assert [lsn for lsn, _ in snapshots(tmp_path, SNAPSHOT_PREFIX)] == [2]
    reopened = open_shard(tmp_path, clock)
    assert (reopened.recovery.snapshot_lsn, reopened.recovery.records_replayed) == (2, 0)
    assert reopened.store.apply(GetSession("acme", sid), clock.now_ms())["messages"][0]["content"] == "hi"


def test_a_snapshot_keeps_the_one_before_it_and_drops_the_log_older_than_that(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock())
    for _ in range(3):
        shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.snapshot_now()  # the first: the log from record 1 stays, the fallback should it break
    assert [first for first, _ in segments(tmp_path)] == [1, 4]
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.snapshot_now()
    assert [lsn for lsn, _ in snapshots(tmp_path, SNAPSHOT_PREFIX)] == [3, 4]
    assert [first for first, _ in segments(tmp_path)] == [4, 5]
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.snapshot_now()
    assert [lsn for lsn, _ in snapshots(tmp_path, SNAPSHOT_PREFIX)] == [4, 5]
    assert [first for first, _ in segments(tmp_path)] == [5, 6]
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.close(snapshot=False)
    assert open_shard(tmp_path, ManualClock()).recovery.records_replayed == 1


def test_sessions_whose_deadline_passed_while_down_come_back_expired(tmp_path: Path) -> None:
    clock = ManualClock()
    shard = open_shard(tmp_path, clock)
    short, long_ = new_session_id(), new_session_id()
    shard.commit([CreateSession("acme", short, "s", 5, {}), CreateSession("acme", long_, "s", 500, {})])
    shard.close()
    clock.advance(60_000)
    shard = open_shard(tmp_path, clock)
    assert shard.store.apply(GetSession("acme", short), clock.now_ms())["status"] == "expired"
    shard.commit([ExpireDue()])  # what the shard's timer does first thing
    shard.close(snapshot=False)
    again = open_shard(tmp_path, clock)
    assert again.store._sessions[("acme", short)].status is SessionStatus.EXPIRED
    assert again.store._sessions[("acme", long_)].status is SessionStatus.ACTIVE


def test_a_second_process_cannot_open_a_locked_shard(tmp_path: Path) -> None:
    first = open_shard(tmp_path, ManualClock())
    with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
        open_shard(tmp_path, ManualClock())
    first.close()
    open_shard(tmp_path, ManualClock()).close()


def test_fsync_always_syncs_every_batch_and_everysec_only_when_asked(
    tmp_path: Path, monkeypatch: Any
) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    for policy, per_batch in (("always", 1), ("everysec", 0), ("never", 0)):
        shard = open_shard(tmp_path / policy, ManualClock(), DurabilityConfig(fsync=policy))
        calls.clear()
        for _ in range(5):
            shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
        assert len(calls) == 5 * per_batch, policy
        shard.commit([GetSession("acme", new_session_id())])  # reads log nothing
        assert len(calls) == 5 * per_batch
        calls.clear()
        shard.sync()
        assert len(calls) == (0 if policy == "always" else 1)
        shard.close(snapshot=False)


def test_a_failed_log_write_makes_the_shard_read_only_and_the_change_is_never_acknowledged(
    tmp_path: Path, monkeypatch: Any
) -> None:
    shard = open_shard(tmp_path, ManualClock())
    sid = new_session_id()

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    (refused,) = shard.commit([CreateSession("acme", sid, "s", 60, {})])
    assert isinstance(refused, Unavailable) and "No space left" in str(refused) and shard.read_only
    monkeypatch.undo()  # more in tests/unit/storage/test_disk_faults.py
    shard.close(snapshot=False)
    assert ("acme", sid) not in open_shard(tmp_path, ManualClock()).store._sessions


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_snapshot_falls_back_to_the_one_before_it_and_the_log(tmp_path: Path) -> None:
    clock = ManualClock()
    shard = open_shard(tmp_path, clock)
    ids = [new_session_id() for _ in range(3)]
    for sid in ids:
        shard.commit([CreateSession("acme", sid, "s", 60, {"pad": "x" * 200})])
        shard.snapshot_now()
    shard.commit([AppendMessages("acme", ids[0], (NewMessage("user", "after"),))])
    live = state(shard)
    shard.close(snapshot=False)
    (_, previous), (_, newest) = snapshots(tmp_path, SNAPSHOT_PREFIX)
    damage(newest)
    recovered = open_shard(tmp_path, clock)
    assert state(recovered) == live
    assert recovered.recovery.snapshot_lsn == int(previous.name.split("-")[1].split(".")[0])
    (note,) = recovered.recovery.notes["damaged_snapshots"]
    assert note["file"] == newest.name and note["set_aside"] == newest.name + ".damaged"
    assert (tmp_path / note["set_aside"]).exists() and not newest.exists()
    assert recovered.condition["recovery"]["damaged_snapshots"] == [note]
    recovered.close()


def test_with_every_snapshot_damaged_the_log_from_its_start_rebuilds_the_state(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock())
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {"pad": "x" * 200})])
    shard.snapshot_now()  # the first snapshot keeps the log from record 1
    live = state(shard)
    shard.close(snapshot=False)
    (_, only), *_ = snapshots(tmp_path, SNAPSHOT_PREFIX)
    damage(only)
    recovered = open_shard(tmp_path, ManualClock())
    assert state(recovered) == live and recovered.recovery.snapshot_lsn == 0
    recovered.close()


def test_a_damaged_snapshot_with_no_consistent_state_behind_it_is_refused(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock())
    for _ in range(2):
        shard.commit([CreateSession("acme", new_session_id(), "s", 60, {"pad": "x" * 200})])
        shard.snapshot_now()
    shard.close()
    older, newest = snapshots(tmp_path, SNAPSHOT_PREFIX)[-2:]
    damage(newest[1])
    damage(older[1])  # and the log before the older one is gone
    with pytest.raises(CorruptFile, match=newest[1].name):
        open_shard(tmp_path, ManualClock())
    assert newest[1].exists(), "a refused start sets nothing aside"


def test_a_missing_stretch_of_log_is_refused(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock())
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.snapshot_now()
    shard.commit([CreateSession("acme", new_session_id(), "s", 60, {})])
    shard.close(snapshot=False)
    for _, path in snapshots(tmp_path, SNAPSHOT_PREFIX):
        path.unlink()
    segments(tmp_path)[0][1].unlink()  # the log now starts at record 2 with nothing before it
    with pytest.raises(CorruptFile, match="resumes at record 2"):
        open_shard(tmp_path, ManualClock())


def test_a_whole_record_with_a_bad_checksum_at_the_tail_is_cut_into_quarantine(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock())
    sid = new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 60, {})])
    shard.commit([AppendMessages("acme", sid, (NewMessage("user", "lost to a bad sector"),))])
    shard.close(snapshot=False)
    (_, segment), *_ = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # inside the last record's payload: whole, but its checksum no longer matches
    segment.write_bytes(bytes(data))
    cut_at = len(WAL_MAGIC) + sum(len(frame) for frame in _frames(bytes(data))[:1])
    recovered = open_shard(tmp_path, ManualClock())
    (note,) = recovered.recovery.notes["cut_tails"]
    assert (note["file"], note["offset"], note["reason"]) == (segment.name, cut_at, "checksum mismatch")
    kept = tmp_path / note["quarantine"]
    assert kept.read_bytes() == bytes(data[cut_at:]) and segment.stat().st_size == cut_at
    assert recovered.store.apply(GetSession("acme", sid), 0)["message_count"] == 0
    assert recovered.condition["recovery"]["cut_tails"] == [note]
    recovered.close()


def _frames(data: bytes) -> list[bytes]:
    """The framed records of a log segment's bytes, each whole (header and payload)."""
    frames, offset = [], len(WAL_MAGIC)
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        frames.append(data[offset : offset + 8 + length])
        offset += 8 + length
    return frames


def test_the_data_directory_remembers_its_shard_count(tmp_path: Path) -> None:
    claim_layout(tmp_path, 4)
    claim_layout(tmp_path, 4)
    with pytest.raises(ConfigError, match="shards=4"):
        claim_layout(tmp_path, 8)


def test_recovered_sessions_share_one_string_per_role_and_organization(tmp_path: Path) -> None:
    # A recovered message's role and session's org would otherwise be strings of their own,
    # a tenth of a recovered session's memory.
    clock = ManualClock(1_000)
    shard = open_shard(tmp_path / "shard", clock)
    ids = [new_session_id() for _ in range(2)]
    for sid in ids:
        shard.commit([CreateSession("".join(["ac", "me"]), sid, "s", 60, {})])
        shard.commit([session_op("say", sid, 2)])
    shard.snapshot_now()
    shard.commit([session_op("say", ids[0], 1)])  # one append only in the log
    shard.close(snapshot=False)
    recovered = open_shard(tmp_path / "shard", clock)
    try:
        sessions = [recovered.store._sessions[("acme", sid)] for sid in ids]
        roles = {id(m.role) for s in sessions for m in s.messages}
        assert len(roles) == 1 and sum(len(s.messages) for s in sessions) == 5
        assert sessions[0].org is sessions[1].org
    finally:
        recovered.close(snapshot=False)
