"""The memory shard actors (vector memory, sharded by organization): creating them with the model
actors they index through, finding and stopping them, and the gateway's transport to them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorDiedError

from engine.config import EngineConfig
from engine.errors import LogWriteFailed, ModelsLoading, Unavailable, unwrap
from engine.logs import setup_logging
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import MemoryOp, MemoryStats, QueryVectors
from engine.storage.identity import ShardIdentity
from engine.storage.layout import memory_directory

from . import upkeep
from .hosted import HostedShard
from .model_actors import EMBEDDER_NAME, POOL_NAME, EmbedderActor, SummarizerPool, find_pool
from .ray_actors import RAY_ERRORS, NamedActors, create_named, find_named
from .shard_metrics import MemoryShardMetrics

log = logging.getLogger(__name__)

MEMORY_SHARD_NAME = "memory-shard-{index}"
# How long a gateway waits for a model actor's `describe` before it counts the actor as still
# starting (its process not up yet): a loaded model answers in milliseconds.
LOADING_PROBE_S = 2.0


def index_params(config: EngineConfig) -> IndexParams:
    m = config.memory
    return IndexParams(m.hnsw_above, m.hnsw_m, m.hnsw_ef_construction, m.hnsw_ef_search)


@ray.remote(max_restarts=-1, max_task_retries=0)
class MemoryShard(HostedShard):
    """Hosts one DurableMemory: batches of upserts, deletes and queries in arrival order, each
    batch's changes logged before it answers; snapshot and log-sync timers beside them. It serves
    only its own directory (engine.runtime.hosted)."""

    KIND = "memory"
    _durable: DurableMemory | None

    def __init__(self, index: int, config: EngineConfig, cluster_id: str) -> None:
        setup_logging(config.log_level)
        self._snapshot_lock = asyncio.Lock()
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
                upkeep.resume_writes_forever(durable, lambda: None, "memory shard", self._index)
            ),
        ]
        if self._config.durability.fsync == "everysec":
            self._timers.append(loop.create_task(upkeep.sync_forever(durable, "memory shard", self._index)))

    def _store(self) -> DurableMemory:
        assert self._durable is not None
        return self._durable

    async def handle(self, ops: Sequence[MemoryOp]) -> list[Any]:
        if (refused := self._refused(len(ops))) is not None:
            return refused
        started = time.perf_counter()
        try:
            results = self._store().commit(ops)  # read-only while its log cannot be written
        except LogWriteFailed:
            upkeep.fail_stop("memory shard", self._index)
        self._metrics.timer(any(isinstance(op, QueryVectors) for op in ops))(time.perf_counter() - started)
        return results

    async def metrics(self) -> list[Any]:
        """This shard's series, for a gateway's /metrics (engine.runtime.shard_metrics)."""
        if self._durable is None:
            return self._metrics.families(None, None)
        durable = self._durable
        held = [(index.kind, namespace, len(index)) for (_, namespace), index in durable.store.namespaces()]
        return [
            *self._metrics.families(durable.disk_status(), durable.recovery.seconds),
            *self._metrics.memory_families(held),
        ]

    def _counts(self) -> dict[str, Any]:
        durable = self._store()
        return {
            "shards": self._config.memory.shards,
            "recovered": durable.recovery.report(),
            **durable.store.apply(MemoryStats()),
        }

    async def snapshot(self) -> dict[str, Any]:
        durable = self._store()
        async with self._snapshot_lock:
            write = durable.begin_snapshot()
            result = await asyncio.to_thread(write)
            durable.finish_snapshot(result)
            self._metrics.snapshot_seconds.observe(result.seconds)
            log.info("memory snapshot written", extra={"shard": self._index, **result.report()})
            return result.report()

    async def shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._durable is None:
            return
        async with self._snapshot_lock:
            self._durable.close(snapshot=True)
            self._durable = None
            self._refusal = Unavailable(f"memory shard {self._index} is stopped", {"reason": "stopped"})


# -- creating and finding the actors -------------------------------------------------------------


def memory_names(config: EngineConfig) -> list[str]:
    return [MEMORY_SHARD_NAME.format(index=i) for i in range(config.memory.shards)]


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
        create_named(EmbedderActor, EMBEDDER_NAME.format(index=i), config, config, role="model")
        for i in range(config.models.embedder.replicas)
    ]
    pool = create_named(SummarizerPool, POOL_NAME, config, config, role="control")
    return {"memory": memory, "embedders": embedders, "pool": pool}


def find_memory_shards(config: EngineConfig, timeout_s: float = 60.0) -> NamedActors:
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


class RayMemoryTransport:
    """The gateway's way to the memory shards and the embedders."""

    def __init__(self, config: EngineConfig, memory: NamedActors, embedders: NamedActors) -> None:
        self._config = config
        self._memory = memory
        self._embedders = embedders
        self._next = itertools.count()
        self._loaded: set[int] = set()  # the embedders this gateway has seen loaded

    @property
    def shards(self) -> int:
        return len(self._memory)

    async def call(self, shard: int, ops: Sequence[MemoryOp]) -> list[Any]:
        return await self._memory.call(shard, ops, "memory shard")

    async def metrics(self, shard: int) -> list[Any]:
        families: list[Any] = unwrap(await self._memory.invoke(shard, "metrics", "memory shard"))
        return families

    async def embed(self, texts: Sequence[str], *, urgent: bool = True) -> np.ndarray:
        """Urgent: a client waits for it. Indexing is not, and goes after (engine.models.embed_queue).
        While the model loads, an urgent call raises ModelsLoading and the others wait."""
        which = next(self._next) % len(self._embedders)
        if urgent and which not in self._loaded:
            await self._check_loaded(which)
        try:
            vectors: np.ndarray = unwrap(await self._embedders[which].embed.remote(list(texts), urgent))
        except RAY_ERRORS as exc:
            if isinstance(exc, ActorDiedError):
                self._embedders.died(which)
            raise Unavailable("the embedder is unavailable", {}, "Retry shortly.") from exc
        return vectors

    async def _check_loaded(self, which: int) -> None:
        """Until this gateway has seen an embedder loaded, a client's call asks it first: one whose
        process is still starting does not answer yet, and the client is told ModelsLoading at once
        instead of waiting for it. (A loaded embedder that restarts answers ModelsLoading itself.)"""
        try:
            described = await asyncio.wait_for(self._embedders[which].describe.remote(), LOADING_PROBE_S)
        except TimeoutError:
            raise ModelsLoading(["embedder"]) from None
        except RAY_ERRORS:
            return  # the call itself says what is wrong
        if described.get("state") == "loading":
            raise ModelsLoading(["embedder"])
        self._loaded.add(which)

    async def ready(self) -> dict[str, Any]:
        """What each model says of itself (engine.runtime.model_actors): the embedder's `describe`,
        and the summarizer pool's state with its summarizers'. A model actor that does not answer
        within LOADING_PROBE_S is still starting: {"state": "loading"}; one that Ray cannot reach
        (restarting, died, not found) is {"state": "unavailable", "error": ...}. Never raises: a
        model that is down leaves sessions served (/readyz stays a 200)."""
        which = next(self._next) % len(self._embedders)

        async def pool() -> dict[str, Any]:
            try:
                found = find_pool(self._config, 0)
            except Unavailable as exc:
                return {"state": "unavailable", "error": exc.message}
            return await self._probe(found, "the summarizer pool")

        embedder, summarizers = await asyncio.gather(
            self._probe(self._embedders[which], "the embedder", lambda: self._embedders.died(which)), pool()
        )
        summarizer = {key: summarizers[key] for key in ("state", "workers", "error") if key in summarizers}
        return {"embedder": embedder, "summarizer": summarizer}

    @staticmethod
    async def _probe(actor: Any, what: str, died: Callable[[], None] | None = None) -> dict[str, Any]:
        try:
            described: dict[str, Any] = await asyncio.wait_for(actor.describe.remote(), LOADING_PROBE_S)
        except TimeoutError:
            return {"state": "loading"}
        except RAY_ERRORS as exc:
            if isinstance(exc, ActorDiedError) and died is not None:
                died()  # looked up again by the next call
            why = f"{what} is restarting or unreachable ({type(exc).__name__})"
            return {"state": "unavailable", "error": why}
        return described
