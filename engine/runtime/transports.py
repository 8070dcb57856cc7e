"""How a gateway reaches shards: a transport sends a batch of ops to one shard and returns one
result per op (a value, or the EngineError that op raised). Failures of the call itself raise.

The protocols the gateway is written against, and their Ray implementations: RaySessionTransport
to the session shards, RayMemoryTransport to the memory shards and the embedders. The data path
only: a gateway's calls go straight to the actors, never through the cluster's controller.
(The in-process doubles the tests use are in tests/support/local_shards.py.)
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from ray.exceptions import ActorDiedError

from engine.config import EngineConfig
from engine.errors import ModelsLoading, Unavailable, unwrap
from engine.memory.ops import MemoryOp
from engine.sessions.events import Interest, Page, Position, Reader
from engine.sessions.ops import SessionOp

from .model_actors import find_pool
from .ray_actors import RAY_ERRORS, NamedActors

# How long a gateway waits for a model actor's `describe` before it counts the actor as still
# starting (its process not up yet): a loaded model answers at once.
LOADING_PROBE_S = 2.0


class ShardTransport(Protocol):
    @property
    def shards(self) -> int: ...

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]: ...

    async def metrics(self, shard: int) -> list[Any]:
        """The shard's Prometheus families (engine.runtime.shard_metrics)."""
        ...


class SessionTransport(ShardTransport, Protocol):
    """Session shards also serve their change feeds (engine.sessions.events)."""

    async def read_events(
        self,
        shard: int,
        after: Position | None,
        interests: frozenset[Interest],
        limit: int,
        wait_s: float,
        reader: Reader | None = None,
    ) -> Page: ...


class MemoryTransport(ShardTransport, Protocol):
    """Memory shards take memory ops; the embedder turns texts into normalized vectors."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def ready(self) -> dict[str, Any]: ...


class RaySessionTransport:
    """The gateway's way to the session shards."""

    def __init__(self, actors: NamedActors) -> None:
        self._actors = actors

    @property
    def shards(self) -> int:
        return len(self._actors)

    async def call(self, shard: int, ops: Sequence[SessionOp]) -> list[Any]:
        answers: list[Any] = await self._actors.invoke(shard, "answer", "shard", ops)
        return answers

    async def read_events(
        self,
        shard: int,
        after: Position | None,
        interests: frozenset[Interest],
        limit: int,
        wait_s: float,
        reader: Reader | None = None,
    ) -> Page:
        page: Page = unwrap(
            await self._actors.invoke(shard, "read_events", "shard", after, interests, limit, wait_s, reader)
        )
        return page

    async def metrics(self, shard: int) -> list[Any]:
        families: list[Any] = unwrap(await self._actors.invoke(shard, "metrics", "shard"))
        return families


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

    async def pool_metrics(self) -> list[Any]:
        """The summarizer pool's series: the model pass's verdicts and state (engine.closing.model_pass)."""
        families: list[Any] = await find_pool(self._config, 0).metrics.remote()
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
        summarizer = {
            key: summarizers[key] for key in ("state", "workers", "error", "model_pass") if key in summarizers
        }
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
