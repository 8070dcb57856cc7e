"""The session shard actors: SessionShard (a SessionStore made durable, its closing jobs, its
change feed and its timers), then creating, finding and stopping them. The gateway reaches them
through engine.runtime.transports.RaySessionTransport."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
from prometheus_client.metrics_core import Metric

from engine.closing.indexing import forget_sessions
from engine.closing.job import ClosingJobs
from engine.closing.live import LiveIndexer
from engine.config import EngineConfig, LimitsConfig
from engine.errors import EngineError
from engine.logs import setup_logging
from engine.sessions.answers import encode_answers
from engine.sessions.durable import DurableSessions
from engine.sessions.events import EventLog, FeedReads, Interest, Page, Position, Reader
from engine.sessions.ops import ExpireDue, Ping, PurgeSessions, SessionOp
from engine.storage.identity import ShardIdentity
from engine.storage.layout import shard_directory
from engine.storage.snapshot import SnapshotResult

from . import upkeep
from .closing_ports import RayClosingPorts
from .hosted import HostedShard
from .names import shard_names
from .ray_actors import RAY_ERRORS, NamedActors, create_named, find_named, wait_started
from .shard_metrics import SessionShardMetrics

log = logging.getLogger(__name__)

_PURGE_BATCH = 1000  # sessions a retention run purges at most; the next run takes the rest


@ray.remote(max_restarts=-1, max_task_retries=0)
class SessionShard(HostedShard[DurableSessions]):
    """Hosts one DurableSessions: applies batches of ops in arrival order, logs them before replying,
    and runs its timers (expiry, log sync for fsync=everysec, snapshots) on the same event loop.
    It serves only its own directory (engine.runtime.hosted)."""

    KIND = "session"
    _metrics: SessionShardMetrics

    def __init__(self, index: int, config: EngineConfig, cluster_id: str) -> None:
        setup_logging(config.log_level)
        self._feed_reads = FeedReads()  # the gateways' long-polls of this shard's change feed
        self._forgetting: set[asyncio.Task[None]] = set()
        self._ports = RayClosingPorts(config)
        self._metrics = SessionShardMetrics()
        self._live = LiveIndexer(
            self.handle,
            self._ports,
            config.memory.live,
            take=lambda: self._store().store.take_live(),
            writable=self._takes_changes,
            lag=self._metrics.live_lag.observe,
        )
        self._closing = ClosingJobs(
            self.handle,
            self._ports,
            config.models.summarizer,
            writable=self._takes_changes,
            outcome=self._metrics.summary_outcome,
            settled=self._live.settled,
        )
        # Async actor: __init__ runs on the actor's event loop, so the timers live beside the ops.
        self._host(index, config, cluster_id)

    def _takes_changes(self) -> bool:
        return self._durable is not None and self._durable.takes_changes

    def _open_durable(self, identity: ShardIdentity, lock_wait_s: float) -> DurableSessions:
        directory = shard_directory(self._config.data_dir, self._index)
        durable = DurableSessions(
            directory,
            self._config.durability,
            lock_wait_s=lock_wait_s,
            own_process=True,
            identity=identity,
            events=self._config.events,
        )
        durable.observe_commit = self._metrics.observe_commit
        durable.observe_events = self._metrics.published
        return durable

    def _started(self) -> None:
        durable = self._store()
        loop = asyncio.get_running_loop()
        # Replay queued the jobs of every close in the log; resume those still unfinished instead.
        durable.store.take_summary_jobs()
        self._closing.submit(durable.store.unfinished_summaries())
        self._closing.submit_upgrades(durable.store.pending_upgrades())
        if self._config.memory.live.enabled:
            # Replay marked what it applied; a start indexes every session live memory is behind on.
            durable.store.take_live()
            # Forgets are idempotent: the sessions replay saw deleted or purged, and not made again
            # under their id since, are forgotten again, in case the last run crashed between a
            # tick's upsert and its forget (the indexer skips any that exist by the time it forgets).
            self._live.forget(durable.store.take_live_deleted())
            self._live.add(durable.store.live_backlog())
            self._live.wake()
            self._timers.append(loop.create_task(self._live.run()))
        self._timers += [
            loop.create_task(self._expire_forever()),
            loop.create_task(upkeep.snapshot_forever(durable, self.snapshot, "session shard", self._index)),
            loop.create_task(
                upkeep.resume_writes_forever(durable, self._writes_resumed, "session shard", self._index)
            ),
        ]
        if self._config.durability.fsync == "everysec":
            self._timers.append(loop.create_task(upkeep.sync_forever(durable, "session shard", self._index)))
        if self._config.limits.retention_days is not None or self._config.limits.orgs:
            self._timers.append(loop.create_task(self._retain_forever()))

    def _after_commit(self, ops: Sequence[SessionOp], logged: bool, seconds: float) -> None:
        durable = self._store()
        if logged:
            self._feed_reads.written()
        jobs = durable.store.take_summary_jobs()
        if jobs and not durable.read_only:
            self._closing.submit(jobs)  # after the log write: a job starts only once it is durable
        self._after_commit_live(durable)

    def _after_commit_live(self, durable: DurableSessions) -> None:
        store = durable.store
        if not self._config.memory.live.enabled:
            store.live_dirty.clear()  # nothing takes them: kept, they would only grow
            store.live_deleted.clear()
            return
        if store.live_dirty:
            self._live.wake()
        deleted = store.take_live_deleted() if store.live_deleted else None
        if deleted and not durable.read_only:
            # After the log write, as retention's purge: why a delete ends with nothing of the
            # session in memory, however it meets a tick, is in engine.closing.live.
            task = asyncio.get_running_loop().create_task(self._forget_deleted(deleted))
            self._forgetting.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self._forgetting.discard)

    async def _forget_deleted(self, deleted: list[tuple[str, str]]) -> None:
        for org, group in itertools.groupby(sorted(deleted), key=lambda key: key[0]):
            try:
                await forget_sessions(self._ports, org, [session_id for _, session_id in group])
            except Exception as exc:  # noqa: BLE001 - the live indexer tries again until one succeeds
                log.warning("forgetting deleted sessions failed", extra={"org": org, "error": str(exc)})
                self._live.forget(key for key in deleted if key[0] == org)

    async def answer(self, ops: Sequence[SessionOp]) -> list[Any]:
        """A gateway's batch: `handle`, with what its clients asked for encoded as JSON here
        (engine.sessions.answers), off the gateway's core."""
        return encode_answers(ops, await self.handle(ops))

    def _writes_resumed(self) -> None:
        # Read-only or drained, the shard could record no job's progress (and a rebuild queued every
        # close it replayed): resume the unfinished jobs, as a restart does.
        durable = self._store()
        durable.store.take_summary_jobs()
        self._closing.submit(durable.store.unfinished_summaries())
        self._closing.submit_upgrades(durable.store.pending_upgrades())
        self._live.wake()  # what it could not mark meanwhile waits for a tick

    async def read_events(
        self,
        after: Position | None,
        interests: frozenset[Interest],
        limit: int,
        wait_s: float,
        reader: Reader | None = None,
    ) -> Page | EngineError:
        """The change feed (engine.sessions.events): the events `interests` want after `after`,
        waiting up to `wait_s` for some to be written; `after=None`: none, only where the feed
        ends now. Errors are answered as values, as handle answers them.

        `reader`: (who, read number). A gateway's tail that gives up on a read (its consumers
        changed) reads again at once; the read it left ends here as soon as the newer one arrives,
        instead of waking at every log write until its wait is over."""
        try:
            return await self._feed_reads.read(self._event_log, after, interests, limit, wait_s, reader)
        except EngineError as exc:
            return exc

    def _event_log(self) -> EventLog:
        if self._durable is None:
            assert self._refusal is not None
            raise self._refusal
        return self._durable.store.events

    def _store_families(self, durable: DurableSessions) -> list[Metric]:
        store = durable.store
        by_status, events = store.count_by_status(), len(store.events)
        return self._metrics.session_families(by_status, self._closing.active, events)

    async def drain_summaries(self, upgrades: bool = False) -> int:
        """Wait until every summary job this shard has in flight is done, and with `upgrades` every
        model upgrade too; for tests and benchmarks. The jobs (and upgrades) left unfinished."""
        await self._closing.drain(upgrades=upgrades)
        if self._durable is None:
            return 0
        store = self._store().store
        return len(store.unfinished_summaries()) + (len(store.pending_upgrades()) if upgrades else 0)

    def _counts(self, durable: DurableSessions) -> dict[str, Any]:
        return {
            "shards": self._config.shards,
            "recovered": durable.recovery.report(),
            "summary_jobs_running": self._closing.active,
            "summary_upgrades_running": self._closing.upgrading,
            "live_turns_waiting": durable.store.live_waiting(  # each session once (live_waiting)
                [*self._live.waiting, *durable.store.live_dirty]
            ),
            **durable.store.apply(Ping(), 0),
        }

    async def _write_snapshot(self, durable: DurableSessions) -> SnapshotResult:
        """In chunks, with the shard's batches applied between them; the file's I/O in a thread."""
        durable.begin_snapshot()
        while durable.snapshot_step():
            await asyncio.sleep(0)  # let waiting batches run between chunks
        try:
            await asyncio.to_thread(durable.finish_snapshot_io)
        except OSError:
            durable.abandon_snapshot()
            raise
        return durable.complete_snapshot()

    def _stopping(self) -> None:
        self._closing.cancel()  # unfinished jobs stay queued in the log; the next start resumes them

    async def _retain_forever(self) -> None:
        """Retention: purge ended sessions past their organization's retention_days, what session
        memory holds of them first, so a crash in between leaves sessions the next run finds again."""
        while True:
            await asyncio.sleep(self._config.limits.retention_check_s)
            if self._store().read_only:
                continue  # the purge could not be logged; its vectors would go and its sessions stay
            try:
                await self._purge_due()
            except Exception as exc:  # noqa: BLE001 - the sessions stay until a run purges them whole
                log.warning("retention run failed", extra={"shard": self._index, "error": str(exc)})

    async def _purge_due(self) -> None:
        cutoffs, default = retention_cutoffs(self._config.limits, int(time.time() * 1000))
        due = self._store().store.purgeable(cutoffs, default, limit=_PURGE_BATCH)
        if not due:
            return
        for org, group in itertools.groupby(sorted(due), key=lambda key: key[0]):
            await forget_sessions(self._ports, org, [session_id for _, session_id in group])
        (purged,) = await self.handle([PurgeSessions(tuple(due))])
        if isinstance(purged, Exception):
            raise purged
        log.info("retention purge", extra={"shard": self._index, "sessions": len(purged)})

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.expiry_tick_s)
            deadline = self._store().store.next_deadline()
            if deadline is not None and deadline <= time.time() * 1000:
                await self.handle([ExpireDue()])


def retention_cutoffs(limits: LimitsConfig, now_ms: int) -> tuple[dict[str, int | None], int | None]:
    """The time (epoch ms) before which a session must have ended to be purged now: per named
    organization, and for the rest (None: kept)."""

    def cutoff(days: float | None) -> int | None:
        return None if days is None else int(now_ms - days * 86_400_000)

    return {org: cutoff(limits.for_org(org).retention_days) for org in limits.orgs}, cutoff(
        limits.retention_days
    )


# -- creating, finding and stopping the actors -----------------------------------------------------


def create_shards(config: EngineConfig, cluster_id: str) -> list[Any]:
    """Create the named shard actors, or find them if another gateway already did; no waiting."""
    return [
        create_named(SessionShard, name, config, i, config, cluster_id)
        for i, name in enumerate(shard_names(config))
    ]


def ensure_shards(config: EngineConfig, cluster_id: str) -> NamedActors:
    """The shard actors, created or found, once every one has started. A shard that refuses its
    directory (engine.runtime.hosted) stops the start, with its reason."""
    handles = create_shards(config, cluster_id)
    wait_started(handles, "shard", timeout_s=600)
    return NamedActors(shard_names(config), config, handles)


def find_shards(config: EngineConfig, timeout_s: float = 60.0) -> NamedActors:
    """Look the shard actors up by name, waiting while the process that creates them starts."""
    names = shard_names(config)
    return NamedActors(names, config, find_named(names, config, timeout_s))


def stop_shards(handles: Sequence[Any]) -> None:
    """Graceful stop of every shard: final snapshots, logs closed, locks released."""
    try:
        ray.get([h.shutdown.remote() for h in handles], timeout=300)
        for handle in handles:
            ray.kill(handle, no_restart=True)
    except RAY_ERRORS as exc:
        log.warning(
            "a shard did not stop cleanly; its log still holds every change", extra={"error": str(exc)}
        )
