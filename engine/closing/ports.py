"""What a closing job calls outside its session shard, as one Protocol.

The job is given these; engine.runtime.closing_ports implements them over Ray, and the unit tests
with plain functions over a real MemoryStore. Each call is one round trip from the session shard.
The shard's own log is not a port: the job is given the shard's `handle` as `record`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from engine.memory.ops import MemoryOp
from engine.models.summarizer import Conversation
from engine.sessions.ops import SessionOp

from .model_pass import Verdict

# The shard's own ops, applied and logged before it answers (HostedShard.handle): one answer per op.
Record = Callable[[Sequence[SessionOp]], Awaitable[list[Any]]]


class ClosingPorts(Protocol):
    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized rows, one per text; not urgent (a client's query goes first)."""
        ...

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        """Memory ops to the organization's memory shard, one batch; an answer per op (an error
        the shard refused that op with, as a value). Reads go this way too (a closing job reads
        back the turn vectors live memory wrote: SessionTurnVectors)."""
        ...

    async def upgrade(self, conversation: Conversation) -> Verdict:
        """The model pass's verdict on a conversation, from the summarizer pool, which makes and
        judges the model's text (engine.closing.model_pass); skipped at once while the pass is
        paused or off."""
        ...
