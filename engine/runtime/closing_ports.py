"""RayClosingPorts: a session shard's closing jobs' and live memory's calls outside the shard
(engine.closing.ports), over Ray: indexing's embedders (at the lowest CPU priority,
engine.runtime.model_actors), the organization's memory shard, the summarizer pool.

Every actor is looked up without waiting, once, and kept: a wait would block the shard's event
loop, so a lookup that misses fails the call, and with it the job's attempt (it is retried);
indexing's own embedders are the exception, as the query embedders stand in for them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError

from engine.closing.model_pass import Verdict
from engine.config import EngineConfig
from engine.errors import Unavailable
from engine.memory.ops import MemoryOp
from engine.models.summarizer import Conversation
from engine.routing import memory_shard_for

from .memory_shards import find_memory_shards
from .model_actors import find_embedders, find_pool
from .names import background_embedder_names
from .ray_actors import RAY_ERRORS, NamedActors, find_named
from .transports import LOADING_PROBE_S, RayMemoryTransport

log = logging.getLogger(__name__)

# A backstop for an indexing embed that never returns (its actor wedged): the tick or the job's
# attempt fails and is tried again. Generous, as at the lowest CPU priority a long session's embed
# rightly waits for the CPU under load.
INDEXING_EMBED_TIMEOUT_S = 600.0


class RayClosingPorts:
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._memory: RayMemoryTransport | None = None
        self._pool: Any = None
        self._indexing = IndexingEmbedders(config, self._found_memory)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._indexing.embed(texts)

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        memory = self._found_memory()
        return await memory.call(memory_shard_for(org, memory.shards), ops)

    async def upgrade(self, conversation: Conversation) -> Verdict:
        if self._pool is None:
            self._pool = find_pool(self._config, timeout_s=0)
        try:
            verdict: Verdict = await self._pool.upgrade.remote(conversation)
        except ActorDiedError:
            self._pool = None  # stopped and created again: look it up afresh next time
            raise
        return verdict

    def _found_memory(self) -> RayMemoryTransport:
        """The memory shards, with the query embedders (indexing's fallback)."""
        if self._memory is None:
            config = self._config
            self._memory = RayMemoryTransport(
                config, find_memory_shards(config, timeout_s=0), find_embedders(config, timeout_s=0)
            )
        return self._memory


class IndexingEmbedders:
    """Indexing's embeds (not urgent): on its own embedders at the lowest CPU priority (models.
    embedder.background_replicas) while one is found, answers `describe` within LOADING_PROBE_S
    and has its model; otherwise on the query embedders, so an indexing embedder that is missing,
    pending (no node can place it), starting or failed never stalls indexing. A call that dies
    midway raises Unavailable (the tick or the job's attempt is tried again), and every call is
    bounded by INDEXING_EMBED_TIMEOUT_S."""

    def __init__(self, config: EngineConfig, query: Callable[[], RayMemoryTransport]) -> None:
        self._config = config
        self._query = query  # looked up at the first call that needs it
        self._names = background_embedder_names(config)
        self._background: NamedActors | None = None
        self._next = itertools.count()
        self._ready: set[int] = set()  # the background embedders seen with their model loaded
        self._falling_back = False

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return await asyncio.wait_for(self._embed(list(texts)), INDEXING_EMBED_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable("indexing's embedder did not answer in time", {}, "Retry shortly.") from None

    async def _embed(self, texts: list[str]) -> np.ndarray:
        which = await self._usable()
        if which is not None:
            assert self._background is not None
            try:
                result = await self._background[which].embed.remote(texts, False)
            except RAY_ERRORS as exc:
                self._ready.discard(which)
                if isinstance(exc, ActorDiedError):
                    self._background.died(which)
                raise Unavailable("indexing's embedder is unavailable", {}, "Retry shortly.") from exc
            if not isinstance(result, Unavailable):
                self._fell_back(None)
                vectors: np.ndarray = result
                return vectors
            self._ready.discard(which)  # restarted since, and its model failed to load
            self._fell_back(result.message)
        return await self._query().embed(texts, urgent=False)

    async def _usable(self) -> int | None:
        """A background embedder to call, or None to use the query embedders."""
        if not self._names:
            return None  # background_replicas 0: indexing shares the query embedders
        if self._background is None:
            try:
                handles = find_named(self._names, self._config, timeout_s=0)
            except Unavailable as exc:
                self._fell_back(exc.message)
                return None
            self._background = NamedActors(self._names, self._config, handles)
        which = next(self._next) % len(self._background)
        if which in self._ready:
            return which
        try:
            described = await asyncio.wait_for(self._background[which].describe.remote(), LOADING_PROBE_S)
        except TimeoutError:
            self._fell_back(f"{self._names[which]} does not answer (pending or starting)")
            return None
        except RAY_ERRORS as exc:
            if isinstance(exc, ActorDiedError):
                self._background.died(which)
            self._fell_back(f"{self._names[which]} is unavailable: {type(exc).__name__}")
            return None
        if described.get("state") in ("loading", "failed"):
            self._fell_back(f"{self._names[which]} is {described.get('error') or described['state']}")
            return None
        self._ready.add(which)
        return which

    def _fell_back(self, why: str | None) -> None:
        """Log each change between the background embedders and the fallback once."""
        if why is not None and not self._falling_back:
            log.warning("indexing embeds on the query embedders", extra={"reason": why})
        elif why is None and self._falling_back:
            log.info("indexing embeds on its own embedders again")
        self._falling_back = why is not None
