"""What both kinds of shard actor (session, memory) do around their durable store: start only on
a directory that is really theirs, and keep trying while it is not; apply a batch and log it
before answering; refuse changes while drained; take snapshots; stop gracefully; and say where
they run and what they hold, for `session-engine status` and a gateway's /metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import ray
from prometheus_client.metrics_core import Metric

from engine.config import EngineConfig
from engine.errors import DirectoryLocked, LogWriteFailed, Unavailable
from engine.storage.backup import ShardBackups
from engine.storage.identity import NotThisShardsData, ShardIdentity
from engine.storage.snapshot import SnapshotResult

from . import upkeep
from .names import CONTROLLER_NAME
from .ray_actors import RAY_ERRORS, lookup
from .shard_metrics import ShardMetrics

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 5.0  # how often a refused shard looks for its data again
# At its first start a shard waits this long for the directory lock (a restarted shard's dead
# predecessor may still be being reaped); a refused shard's retries do not wait, so they never
# hold up its event loop.
FIRST_LOCK_WAIT_S = 10.0
BACKUP_SWEEP_S = 60.0  # how often a shard drops the staged files of a backup no one reads any more


class DurableStore(Protocol):
    """What a shard actor needs of its durable store (DurableSessions, DurableMemory: both
    engine.storage.logged.LoggedStore)."""

    SNAPSHOT_PREFIX: str
    directory: Path
    lsn: int
    recovery: Any

    def backup_point(self) -> tuple[int, int, int, int | None]: ...

    @property
    def archiving(self) -> bool: ...

    def archive_sealed(self) -> None: ...

    def seal_for_archive(self) -> tuple[int, int] | None: ...

    def archive_heartbeat(self, next_lsn: int, as_of: int) -> None: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def takes_changes(self) -> bool: ...

    def commit(self, ops: Sequence[Any]) -> list[Any]: ...

    def drain(self, refusal: Unavailable | None) -> None: ...

    def disk_status(self) -> dict[str, Any]: ...

    def close(self, *, snapshot: bool = True) -> None: ...


D = TypeVar("D", bound=DurableStore)


class HostedShard(Generic[D]):
    """Base of the SessionShard and MemoryShard actors. A subclass sets KIND and `_metrics`, calls
    `_host` at the end of its `__init__`, and implements what differs by kind: `_open_durable` (the
    store, from its directory and identity), `_started` (its timers), `_after_commit` (what a batch
    sets going), `_write_snapshot`, `_counts` and `_store_families` (what it holds), and
    `_stopping` (what it stops besides its timers)."""

    KIND: str
    _metrics: ShardMetrics

    def _host(self, index: int, config: EngineConfig, cluster_id: str) -> None:
        self._index = index
        self._config = config
        self._identity = ShardIdentity(cluster_id, self.KIND, index)
        self._durable: D | None = None
        self._backups: ShardBackups | None = None  # the backups being copied from it
        self._refusal: Unavailable | None = None
        self._timers: list[asyncio.Task[None]] = []
        self._snapshot_lock = asyncio.Lock()
        if not self._try_start(FIRST_LOCK_WAIT_S):
            self._timers.append(asyncio.get_running_loop().create_task(self._start_when_found()))

    # -- what differs by kind

    def _open_durable(self, identity: ShardIdentity, lock_wait_s: float) -> D:
        raise NotImplementedError

    def _started(self) -> None:
        raise NotImplementedError

    def _after_commit(self, ops: Sequence[Any], logged: bool, seconds: float) -> None:
        """After a batch's commit: `logged`, it wrote a log record; it took `seconds`."""
        raise NotImplementedError

    async def _write_snapshot(self, durable: D) -> SnapshotResult:
        raise NotImplementedError

    def _counts(self, durable: D) -> dict[str, Any]:
        raise NotImplementedError

    def _store_families(self, durable: D) -> list[Metric]:
        raise NotImplementedError

    def _stopping(self) -> None:
        """At a graceful stop, before the final snapshot."""

    def _writes_resumed(self) -> None:
        """The shard takes changes again: its disk took a write after refusing them, or an operator
        undid a drain. What it put off while it could record nothing starts again here."""

    # -- starting on its own directory

    def _try_start(self, lock_wait_s: float = 0.0) -> bool:
        try:
            self._durable = self._open_durable(self._identity, lock_wait_s)
        except NotThisShardsData as exc:
            self._refuse(exc)
            return False
        except DirectoryLocked as exc:
            # Another process (an old incarnation, or a shard of another cluster) holds it.
            self._refuse(Unavailable(str(exc), {"reason": str(exc), "refused": True}, "Retry shortly."))
            return False
        if self._refusal is not None:
            log.warning("shard found its data and serves", extra={"kind": self.KIND, "shard": self._index})
        self._refusal = None
        durable = self._durable
        self._backups = ShardBackups(durable.directory, durable.SNAPSHOT_PREFIX)
        self._started()
        loop = asyncio.get_running_loop()
        self._timers.append(loop.create_task(self._drain_if_cluster_is()))
        self._timers.append(loop.create_task(self._sweep_backups_forever()))
        if durable.archiving:
            self._timers.append(loop.create_task(self._archive_forever()))
        return True

    async def _drain_if_cluster_is(self) -> None:
        """A shard that restarts (its node died, or Ray moved it) while the cluster is drained stays
        drained: the drain is the controller's state, not only the old incarnation's."""
        controller = lookup(CONTROLLER_NAME, self._config)
        try:
            drained = controller is not None and (await controller.describe.remote())["drained"]
        except RAY_ERRORS:
            return
        if drained:
            await self.drain(True)

    def _refuse(self, refusal: Unavailable) -> None:
        if self._refusal is None or self._refusal.message != refusal.message:
            log.error(
                "shard refuses to serve",
                extra={"kind": self.KIND, "shard": self._index, "reason": refusal.details.get("reason")},
            )
        self._refusal = refusal

    async def _start_when_found(self) -> None:
        while True:
            await asyncio.sleep(REFUSED_RETRY_S)
            if self._try_start():
                return

    def _store(self) -> D:
        assert self._durable is not None
        return self._durable

    # -- requests

    async def handle(self, ops: Sequence[Any]) -> list[Any]:
        """One result per op, the batch applied and logged before it answers. A shard that cannot
        serve at all (not its directory, or stopped) answers every op with why."""
        if self._durable is None:
            assert self._refusal is not None
            return [self._refusal] * len(ops)
        durable = self._durable
        lsn, started = durable.lsn, time.perf_counter()
        # No await inside: a batch is applied and logged whole before the next one starts.
        try:
            results = durable.commit(ops)  # read-only while its log cannot be written
        except LogWriteFailed:
            upkeep.fail_stop(f"{self.KIND} shard", self._index)
        self._after_commit(ops, durable.lsn != lsn, time.perf_counter() - started)
        return results

    async def drain(self, on: bool = True, moving: bool = False) -> dict[str, Any]:
        """Stop taking changes (reads are still answered) and take a snapshot; `on=False` undoes it.
        `moving`: drained by `rebalance` before it moves the shard, which its refusals say."""
        if self._durable is None:
            return await self.describe()
        self._durable.drain(self._drained_refusal(moving) if on else None)
        if not on and self._durable.takes_changes:
            self._writes_resumed()
        if on and not self._durable.read_only:
            try:
                await self.snapshot()
            except OSError as exc:  # the log still holds every change; status shows the snapshot's age
                log.warning("drain snapshot failed", extra={"shard": self._index, "error": str(exc)})
        return await self.describe()

    def _drained_refusal(self, moving: bool) -> Unavailable:
        where = {"shard": self._index, "draining": True, "state": "moving" if moving else "draining"}
        if moving:
            return Unavailable(
                f"{self.KIND} shard {self._index} is moving to another node and takes no changes",
                where,
                "An operator is moving this shard (session-engine rebalance); it takes changes again in "
                "seconds and reads go on meanwhile. Retry shortly: this change was not applied.",
            )
        return Unavailable(
            f"{self.KIND} shard {self._index} is drained and takes no changes",
            where,
            "An operator drained the cluster (session-engine drain, or stop on its way to stopping it); "
            "reads go on. Changes are taken again after `session-engine drain --undo`, or once a "
            "stopped cluster is started again. This change was not applied.",
        )

    # -- snapshots and stopping

    async def snapshot(self) -> dict[str, Any]:
        """Take a snapshot now (the timer also takes them); returns what it cost."""
        durable = self._store()
        async with self._snapshot_lock:
            result = await self._write_snapshot(durable)
            self._metrics.snapshot_seconds.observe(result.seconds)
            log.info("snapshot written", extra={"kind": self.KIND, "shard": self._index, **result.report()})
            return result.report()

    async def shutdown(self) -> None:
        """Graceful stop: a final snapshot, the log closed, the directory lock released."""
        for timer in self._timers:
            timer.cancel()
        self._stopping()
        if self._backups is not None:
            self._backups.end_all()  # a backup still copying fails: its shard is going away
        if self._durable is None:
            return
        async with self._snapshot_lock:
            self._durable.close(snapshot=True)
            self._durable = None
            self._refusal = Unavailable(f"{self.KIND} shard {self._index} is stopped", {"reason": "stopped"})

    # -- online backup (engine.storage.backup; engine.backup.take drives it)

    async def backup_begin(
        self, backup_id: str, since_lsn: int | None, since_crc: int | None = None
    ) -> dict[str, Any]:
        """Cut the shard at its last record and pin the files that hold it; `since_lsn` and
        `since_crc`: the previous backup's watermark and its record's checksum, for an incremental
        one. Returns the watermark and the pieces."""
        if self._durable is None or self._backups is None:
            assert self._refusal is not None
            raise self._refusal  # not serving its directory: nothing of it to copy
        durable = self._durable
        staged = self._backups.begin(backup_id, *durable.backup_point(), since_lsn, since_crc)
        try:
            await asyncio.to_thread(staged.resolve)
        except BaseException:
            self._backups.end(backup_id)
            raise
        return {
            "kind": self.KIND,
            "index": self._index,
            "cluster_id": self._identity.cluster_id,
            **staged.describe(),
        }

    async def _archive_forever(self) -> None:
        """Copy sealed segments to the archive (at once: the last segment of the incarnation
        before is sealed now), then every durability.archive_timeout_s seal the current one if it
        holds records, or record that it holds none (LoggedStore.seal_for_archive)."""
        durable = self._store()
        await asyncio.to_thread(durable.archive_sealed)
        while True:
            await asyncio.sleep(self._config.durability.archive_timeout_s)
            idle = durable.seal_for_archive()
            await asyncio.to_thread(durable.archive_sealed)
            if idle is not None:
                await asyncio.to_thread(durable.archive_heartbeat, *idle)

    async def _sweep_backups_forever(self) -> None:
        """Unpin the files of a backup whose process went away (ShardBackups.sweep)."""
        while True:
            await asyncio.sleep(BACKUP_SWEEP_S)
            if self._backups is not None:
                self._backups.sweep()

    async def backup_read(self, backup_id: str, piece: int, offset: int, size: int) -> bytes:
        """Bytes of one piece of a backup begun here, read in a thread (size 0: only keeps the
        backup from lapsing while it waits for its turn)."""
        if self._backups is None:
            assert self._refusal is not None
            raise self._refusal
        staged = self._backups.get(backup_id)
        if size == 0:
            return b""
        return await asyncio.to_thread(staged.pieces[piece].read, offset, size)

    async def backup_end(self, backup_id: str) -> None:
        """The backup has its copy: unpin the files."""
        if self._backups is not None:
            self._backups.end(backup_id)

    # -- what it says of itself

    async def describe(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        where = {
            "kind": self.KIND,
            "index": self._index,
            "cluster_id": self._identity.cluster_id,
            "node_id": context.get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if self._durable is None:
            assert self._refusal is not None
            return {
                **where,
                "state": "refused",
                "reason": self._refusal.details.get("reason", str(self._refusal)),
            }
        return {**where, **self._durable.disk_status(), **self._counts(self._durable)}

    async def metrics(self) -> list[Any]:
        """This shard's series, for a gateway's /metrics (engine.runtime.shard_metrics)."""
        if self._durable is None:
            return self._metrics.families(None, None)
        durable = self._durable
        return [
            *self._metrics.families(durable.disk_status(), durable.recovery.seconds),
            *self._store_families(durable),
        ]
