"""The memory shard actors (vector memory, sharded by organization): MemoryShard (a MemoryStore
made durable, and its timers), then creating them with the model actors they index through,
finding and stopping them. The gateway reaches them through
engine.runtime.transports.RayMemoryTransport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import ray
from prometheus_client.metrics_core import Metric

from engine.config import EngineConfig
from engine.logs import setup_logging
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import MemoryOp, MemoryStats, QueryVectors
from engine.storage.identity import ShardIdentity
from engine.storage.layout import memory_directory
from engine.storage.snapshot import SnapshotResult

from . import upkeep
from .hosted import HostedShard
from .model_actors import BACKGROUND_NICE, EmbedderActor, SummarizerPool
from .names import POOL_NAME, background_embedder_names, embedder_names, memory_names
from .ray_actors import RAY_ERRORS, NamedActors, create_named, find_named
from .shard_metrics import MemoryShardMetrics

log = logging.getLogger(__name__)


@ray.remote(max_restarts=-1, max_task_retries=0)
class MemoryShard(HostedShard[DurableMemory]):
    """Hosts one DurableMemory: batches of upserts, deletes and queries in arrival order, each
    batch's changes logged before it answers; snapshot and log-sync timers beside them. It serves
    only its own directory (engine.runtime.hosted)."""

    KIND = "memory"
    _metrics: MemoryShardMetrics

    def __init__(self, index: int, config: EngineConfig, cluster_id: str) -> None:
        setup_logging(config.log_level)
        self._metrics = MemoryShardMetrics()
        self._host(index, config, cluster_id)

    def _open_durable(self, identity: ShardIdentity, lock_wait_s: float) -> DurableMemory:
        directory = memory_directory(self._config.data_dir, self._index)
        params = index_params(self._config)
        durable = DurableMemory(
            directory, self._config.durability, params, lock_wait_s=lock_wait_s, identity=identity
        )
        durable.observe_commit = self._metrics.observe_commit
        return durable

    def _started(self) -> None:
        durable = self._store()
        loop = asyncio.get_running_loop()
        self._timers += [
            loop.create_task(upkeep.snapshot_forever(durable, self.snapshot, "memory shard", self._index)),
            loop.create_task(
                upkeep.resume_writes_forever(durable, self._writes_resumed, "memory shard", self._index)
            ),
        ]
        if self._config.durability.fsync == "everysec":
            self._timers.append(loop.create_task(upkeep.sync_forever(durable, "memory shard", self._index)))

    def _after_commit(self, ops: Sequence[MemoryOp], logged: bool, seconds: float) -> None:
        self._metrics.timer(any(isinstance(op, QueryVectors) for op in ops))(seconds)

    def _store_families(self, durable: DurableMemory) -> list[Metric]:
        held = [(index.kind, namespace, len(index)) for (_, namespace), index in durable.store.namespaces()]
        return self._metrics.memory_families(held)

    def _counts(self, durable: DurableMemory) -> dict[str, Any]:
        return {
            "shards": self._config.memory.shards,
            "recovered": durable.recovery.report(),
            **durable.store.apply(MemoryStats()),
        }

    async def _write_snapshot(self, durable: DurableMemory) -> SnapshotResult:
        """Every namespace serialized at once (the shard applies nothing meanwhile); the file
        written in a thread."""
        write = durable.begin_snapshot()
        result = await asyncio.to_thread(write)
        durable.finish_snapshot(result)
        return result


def index_params(config: EngineConfig) -> IndexParams:
    return IndexParams(**config.memory.index.model_dump())


# -- creating, finding and stopping the actors -----------------------------------------------------


def ensure_memory(config: EngineConfig, cluster_id: str) -> dict[str, Any]:
    """Create (or find) the memory shards, embedders and summarizer pool, without waiting for them:
    the session shards serve meanwhile. Their names exist from here on, so a session shard's summary
    job finds them, and its calls wait while they start and load (a client's memory query is
    answered ModelsLoading instead). /readyz says what is still loading."""
    memory = [
        create_named(MemoryShard, name, config, i, config, cluster_id)
        for i, name in enumerate(memory_names(config))
    ]
    embedders = [
        create_named(EmbedderActor, name, config, config, role="model") for name in embedder_names(config)
    ] + [  # indexing's own, at the lowest CPU priority (engine.runtime.model_actors)
        create_named(EmbedderActor, name, config, config, BACKGROUND_NICE, role="model")
        for name in background_embedder_names(config)
    ]
    pool = create_named(SummarizerPool, POOL_NAME, config, config, role="control")
    return {"memory": memory, "embedders": embedders, "pool": pool}


def find_memory_shards(config: EngineConfig, timeout_s: float = 60.0) -> NamedActors:
    """Look the memory shard actors up by name, waiting while the process that creates them starts."""
    names = memory_names(config)
    return NamedActors(names, config, find_named(names, config, timeout_s))


def stop_memory(actors: dict[str, Any]) -> None:
    """Graceful stop: the summarizers go first, then every memory shard takes a final snapshot."""
    try:
        if actors["pool"] is not None:
            ray.get(actors["pool"].shutdown.remote(), timeout=60)
            ray.kill(actors["pool"], no_restart=True)
        for embedder in actors["embedders"]:
            ray.kill(embedder, no_restart=True)
        ray.get([m.shutdown.remote() for m in actors["memory"]], timeout=300)
        for shard in actors["memory"]:
            ray.kill(shard, no_restart=True)
    except RAY_ERRORS as exc:
        log.warning(
            "a memory actor did not stop cleanly; its log still holds every change", extra={"error": str(exc)}
        )
