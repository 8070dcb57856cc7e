"""The one way a session's content goes into (and out of) its organization's session memory.

An open session's turns go in as they are said (`index_live`, run by engine.closing.live), with a
stand-in entry for the session that filters and matches read. A closed session becomes the rest of
its index entries (engine.memory.sessions, memory's own schema): the turns live memory had not put
in yet and one entry for the whole session, replacing the stand-in; later its summary. The session
entry's vector is the mean of every turn's (those live memory put in, read back, and the fresh
ones). Their texts are embedded and the upserts sent to the organization's memory shard through
the job's ports (engine.closing.ports), so the rule is tested without Ray. `forget_sessions` takes
everything of some sessions out.

Every upsert names its entries by session id and seq, so running it
again (a retried job, after a model actor died half way) replaces the same entries: nothing is lost
and nothing doubles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.memory.ops import ForgetSessions, MemoryOp, SessionTurnVectors, UpsertVectors
from engine.memory.sessions import (
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    ClosedSession,
    Entry,
    live_session_entry,
    session_entry,
    session_vector,
    summary_entry,
    turn_entries,
)
from engine.sessions.ops import LiveInput, SummaryInput

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


async def index_session(ports: ClosingPorts, org: str, session: ClosedSession, live_through: int = 0) -> int:
    """Upsert the session's turns after `live_through` (those through it live memory put in while
    it was open) and its session entry, in one batch; the number of entries. The session entry's
    vector is made from all its turns' vectors, the ones live memory put in read back, so it is
    the vector indexing every turn at close would make."""
    turns = turn_entries(session)
    whole = session_entry(session, turns)
    known = await _turn_vectors(ports, org, session.session_id, live_through) if live_through else {}
    fresh = [turn for turn in turns if turn.metadata["seq"] not in known]
    vectors = await _vectors(ports, [turn.text for turn in fresh])
    if turns:
        by_seq = {**known, **{turn.metadata["seq"]: row for turn, row in zip(fresh, vectors, strict=True)}}
        whole_vector = session_vector(np.vstack([by_seq[turn.metadata["seq"]] for turn in turns]))
    else:  # nothing said that is indexed (only tool messages, say): the name stands for it
        whole_vector = await _vectors(ports, [session.name])
    ops = _upserts(org, SESSION_MEMORY, fresh, vectors) + _upserts(
        org, SESSIONS_OF_MEMORY, [whole], whole_vector
    )
    await _checked(ports, org, ops)  # one call: one batch of the memory shard, one log record
    return len(turns) + 1


async def _turn_vectors(
    ports: ClosingPorts, org: str, session_id: str, through: int
) -> dict[int, np.ndarray]:
    """The vectors session memory holds of the session's turns through seq `through`, by seq."""
    (found,) = await ports.index(org, [SessionTurnVectors(org, session_id)])
    if isinstance(found, BaseException):
        raise found
    if found["vectors"] is None:
        return {}
    return {seq: row for seq, row in zip(found["seqs"], found["vectors"], strict=True) if seq <= through}


def live_session(session_id: str, live: LiveInput, messages: Sequence[Any]) -> ClosedSession:
    """What live memory indexes of an open session: `messages`, its next ones after live_through,
    as `closed_session` takes a closed one's."""
    return ClosedSession(
        session_id,
        live.name,
        live.created_at,
        live.ended_at,
        [m[:2] for m in messages],
        times=[max(m.created_at, live.created_at) for m in messages],
        status=live.status.value,
        first_seq=live.live_through + 1,
    )


async def index_live(
    ports: ClosingPorts, sessions: Mapping[str, Sequence[tuple[ClosedSession, int]]]
) -> None:
    """Upsert these sessions' new turns and a stand-in entry for each (engine.memory.sessions,
    live_session_entry): (session, its message count) by organization. One embed for all of them,
    then one call per organization (one batch of its memory shard, one memory-log record). A
    stand-in's vector is the mean of the turns put in with it (its name's, where there are none):
    it takes part in no ranking."""
    flat = [(org, session, count) for org, group in sessions.items() for session, count in group]
    turns = [turn_entries(session) for _, session, _ in flat]
    texts = [turn.text for said in turns for turn in said]
    names = [session.name for (_, session, _), said in zip(flat, turns, strict=True) if not said]
    vectors = await _distinct_vectors(ports, texts + names)
    name_rows = iter(vectors[len(texts) :])
    ops: dict[str, list[MemoryOp]] = {}
    at = 0
    for (org, session, count), said in zip(flat, turns, strict=True):
        rows = vectors[at : at + len(said)]
        at += len(said)
        stand_in = session_vector(rows) if said else next(name_rows).reshape(1, -1)
        ops.setdefault(org, []).extend(
            _upserts(org, SESSION_MEMORY, said, rows)
            + _upserts(org, SESSIONS_OF_MEMORY, [live_session_entry(session, count)], stand_in)
        )
    for org, org_ops in ops.items():
        await _checked(ports, org, org_ops)


async def index_summary(
    ports: ClosingPorts, org: str, session_id: str, text: str, method: str, *, made_at: int | None = None
) -> None:
    """Upsert the session's summary; `made_at` (epoch ms, default now) is when it counts as made."""
    entry = summary_entry(session_id, text, method, made_at=made_at)
    vectors = await _vectors(ports, [entry.text])
    await _checked(ports, org, _upserts(org, SESSIONS_OF_MEMORY, [entry], vectors))


async def forget_sessions(ports: ClosingPorts, org: str, session_ids: Sequence[str]) -> None:
    await _checked(ports, org, [ForgetSessions(org, tuple(session_ids))])


async def _distinct_vectors(ports: ClosingPorts, texts: Sequence[str]) -> np.ndarray:
    """`_vectors`, each distinct text embedded once (an agent says the same thing in many turns)."""
    distinct = list(dict.fromkeys(texts))
    if len(distinct) == len(texts):
        return await _vectors(ports, texts)
    rows = await _vectors(ports, distinct)
    at = {text: i for i, text in enumerate(distinct)}
    return rows[[at[text] for text in texts]]


async def _vectors(ports: ClosingPorts, texts: Sequence[str]) -> np.ndarray:
    parts = [await ports.embed(texts[i : i + TEXTS_PER_EMBED]) for i in range(0, len(texts), TEXTS_PER_EMBED)]
    return np.vstack(parts) if parts else np.zeros((0, 0), dtype=np.float32)


async def _checked(ports: ClosingPorts, org: str, ops: Sequence[MemoryOp]) -> None:
    for result in await ports.index(org, ops):
        if isinstance(result, BaseException):  # an EngineError the shard answered for that op
            raise result


def _upserts(org: str, namespace: str, entries: Sequence[Entry], vectors: np.ndarray) -> list[MemoryOp]:
    """An entry's text is kept and indexed for words; an empty one is not."""
    return [
        UpsertVectors(
            org,
            namespace,
            tuple(e.id for e in entries[i : i + ENTRIES_PER_UPSERT]),
            vectors[i : i + ENTRIES_PER_UPSERT],
            tuple(e.metadata for e in entries[i : i + ENTRIES_PER_UPSERT]),
            texts=tuple(e.text or None for e in entries[i : i + ENTRIES_PER_UPSERT]),
        )
        for i in range(0, len(entries), ENTRIES_PER_UPSERT)
    ]
