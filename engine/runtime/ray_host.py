"""Ray hosting: the SessionShard actor, starting or joining Ray, and the Ray transport.

With ray_memory and ray_actors, the only modules that import Ray, so the rest of the engine is
testable without it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import ray

from engine.config import ConfigError, EngineConfig, LimitsConfig
from engine.logs import setup_logging
from engine.models.summarizer import Conversation, Summary
from engine.runtime import ray_memory, upkeep
from engine.runtime.ray_actors import (
    RAY_ERRORS,
    apply_remote,
    create_named,
    find_named,
    wait_started,
)
from engine.sessions.ops import ExpireDue, Op, Ping, PurgeSessions
from engine.storage.durable import DurableShard
from engine.storage.layout import shard_directory
from engine.storage.wal import LogWriteFailed
from engine.summaries.runner import SummaryRunner

log = logging.getLogger(__name__)

SHARD_NAME = "session-shard-{index}"
_PURGE_BATCH = 1000  # sessions a retention run purges at most; the next run takes the rest


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class SessionShard:
    """Hosts one DurableShard: applies batches of ops in arrival order, logs them before replying,
    and runs its timers (expiry, log sync for fsync=everysec, snapshots) on the same event loop."""

    def __init__(self, index: int, config: EngineConfig) -> None:
        setup_logging(config.log_level)
        self._index = index
        self._config = config
        self._durable = DurableShard(
            shard_directory(config.data_dir, index), config.durability, own_process=True
        )
        self._snapshot_lock = asyncio.Lock()
        self._pool: Any = None
        self._memory = ray_memory.session_indexer(config)
        self._runner = SummaryRunner(
            self.apply_batch, self._summarize, self._memory, config.models.summarizer
        )
        # Async actor: __init__ runs on the actor's event loop, so the timers live beside the ops.
        loop = asyncio.get_running_loop()
        # Replay queued the jobs of every close in the log; resume those still unfinished instead.
        self._durable.store.take_summary_jobs()
        self._runner.submit(self._durable.store.unfinished_summaries())
        self._timers = [
            loop.create_task(self._expire_forever()),
            loop.create_task(upkeep.snapshot_forever(self._durable, self.snapshot, "session shard", index)),
            loop.create_task(
                upkeep.resume_writes_forever(self._durable, self._writes_resumed, "session shard", index)
            ),
        ]
        if config.durability.fsync == "everysec":
            self._timers.append(loop.create_task(upkeep.sync_forever(self._durable, "session shard", index)))
        if config.limits.retention_days is not None or config.limits.orgs:
            self._timers.append(loop.create_task(self._retain_forever()))

    async def apply_batch(self, ops: Sequence[Op]) -> list[Any]:
        # No await inside: a batch is applied and logged whole before the next one starts.
        try:
            results = self._durable.apply_batch(ops)  # read-only while its log cannot be written
        except LogWriteFailed:
            upkeep.fail_stop("session shard", self._index)
        jobs = self._durable.store.take_summary_jobs()
        if jobs and not self._durable.read_only:
            self._runner.submit(jobs)  # after the log write: a job starts only once it is durable
        return results

    def _writes_resumed(self) -> None:
        # Read-only, the shard could record no job's progress, and a rebuild queued every close it
        # replayed: resume the unfinished jobs, as a restart does.
        self._durable.store.take_summary_jobs()
        self._runner.submit(self._durable.store.unfinished_summaries())

    async def _summarize(self, conversation: Conversation) -> Summary:
        # Looked up without waiting (a wait would block this shard's loop); a miss is a failed attempt.
        if self._pool is None:
            self._pool = ray_memory.find_pool(self._config, timeout_s=0)
        summary: Summary = await self._pool.summarize.remote(conversation)
        return summary

    async def drain_summaries(self) -> int:
        """Wait until every summary job this shard has in flight is done; for tests and benchmarks."""
        await self._runner.drain()
        return len(self._durable.store.unfinished_summaries())

    async def describe(self) -> dict[str, Any]:
        return {
            "index": self._index,
            "shards": self._config.shards,
            "lsn": self._durable.lsn,
            "recovered": asdict(self._durable.recovery),
            "summary_jobs_running": self._runner.active,
            **self._durable.store.apply(Ping(), 0),
        }

    async def snapshot(self) -> dict[str, Any]:
        """Take a snapshot now (the timer also takes them); returns what it cost."""
        async with self._snapshot_lock:
            self._durable.begin_snapshot()
            while self._durable.snapshot_step():
                await asyncio.sleep(0)  # let waiting batches run between chunks
            try:
                await asyncio.to_thread(self._durable.finish_snapshot_io)
            except OSError:
                self._durable.abandon_snapshot()
                raise
            result = asdict(self._durable.complete_snapshot())
            log.info("snapshot written", extra={"shard": self._index, **result})
            return result

    async def shutdown(self) -> None:
        """Graceful stop: a final snapshot, the log closed, the directory lock released."""
        for timer in self._timers:
            timer.cancel()
        self._runner.cancel()  # unfinished jobs stay queued in the log; the next start resumes them
        async with self._snapshot_lock:
            self._durable.close(snapshot=True)

    async def _retain_forever(self) -> None:
        """Retention: purge ended sessions past their organization's retention_days, what session
        memory holds of them first, so a crash in between leaves sessions the next run finds again."""
        while True:
            await asyncio.sleep(self._config.limits.retention_check_s)
            if self._durable.read_only:
                continue  # the purge could not be logged; its vectors would go and its sessions stay
            try:
                await self._purge_due()
            except Exception as exc:  # noqa: BLE001 - the sessions stay until a run purges them whole
                log.warning("retention run failed", extra={"shard": self._index, "error": str(exc)})

    async def _purge_due(self) -> None:
        cutoffs, default = retention_cutoffs(self._config.limits, int(time.time() * 1000))
        due = self._durable.store.purgeable(cutoffs, default, limit=_PURGE_BATCH)
        if not due:
            return
        for org, group in itertools.groupby(sorted(due), key=lambda key: key[0]):
            await self._memory.forget(org, [session_id for _, session_id in group])
        (purged,) = await self.apply_batch([PurgeSessions(tuple(due))])
        if isinstance(purged, Exception):
            raise purged
        log.info("retention purge", extra={"shard": self._index, "sessions": len(purged)})

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.expiry_tick_s)
            deadline = self._durable.store.next_deadline()
            if deadline is not None and deadline <= time.time() * 1000:
                await self.apply_batch([ExpireDue()])


def retention_cutoffs(limits: LimitsConfig, now_ms: int) -> tuple[dict[str, int | None], int | None]:
    """When a session must have ended by to be purged now: per named organization, and the default
    (None: kept)."""

    def cutoff(days: float | None) -> int | None:
        return None if days is None else int(now_ms - days * 86_400_000)

    return {org: cutoff(limits.for_org(org).retention_days) for org in limits.orgs}, cutoff(
        limits.retention_days
    )


def connect(config: EngineConfig) -> str:
    """Start a local Ray (no address configured) or join the configured one; returns its address."""
    if not ray.is_initialized():
        if config.ray.address:
            ray.init(
                address=config.ray.address, namespace=config.ray.namespace, logging_level=logging.WARNING
            )
        else:
            ray.init(
                namespace=config.ray.namespace,
                include_dashboard=False,
                object_store_memory=config.ray.object_store_mb * 1024 * 1024,
                _node_ip_address=config.ray.node_ip,
                logging_level=logging.WARNING,
            )
    return str(ray.get_runtime_context().gcs_address)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def ensure_shards(config: EngineConfig) -> list[Any]:
    """Create the named shard actors, or find them if another gateway already did."""
    handles = [
        create_named(SessionShard, SHARD_NAME.format(index=i), config, i, config)
        for i in range(config.shards)
    ]
    for description in wait_started(handles, "shard", timeout_s=600):
        if description["shards"] != config.shards:
            raise ConfigError(
                f"shards is {config.shards} but the running shard actors were created with "
                f"shards={description['shards']}; use the same value on every gateway"
            )
    return handles


def find_shards(config: EngineConfig, timeout_s: float = 60.0) -> list[Any]:
    """Look the shard actors up by name, waiting while the process that creates them starts."""
    return find_named([SHARD_NAME.format(index=i) for i in range(config.shards)], config, timeout_s)


def stop_shards(handles: list[Any]) -> None:
    """Graceful stop of every shard: final snapshots, logs closed, locks released."""
    try:
        ray.get([h.shutdown.remote() for h in handles], timeout=300)
        for handle in handles:
            ray.kill(handle)
    except RAY_ERRORS as exc:
        log.warning(
            "a shard did not stop cleanly; its log still holds every change", extra={"error": str(exc)}
        )


class RayTransport:
    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    @property
    def shards(self) -> int:
        return len(self._handles)

    async def call(self, shard: int, ops: Sequence[Op]) -> list[Any]:
        return await apply_remote(self._handles[shard], ops, "shard", shard)
