"""The one way a session's content goes into (and out of) its organization's session memory.

`SessionIndexer` turns a closed session into index entries (engine.memory.sessions), embeds their
texts and sends the upserts to the organization's memory shard; later the same for its summary,
and `forget` takes everything of a session out. It is given two calls, `embed` and `send`; the Ray
layer only provides them (engine.runtime), so the rule itself is tested without Ray.

Every upsert names its entries by session id and seq, so running it again (a retried job, after a
model actor died half way) replaces the same entries: nothing is lost and nothing doubles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from .ops import ForgetSessions, MemoryOp, UpsertVectors
from .sessions import (
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    ClosedSession,
    Entry,
    session_entry,
    session_vector,
    summary_entry,
    turn_entries,
)

Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]  # normalized rows, one per text
Send = Callable[[str, Sequence[MemoryOp]], Awaitable[list[Any]]]  # ops to an organization's shard

ENTRIES_PER_UPSERT = 256  # one log record each: 256 vectors of 384 floats is about 0.5 MB
TEXTS_PER_EMBED = 256


class SessionIndexer:
    def __init__(self, embed: Embed, send: Send) -> None:
        self._embed = embed
        self._send = send

    async def index_session(self, org: str, session: ClosedSession) -> int:
        """Upsert the session's turns and its session entry; the number of entries."""
        turns = turn_entries(session)
        whole = session_entry(session, turns)
        vectors = await self._vectors([turn.text for turn in turns])
        if turns:
            whole_vector = session_vector(vectors)
        else:  # nothing said that is indexed (only tool messages, say): the name stands for it
            whole_vector = await self._vectors([session.name])
        ops = _upserts(org, SESSION_MEMORY, turns, vectors) + _upserts(
            org, SESSIONS_OF_MEMORY, [whole], whole_vector
        )
        await self._checked(org, ops)  # one call: one batch of the memory shard, one log record
        return len(turns) + 1

    async def index_summary(self, org: str, session_id: str, text: str, method: str) -> None:
        entry = summary_entry(session_id, text, method)
        await self._checked(
            org, _upserts(org, SESSIONS_OF_MEMORY, [entry], await self._vectors([entry.text]))
        )

    async def forget(self, org: str, session_ids: Sequence[str]) -> None:
        await self._checked(org, [ForgetSessions(org, tuple(session_ids))])

    async def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        parts = [
            await self._embed(texts[i : i + TEXTS_PER_EMBED]) for i in range(0, len(texts), TEXTS_PER_EMBED)
        ]
        return np.vstack(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    async def _checked(self, org: str, ops: Sequence[MemoryOp]) -> None:
        for result in await self._send(org, ops):
            if isinstance(result, BaseException):  # an EngineError the shard answered for that op
                raise result


def _upserts(org: str, namespace: str, entries: Sequence[Entry], vectors: np.ndarray) -> list[MemoryOp]:
    return [
        UpsertVectors(
            org,
            namespace,
            tuple(e.id for e in entries[i : i + ENTRIES_PER_UPSERT]),
            vectors[i : i + ENTRIES_PER_UPSERT],
            tuple(e.metadata for e in entries[i : i + ENTRIES_PER_UPSERT]),
            texts=tuple(e.text for e in entries[i : i + ENTRIES_PER_UPSERT]),
        )
        for i in range(0, len(entries), ENTRIES_PER_UPSERT)
    ]
