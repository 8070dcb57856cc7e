"""A shard serves only its own directory, and a stale incarnation of it can never acknowledge a
write the current one does not have (engine.storage.identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession, GetSession
from engine.sessions.session import NewMessage
from engine.storage import logged
from engine.storage.identity import (
    IDENTITY_FILE,
    Fenced,
    NotThisShardsData,
    ShardIdentity,
    read_epoch,
)
from engine.storage.layout import LAYOUT_FILE, claim_layout, memory_directory, shard_directory

ALWAYS = DurabilityConfig(fsync="always")


def open_shard(directory: Path, identity: ShardIdentity | None = None) -> DurableSessions:
    return DurableSessions(directory, ALWAYS, ManualClock(), lock_wait_s=0.2, identity=identity)


def say(shard: DurableSessions, sid: str, text: str) -> Any:
    (result,) = shard.commit([AppendMessages("acme", sid, (NewMessage("user", text),))])
    return result


def messages(shard: DurableSessions, sid: str) -> list[str]:
    (session,) = shard.commit([GetSession("acme", sid)])
    return [m["content"] for m in session["messages"]]


def test_claiming_a_data_directory_gives_every_shard_its_identity(tmp_path: Path) -> None:
    cluster = claim_layout(tmp_path, 2, 1)
    assert cluster.startswith("cl_") and claim_layout(tmp_path, 2, 1) == cluster  # claimed once
    for kind, directory, index in (
        ("session", shard_directory(tmp_path, 0), 0),
        ("session", shard_directory(tmp_path, 1), 1),
        ("memory", memory_directory(tmp_path, 0), 0),
    ):
        assert orjson.loads((directory / IDENTITY_FILE).read_bytes()) == {
            "cluster_id": cluster,
            "kind": kind,
            "index": index,
        }


def test_data_from_before_cluster_ids_is_claimed_in_place(tmp_path: Path) -> None:
    shard = open_shard(shard_directory(tmp_path, 0))
    shard.commit([CreateSession("acme", "s1", "old", 60, {})])
    shard.close()
    (tmp_path / LAYOUT_FILE).write_bytes(orjson.dumps({"format": 1, "shards": 1}))
    cluster = claim_layout(tmp_path, 1)
    reopened = open_shard(shard_directory(tmp_path, 0), ShardIdentity(cluster, "session", 0))
    assert messages(reopened, "s1") == []  # the same session, served


@pytest.mark.parametrize(
    "case",
    ["no data directory", "no identity", "another cluster", "another shard", "another kind"],
)
def test_a_shard_refuses_a_directory_that_is_not_its_own_and_creates_nothing(
    tmp_path: Path, case: str
) -> None:
    data = tmp_path / "data"
    if case != "no data directory":
        cluster = claim_layout(data, 2, 1)
    directory = shard_directory(data, 0)
    identity = ShardIdentity(
        "cl_theirs" if case == "another cluster" else locals().get("cluster", "x"), "session", 0
    )
    if case == "no identity":
        (directory / IDENTITY_FILE).unlink()
    if case == "another shard":
        identity = ShardIdentity(identity.cluster_id, "session", 1)
    if case == "another kind":
        identity = ShardIdentity(identity.cluster_id, "memory", 0)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(NotThisShardsData) as refused:
        open_shard(directory, identity)
    assert refused.value.code == "UNAVAILABLE" and refused.value.details["refused"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing made


def test_a_memory_shard_refuses_a_missing_directory_too(tmp_path: Path) -> None:
    with pytest.raises(NotThisShardsData, match="not there"):
        DurableMemory(
            memory_directory(tmp_path, 0), ALWAYS, IndexParams(), identity=ShardIdentity("c", "memory", 0)
        )
    assert not tmp_path.joinpath("memory").exists()


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A network filesystem that does not honour flock: two incarnations can both open the directory."""

    class NoLock:
        def __init__(self, directory: Path, wait_s: float) -> None:
            directory.mkdir(parents=True, exist_ok=True)

        def release(self) -> None:
            pass

    monkeypatch.setattr(logged, "DirectoryLock", NoLock)


def test_a_stale_incarnation_is_fenced_and_its_late_write_is_never_seen(
    tmp_path: Path, no_flock: None
) -> None:
    old = open_shard(tmp_path)
    old.commit([CreateSession("acme", "s1", "n", 600, {})])
    assert not isinstance(say(old, "s1", "acknowledged by the old one"), Exception)
    new = open_shard(tmp_path)  # Ray restarted the shard elsewhere; the old process still runs
    assert (old.epoch, new.epoch, read_epoch(tmp_path)) == (1, 2, 2)
    assert messages(new, "s1") == ["acknowledged by the old one"]

    late = say(old, "s1", "written by the old one after the new one started")
    assert isinstance(late, Fenced)  # never acknowledged
    assert isinstance(old.commit([GetSession("acme", "s1")])[0], Fenced)  # nor reads: it is behind
    assert old.condition == {"fenced": True} and not old.resume_writes()
    assert not isinstance(say(new, "s1", "acknowledged by the new one"), Exception)
    new.close(snapshot=False)

    again = open_shard(tmp_path)  # the old one's record sits in its segment past where the new one's begins
    assert messages(again, "s1") == ["acknowledged by the old one", "acknowledged by the new one"]
    assert [n["reason"] for n in again.recovery.notes["cut_tails"]] == [
        f"record {again.lsn} of a fenced (stale) incarnation"
    ]


def test_a_stale_incarnation_writes_into_a_segment_no_one_reads(tmp_path: Path, no_flock: None) -> None:
    old = open_shard(tmp_path)
    old.commit([CreateSession("acme", "s1", "n", 600, {})])
    old.snapshot_now()  # its log now writes to a new, empty segment
    new = open_shard(tmp_path)  # which the new incarnation replaces with its own
    assert isinstance(say(old, "s1", "late"), Fenced)
    assert not isinstance(say(new, "s1", "current"), Exception)
    new.close(snapshot=False)
    again = open_shard(tmp_path)
    assert messages(again, "s1") == ["current"] and not again.recovery.notes["cut_tails"]


def test_a_stale_incarnation_cannot_finish_a_snapshot(tmp_path: Path, no_flock: None) -> None:
    old = open_shard(tmp_path)
    old.commit([CreateSession("acme", "s1", "n", 600, {})])
    old.begin_snapshot()
    while old.snapshot_step():
        pass
    old.finish_snapshot_io()  # its file is in place; dropping what it covers is what remains
    new = open_shard(tmp_path)
    logs_before = sorted(p.name for p in tmp_path.glob("wal-*.log"))
    with pytest.raises(OSError, match="newer incarnation"):
        old.complete_snapshot()  # it would drop log segments and snapshots the new one may need
    assert sorted(p.name for p in tmp_path.glob("wal-*.log")) == logs_before
    assert old.condition == {"fenced": True} and isinstance(say(old, "s1", "late"), Fenced)
    assert not isinstance(say(new, "s1", "current"), Exception)
