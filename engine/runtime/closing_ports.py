"""RayClosingPorts: a session shard's closing jobs' calls outside the shard (engine.closing.ports),
over Ray: indexing's embedders (at the lowest CPU priority, engine.runtime.model_actors), the
organization's memory shard, the summarizer pool.

Every actor is looked up without waiting, once, and kept: a wait would block the shard's event
loop, so a lookup that misses fails the call, and with it the job's attempt (it is retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError

from engine.closing.model_pass import Verdict
from engine.config import EngineConfig
from engine.memory.ops import MemoryOp
from engine.models.summarizer import Conversation
from engine.routing import memory_shard_for

from .memory_shards import find_memory_shards
from .model_actors import find_indexing_embedders, find_pool
from .transports import RayMemoryTransport


class RayClosingPorts:
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._memory: RayMemoryTransport | None = None
        self._pool: Any = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._found_memory().embed(texts, urgent=False)

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
        if self._memory is None:
            config = self._config
            self._memory = RayMemoryTransport(
                config, find_memory_shards(config, timeout_s=0), find_indexing_embedders(config, timeout_s=0)
            )
        return self._memory
