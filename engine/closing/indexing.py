"""The one way a closed session's content goes into (and out of) its organization's session memory.

A closed session becomes index entries (engine.memory.sessions, memory's own schema): its turns and
one entry for the whole session; later its summary. Their texts are embedded and the upserts sent
to the organization's memory shard through the job's ports (engine.closing.ports), so the rule is
tested without Ray. `forget_sessions` takes everything of some sessions out.

Every upsert names its entries by session id and seq, so running it again (a retried job, after a
model actor died half way) replaces the same entries: nothing is lost and nothing doubles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.memory.ops import ForgetSessions, MemoryOp, UpsertVectors
from engine.memory.sessions import (
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    ClosedSession,
    Entry,
    session_entry,
    session_vector,
    summary_entry,
    turn_entries,
)
from engine.sessions.ops import SummaryInput

from .ports import ClosingPorts

ENTRIES_PER_UPSERT = 256  # one memory-log record each: a record holds at most this many vectors
TEXTS_PER_EMBED = 256


def closed_session(session_id: str, job: SummaryInput) -> ClosedSession:
    """What memory indexes of a session whose job read `job`: its messages as (role, content), each
    one's time (what a query `as_of` a moment goes by), and its status. A message's time is never
    before the session's creation: a fork or an import copies messages with the times they were
    first said, and a query as of a moment before the copy must not find them in this session."""
    return ClosedSession(
        session_id,
        job.name,
        job.created_at,
        job.ended_at,
        [m[:2] for m in job.messages],
        times=[max(m.created_at, job.created_at) for m in job.messages],
        status=job.status.value,
    )


async def index_session(ports: ClosingPorts, org: str, session: ClosedSession) -> int:
    """Upsert the session's turns and its session entry, in one batch; the number of entries."""
    turns = turn_entries(session)
    whole = session_entry(session, turns)
    vectors = await _vectors(ports, [turn.text for turn in turns])
    if turns:
        whole_vector = session_vector(vectors)
    else:  # nothing said that is indexed (only tool messages, say): the name stands for it
        whole_vector = await _vectors(ports, [session.name])
    ops = _upserts(org, SESSION_MEMORY, turns, vectors) + _upserts(
        org, SESSIONS_OF_MEMORY, [whole], whole_vector
    )
    await _checked(ports, org, ops)  # one call: one batch of the memory shard, one log record
    return len(turns) + 1


async def index_summary(
    ports: ClosingPorts, org: str, session_id: str, text: str, method: str, *, made_at: int | None = None
) -> None:
    """Upsert the session's summary; `made_at` (epoch ms, default now) is when it counts as made."""
    entry = summary_entry(session_id, text, method, made_at=made_at)
    vectors = await _vectors(ports, [entry.text])
    await _checked(ports, org, _upserts(org, SESSIONS_OF_MEMORY, [entry], vectors))


async def forget_sessions(ports: ClosingPorts, org: str, session_ids: Sequence[str]) -> None:
    await _checked(ports, org, [ForgetSessions(org, tuple(session_ids))])


async def _vectors(ports: ClosingPorts, texts: Sequence[str]) -> np.ndarray:
    parts = [await ports.embed(texts[i : i + TEXTS_PER_EMBED]) for i in range(0, len(texts), TEXTS_PER_EMBED)]
    return np.vstack(parts) if parts else np.zeros((0, 0), dtype=np.float32)


async def _checked(ports: ClosingPorts, org: str, ops: Sequence[MemoryOp]) -> None:
    for result in await ports.index(org, ops):
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
