"""A shard actor's timers (engine/runtime/upkeep.py), on a stand-in shard with time sped up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.errors import LogWriteFailed
from engine.runtime import upkeep

real_sleep = asyncio.sleep


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    async def tick(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(upkeep.asyncio, "sleep", tick)


class Shard:
    def __init__(self, read_only: bool = False, due: bool = False) -> None:
        self.read_only = read_only
        self.due = due
        self.syncs = 0
        self.tries = 0
        self.sync_error: Exception | None = None

    def sync(self) -> None:
        self.syncs += 1
        if self.sync_error is not None:
            raise self.sync_error

    def snapshot_due(self) -> bool:
        return self.due

    def resume_writes(self) -> bool:
        self.tries += 1
        if self.tries >= 3:  # the disk takes writes again at the third try
            self.read_only = False
        return not self.read_only


async def run_for(coroutine: Any, turns: int = 50) -> None:
    task = asyncio.ensure_future(coroutine)
    for _ in range(turns):
        await real_sleep(0)
        if task.done():
            break
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_read_only_shard_is_tried_until_its_disk_takes_writes_then_told_once() -> None:
    shard, resumed = Shard(read_only=True), []
    await run_for(upkeep.resume_writes_forever(shard, lambda: resumed.append(1), "shard", 0))
    assert shard.tries == 3 and resumed == [1] and not shard.read_only


async def test_snapshots_are_taken_when_due_and_never_while_read_only() -> None:
    taken: list[int] = []

    async def snapshot() -> None:
        taken.append(1)

    await run_for(upkeep.snapshot_forever(Shard(read_only=True, due=True), snapshot, "shard", 0))
    assert taken == []
    await run_for(upkeep.snapshot_forever(Shard(due=True), snapshot, "shard", 0), turns=10)
    assert len(taken) >= 2


async def test_a_failed_snapshot_is_logged_and_the_timer_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    async def snapshot() -> None:
        attempts.append(1)
        raise OSError(28, "No space left on device")

    await run_for(upkeep.snapshot_forever(Shard(due=True), snapshot, "shard", 0), turns=10)
    assert len(attempts) >= 2 and "snapshot failed" in caplog.text


async def test_a_shard_that_cannot_rebuild_itself_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[str] = []

    def fail_stop(what: str, index: int) -> None:
        stopped.append(what)
        raise asyncio.CancelledError  # in a real shard the process exits here

    monkeypatch.setattr(upkeep, "fail_stop", fail_stop)
    shard = Shard()
    shard.sync_error = LogWriteFailed("cannot rebuild", "lost records")
    await run_for(upkeep.sync_forever(shard, "session shard", 0))
    assert stopped == ["session shard"] and shard.syncs == 1
