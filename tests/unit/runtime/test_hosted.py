"""What both kinds of shard actor do around their store (engine/runtime/hosted.py): one `handle`
prologue (a shard that cannot serve answers why, a log that cannot be written stops the process,
the kind hears what a batch did), snapshots under one lock, and a graceful stop. On a stand-in
shard over a stand-in store, without Ray."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from engine.config import EngineConfig
from engine.errors import LogWriteFailed, Unavailable
from engine.runtime import hosted
from engine.runtime.hosted import HostedShard
from engine.runtime.shard_metrics import ShardMetrics
from engine.storage.identity import ShardIdentity
from engine.storage.snapshot import SnapshotResult


class Store:
    """Logs a record for every batch with a "write" in it; fails the log when told to."""

    SNAPSHOT_PREFIX = "snapshot-"

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hosted-"))  # where a backup would stage its links
        self.lsn = 0
        self.recovery: Any = None
        self.read_only = False
        self.drained = False
        self.failing = False
        self.closed: list[bool] = []

    def commit(self, ops: Sequence[Any]) -> list[Any]:
        if self.failing:
            raise LogWriteFailed("the log", "disk full")
        if "write" in ops:
            self.lsn += 1
        return [f"did {op}" for op in ops]

    def backup_point(self) -> tuple[int, int, int, int | None]:
        raise Unavailable("the stand-in store keeps no log files to back up")

    archiving = False

    def archive_sealed(self) -> None: ...

    def seal_for_archive(self) -> tuple[int, int] | None:
        return None

    def archive_heartbeat(self, next_lsn: int, as_of: int) -> None: ...

    def drain(self, refusal: Unavailable | None) -> None:
        self.drained = refusal is not None

    @property
    def takes_changes(self) -> bool:
        return not (self.read_only or self.drained)

    def disk_status(self) -> dict[str, Any]:
        return {}

    def close(self, *, snapshot: bool = True) -> None:
        self.closed.append(snapshot)


class Shard(HostedShard[Store]):
    KIND = "session"

    def __init__(self) -> None:
        self._metrics = ShardMetrics()
        self.heard: list[tuple[list[Any], bool]] = []
        self.stopping = 0
        self.resumed = 0
        self._host(3, EngineConfig(), "cluster")

    def _open_durable(self, identity: ShardIdentity, lock_wait_s: float) -> Store:
        return Store()

    def _started(self) -> None: ...

    def _after_commit(self, ops: Sequence[Any], logged: bool, seconds: float) -> None:
        self.heard.append((list(ops), logged))

    async def _write_snapshot(self, durable: Store) -> SnapshotResult:
        return SnapshotResult(durable.lsn, 10, 0.5, 1.0, {"sessions": 2})

    def _stopping(self) -> None:
        self.stopping += 1

    def _writes_resumed(self) -> None:
        self.resumed += 1


@pytest.fixture(autouse=True)
def no_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A started shard asks the cluster's controller whether it is drained: here there is none."""
    monkeypatch.setattr(hosted, "lookup", lambda name, config: None)


async def started() -> Shard:
    shard = Shard()
    await asyncio.sleep(0)  # the start's own task runs
    return shard


async def test_the_kind_hears_each_batch_and_whether_it_was_logged() -> None:
    shard = await started()
    assert await shard.handle(["read"]) == ["did read"]
    assert await shard.handle(["write", "read"]) == ["did write", "did read"]
    assert shard.heard == [(["read"], False), (["write", "read"], True)]


async def test_a_shard_that_cannot_serve_answers_every_op_with_why() -> None:
    shard = await started()
    await shard.shutdown()
    answers = await shard.handle(["read", "write"])
    assert [type(a) for a in answers] == [Unavailable, Unavailable]
    assert answers[0].message == "session shard 3 is stopped"
    assert shard.heard == []


async def test_a_log_that_cannot_be_written_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stopped(Exception):
        pass

    def fail_stop(what: str, index: int) -> NoReturn:
        raise Stopped(what, index)

    monkeypatch.setattr(hosted.upkeep, "fail_stop", fail_stop)
    shard = await started()
    shard._store().failing = True
    with pytest.raises(Stopped) as stopped:
        await shard.handle(["write"])
    assert stopped.value.args == ("session shard", 3)
    assert shard.heard == []


async def test_a_snapshot_reports_what_it_cost() -> None:
    shard = await started()
    await shard.handle(["write"])
    report = await shard.snapshot()
    assert report == {"lsn": 1, "sessions": 2, "bytes": 10, "seconds": 0.5, "longest_step_ms": 1.0}


async def test_a_graceful_stop_ends_the_timers_and_the_kinds_work_then_closes_with_a_snapshot() -> None:
    shard = await started()
    store = shard._store()
    timer = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    shard._timers.append(timer)
    await shard.shutdown()
    await asyncio.sleep(0)
    assert timer.cancelled() and shard.stopping == 1 and store.closed == [True]
    await shard.shutdown()  # a second stop finds nothing left to close
    assert store.closed == [True]


async def test_undoing_a_drain_resumes_what_the_shard_put_off(monkeypatch: pytest.MonkeyPatch) -> None:
    shard = await started()

    async def describe() -> dict[str, Any]:  # where the actor runs is Ray's to say
        return {}

    monkeypatch.setattr(shard, "describe", describe)
    await shard.drain(True)
    assert shard.resumed == 0
    await shard.drain(False)
    assert shard.resumed == 1
    shard._store().read_only = True  # its disk still refuses writes: nothing to resume yet
    await shard.drain(True)
    await shard.drain(False)
    assert shard.resumed == 1
