"""The model actors: Embedder actors, and the summarizer pool (a queue actor in front of
Summarizer actors, which run at the lowest CPU priority), where the model's pass over extractive
summaries is judged and paused (engine.closing.model_pass)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from engine.closing.model_pass import ACCEPTANCE_FILE, Acceptance, ModelPass, Verdict
from engine.config import EngineConfig
from engine.errors import ModelsLoading, SummaryFailed, Unavailable
from engine.logs import setup_logging
from engine.models.embed_queue import EmbedQueue
from engine.models.embedder import Embedder
from engine.models.files import summarizer_directory
from engine.models.summarizer import Conversation, Summarizer, Summary

from .names import POOL_NAME, embedder_names, summarizer_names
from .ray_actors import RAY_ERRORS, NamedActors, create_named, find_named
from .shard_metrics import ModelPassMetrics

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19  # indexing's embedders: the lowest CPU priority


@ray.remote(max_restarts=-1, max_task_retries=0)
class EmbedderActor:
    """Starts at once and loads its model in a thread: while it loads, `describe` says so, a
    client's call (urgent) is answered ModelsLoading, and indexing waits for the model.

    `nice`: the process's CPU niceness. Indexing's own embedders (models.embedder.
    background_replicas) run at the lowest priority, as the summarizers: the embedder's threads
    take every core, so beside appends at the same priority they slow the appends down; at the
    lowest they take only what appends and queries leave idle (benchmarks/README.md, Live memory)."""

    def __init__(self, config: EngineConfig, nice: int = 0) -> None:
        setup_logging(config.log_level)
        if nice:
            os.nice(nice)
        self._config = config
        self._embedder: Any = None  # engine.models.embedder.Embedder, once loaded
        self._queue: EmbedQueue | None = None
        self._failure: str | None = None
        # Async actor: __init__ runs on the actor's event loop.
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        models = self._config.models
        try:
            self._embedder = await asyncio.to_thread(_load_embedder, self._config)
        except Exception as exc:  # noqa: BLE001 - said by describe and to callers; the start goes on
            self._failure = failure_line(exc)
            log.error("the embedder failed to load", extra={"error": self._failure})
            return
        self._queue = EmbedQueue(self._embedder.embed, self._embedder.dimension, chunk=models.embedder.chunk)

    async def embed(self, texts: Sequence[str], urgent: bool = True) -> np.ndarray | Unavailable:
        """A client waits on an urgent call (a query); indexing is not urgent (engine.models.embed_queue).
        Before the model is loaded, an urgent call is answered ModelsLoading (as a value, as shards
        answer errors) and the rest wait for it."""
        if self._queue is None and not urgent:
            await asyncio.shield(self._loading)
        if self._queue is None:
            return self._not_loaded()
        return await self._queue.embed(texts, urgent=urgent)

    def _not_loaded(self) -> Unavailable:
        if self._failure is None:
            return ModelsLoading(["embedder"])
        return Unavailable(
            f"the embedder failed to load: {self._failure}",
            {"model": "embedder", "failed": True},
            "The embedder's model could not be loaded; the server's log says why. Sessions are served "
            "meanwhile; memory queries answer again once the model is fixed and the server restarted.",
        )

    async def describe(self) -> dict[str, Any]:
        if self._queue is None:
            return {"state": "failed", "error": self._failure} if self._failure else {"state": "loading"}
        waiting = self._queue.waiting()
        return {
            "model": self._embedder.name,
            "dimension": self._embedder.dimension,
            "device": self._embedder.device,
            "state": "busy" if any(waiting.values()) else "idle",
            "waiting_texts": waiting,
        }


# `describe` runs in a thread of its own ("probe"): a generate call holds the actor's one default
# thread for as long as it runs (a minute is ordinary), and `session-engine status` and the pool
# must see a busy summarizer as busy, not as one that does not answer.
@ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"probe": 1})  # type: ignore[call-overload]
class SummarizerActor:
    def __init__(self, config: EngineConfig, directory: str, name: str) -> None:
        setup_logging(config.log_level)
        # This process only, the lowest priority by default: a summary is ready before the model
        # runs (its pass is an upgrade), so appends, queries and query embedding always go first;
        # at 19 it shares the lowest priority with indexing's embedders (none is lower).
        os.nice(config.models.summarizer.nice)
        summarizer_config = config.models.summarizer.model_copy(update={"path": Path(directory)})
        self._summarizer = Summarizer(
            summarizer_config,
            config.data_dir,
            device=config.models.device,
            threads=config.models.torch_threads,
        )
        self._summarizer.name = name
        # (conversations, monotonic start) of the generate call in progress; one assignment, so the
        # probe thread reads a whole value
        self._generating: tuple[int, float] | None = None

    def summarize(self, conversations: Sequence[Conversation]) -> list[Summary]:
        self._generating = (len(conversations), time.monotonic())
        try:
            return self._summarizer.summarize(conversations)
        finally:
            self._generating = None

    @ray.method(concurrency_group="probe")
    def describe(self) -> dict[str, Any]:
        s = self._summarizer
        found = {"model": s.name, "kind": "seq2seq" if s.seq2seq else "causal", "device": s.device}
        generating = self._generating
        if generating is None:
            return {**found, "state": "idle"}
        count, since = generating
        return {**found, "state": "busy", "generating": count, "busy_s": round(time.monotonic() - since, 1)}


class _WorkerDied(SummaryFailed):
    """The summarizer actor itself failed (died, or is restarting)."""


@ray.remote(max_restarts=-1, max_task_retries=0)
class SummarizerPool:
    """The queue in front of the Summarizer actors. An upgrade waits here until a summarizer is
    free; a free summarizer takes every waiting one up to `batch_size` into one generate call. The
    pool judges each text (ModelPass), so it sees every verdict of the cluster and pauses the pass
    when the model keeps none (engine.closing.model_pass); the shard's job puts a kept text into
    session memory (engine.closing.job)."""

    def __init__(self, config: EngineConfig) -> None:
        setup_logging(config.log_level)
        self._config = config
        self._workers: list[Any] = []
        self._queue: asyncio.Queue[tuple[Conversation, asyncio.Future[Summary | None]]] = asyncio.Queue()
        self._loops: list[asyncio.Task[None]] = []
        self.batches: collections.deque[int] = collections.deque(maxlen=100)  # recent batch sizes
        self._generating = 0  # conversations in the summarizers' generate calls now
        self._loaded = False
        self._failure: str | None = None
        summarizer = config.models.summarizer
        acceptance = Acceptance(
            summarizer.model_pass,
            summarizer.acceptance_window,
            str(summarizer.path) if summarizer.path is not None else "default",
            config.data_dir / "models" / ACCEPTANCE_FILE,
        )
        self._metrics = ModelPassMetrics()
        self._pass = ModelPass(acceptance, self._generate, self._judged)
        if not acceptance.active:
            # Off, or paused by the window a previous run saved: no model is loaded for nothing.
            self._loading: asyncio.Task[None] | None = None
            return
        # Started, not awaited: upgrades queue here while the summarizers load.
        self._loading = asyncio.get_running_loop().create_task(self._start_workers())

    async def _start_workers(self) -> None:
        """The summarizers, once the model directory is at hand, and their loops once each has loaded."""
        config = self._config
        try:
            # Once, here: the default model's GGUF conversion must not run in every summarizer at once.
            directory, name = await asyncio.to_thread(
                summarizer_directory, config.models.summarizer.path, config.data_dir
            )
            self._workers = [
                create_named(SummarizerActor, worker, config, config, str(directory), name, role="model")
                for worker in summarizer_names(config)
            ]
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(self._serve(worker)) for worker in self._workers]
            await asyncio.gather(*(w.describe.remote() for w in self._workers))
        except Exception as exc:  # noqa: BLE001 - said by describe; upgrades fail, and resume at the next start
            self._failure = failure_line(exc)
            log.error("the summarizer failed to load", extra={"error": self._failure})
            # No loop will ever serve them: each fails, so its shard's job backs off and leaves the
            # upgrade queued in the session for the next start, instead of holding a slot for ever.
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(self._not_loaded())
            return
        self._loaded = True

    async def describe(self) -> dict[str, Any]:
        model_pass = self._pass.acceptance.describe()
        if self._loading is None:
            return {"state": "idle", "workers": [], "waiting": 0, "model_pass": model_pass}
        if not self._loaded:
            state = {"state": "failed", "error": self._failure} if self._failure else {"state": "loading"}
            return {**state, "workers": [], "waiting": self._queue.qsize(), "model_pass": model_pass}
        workers = await asyncio.gather(*(w.describe.remote() for w in self._workers))
        waiting = self._queue.qsize()
        return {
            "state": "busy" if waiting or self._generating else "idle",
            "workers": workers,
            "waiting": waiting,
            "generating": self._generating,
            "recent_batches": list(self.batches)[-20:],
            "model_pass": model_pass,
        }

    async def upgrade(self, conversation: Conversation) -> Verdict:
        """The model pass's verdict on `conversation` (engine.closing.model_pass): skipped at once
        while the pass is paused or off."""
        return await self._pass.upgrade(conversation)

    async def metrics(self) -> list[Any]:
        """The model pass's series, for a gateway's /metrics (engine.runtime.shard_metrics)."""
        return self._metrics.families(self._pass.acceptance.active)

    async def _generate(self, conversation: Conversation) -> Summary | None:
        if self._failure is not None:
            raise self._not_loaded()
        future: asyncio.Future[Summary | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((conversation, future))
        return await future

    def _not_loaded(self) -> SummaryFailed:
        return SummaryFailed(f"the summarizer failed to load: {self._failure}")

    def _judged(self, verdict: Verdict) -> None:
        self._metrics.verdicts.labels(verdict.outcome).inc()

    async def shutdown(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        for task in self._loops:
            task.cancel()
        for worker in self._workers:
            ray.kill(worker)

    async def _serve(self, worker: Any) -> None:
        batch_size = self._config.models.summarizer.batch_size
        while True:
            batch = [await self._queue.get()]
            while len(batch) < batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if not self._pass.acceptance.active:
                # Paused while these waited: they are dropped unmade (skipped), not generated.
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                continue
            self.batches.append(len(batch))
            try:
                await self._run(worker, batch)
            except Exception as exc:  # never let one batch stop this summarizer's loop
                log.exception("summary batch failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(SummaryFailed(f"summary batch failed: {exc}"))
                if isinstance(exc, _WorkerDied):
                    await self._until_back(worker)

    async def _until_back(self, worker: Any, give_up_s: float = 300.0) -> None:
        """Ray restarts a summarizer that died; until it answers, this loop takes no jobs, so the
        waiting ones are not failed one after another (each failure costs a job an attempt)."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + give_up_s, 0.1
        while loop.time() < deadline:
            try:
                await asyncio.wait_for(worker.describe.remote(), timeout=10)
                return
            except (*RAY_ERRORS, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(
        self, worker: Any, batch: list[tuple[Conversation, asyncio.Future[Summary | None]]]
    ) -> None:
        self._generating += len(batch)
        try:
            results = await worker.summarize.remote([conversation for conversation, _ in batch])
        except RAY_ERRORS as exc:
            raise _WorkerDied(f"the summarizer actor died or restarted: {type(exc).__name__}") from None
        finally:
            self._generating -= len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller may have gone (a cancelled upgrade)
                future.set_result(result)


def _load_embedder(config: EngineConfig) -> Any:
    models = config.models
    return Embedder(
        models.embedder.path,
        device=models.device,
        batch_size=models.embedder.batch_size,
        threads=models.torch_threads,
    )


def failure_line(exc: BaseException) -> str:
    """One line for a model that failed to load: Ray's wrapping and the traceback left out."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]


def find_embedders(config: EngineConfig, timeout_s: float = 60.0) -> NamedActors:
    names = embedder_names(config)
    return NamedActors(names, config, find_named(names, config, timeout_s))


def find_pool(config: EngineConfig, timeout_s: float = 60.0) -> Any:
    return find_named([POOL_NAME], config, timeout_s)[0]
