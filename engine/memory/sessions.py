"""Session memory: what a closed session becomes in its organization's `session-memory` namespace,
and how a query there finds prior sessions. Pure: no Ray, no models (vectors are passed in).

What is indexed, for each closed session:
- one entry per user or assistant message (`<session id>#<seq>`, kind `turn`): its own vector and
  its words. Tool and system messages are not indexed: tool output is mostly data, and a system
  prompt is the same in every session of an agent, so both would only add noise.
- one entry for the whole session (`<session id>`, kind `session`): the mean of its turns' vectors,
  and its name and every indexed message as one text, which gives BM25 over whole transcripts;
  its metadata is what a match shows (name, created_at, closed_at, message_count).
- once its summary is made, one entry for the summary (`<session id>#summary`, kind `summary`).

A query ranks entries six ways (dense and lexical, for turns, sessions and summaries), keeps each
session's best place in each ranking, and fuses the six rankings of sessions by reciprocal rank
fusion with weights tuned on the recall benchmark (benchmarks/recall.py). Each match is one
session, with its summary and its best-matching messages (`highlights`, with their `seq`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fusion import fuse
from .index import Match, Mode, NamespaceIndex, Where

SESSION_MEMORY = "session-memory"
INDEXED_ROLES = frozenset({"user", "assistant"})
MAX_TURN_CHARS = 4000  # a longer message is indexed by its beginning (the embedder reads ~256 tokens)
MAX_HIGHLIGHTS = 3
HIGHLIGHT_CHARS = 400
# The keys a session-memory filter may name: the session entry's metadata.
FILTER_KEYS = frozenset({"session_id", "name", "created_at", "closed_at", "message_count"})

# Tuned on benchmarks/recall.py (see benchmarks/README.md, "Session memory recall").
WEIGHTS: Mapping[str, float] = {
    "turn_dense": 1.0,
    "turn_lexical": 1.0,
    "session_dense": 0.5,
    "session_lexical": 1.0,
    "summary_dense": 0.5,
    "summary_lexical": 0.25,
}
SIGNALS_OF_MODE: Mapping[str, tuple[str, ...]] = {
    "dense": ("turn_dense", "session_dense", "summary_dense"),
    "lexical": ("turn_lexical", "session_lexical", "summary_lexical"),
    "hybrid": tuple(WEIGHTS),
}


@dataclass(slots=True, frozen=True)
class Entry:
    """One index entry: `text` is what is embedded and indexed for words."""

    id: str
    text: str
    metadata: dict[str, Any]


@dataclass(slots=True, frozen=True)
class ClosedSession:
    session_id: str
    name: str
    created_at: int
    closed_at: int | None
    messages: Sequence[tuple[str, str]]  # (role, content), seq = position + 1


def turn_entries(session: ClosedSession) -> list[Entry]:
    """The session's indexed messages, in order."""
    return [
        Entry(
            f"{session.session_id}#{seq}",
            content[:MAX_TURN_CHARS],
            {"session_id": session.session_id, "kind": "turn", "seq": seq, "role": role},
        )
        for seq, (role, content) in enumerate(session.messages, start=1)
        if role in INDEXED_ROLES and content.strip()
    ]


def session_entry(session: ClosedSession, turns: Sequence[Entry]) -> Entry:
    text = "\n".join([session.name, *(turn.text for turn in turns)])
    metadata = {
        "session_id": session.session_id,
        "kind": "session",
        "name": session.name,
        "created_at": session.created_at,
        "closed_at": session.closed_at,
        "message_count": len(session.messages),
    }
    return Entry(session.session_id, text, metadata)


def session_vector(turn_vectors: np.ndarray, dimension: int) -> np.ndarray:
    """The session entry's vector: the normalized mean of its turns' (a session with no indexed
    turn gets its name's vector instead: the caller embeds the session entry's text)."""
    mean = turn_vectors.mean(axis=0) if len(turn_vectors) else np.zeros(dimension, dtype=np.float32)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32).reshape(1, -1)


def summary_entry(session_id: str, text: str, method: str) -> Entry:
    return Entry(
        f"{session_id}#summary", text, {"session_id": session_id, "kind": "summary", "method": method}
    )


# -- finding sessions ---------------------------------------------------------------------------------


def _kind(metadata: Mapping[str, Any]) -> str:
    # Engines before turns were indexed stored one entry per session, its summary (no `kind`).
    return str(metadata.get("kind", "legacy"))


def search(
    index: NamespaceIndex,
    vector: np.ndarray | None,
    text: str | None,
    top_k: int,
    where: Where | None = None,
    mode: Mode = "hybrid",
    weights: Mapping[str, float] = WEIGHTS,
) -> list[Match]:
    """Prior sessions for a query, one match each (id = session id), best first."""
    candidates = _candidates(index, where)
    if candidates is not None and not candidates:
        return []
    depth = max(20 * top_k, 200)  # turns: many per session, so look deep enough to cover sessions
    signals = SIGNALS_OF_MODE[mode]
    dense = index.dense(vector, depth, candidates) if vector is not None and mode != "lexical" else []
    lexical = index.words(text or "", depth, candidates) if text and mode != "dense" else []
    rankings: dict[str, list[str]] = {signal: [] for signal in signals}
    turn_hits: dict[str, dict[int, float]] = {}  # session -> {FAISS id of a turn: its fused weight}
    summaries: dict[str, str] = {}
    for how, hits in (("dense", dense), ("lexical", lexical)):
        for rank, (faiss_id, _) in enumerate(hits, start=1):
            found = index.entry(faiss_id)
            if found is None:
                continue
            metadata = found[1]
            session_id, kind = str(metadata.get("session_id")), _kind(metadata)
            if kind == "legacy":
                kind = "summary"
                summaries.setdefault(session_id, str(metadata.get("summary", "")))
            ranking = rankings.get(f"{kind}_{how}")
            if ranking is None:
                continue
            ranking.append(session_id)
            if kind == "turn":
                turns = turn_hits.setdefault(session_id, {})
                turns[faiss_id] = turns.get(faiss_id, 0.0) + 1.0 / (60 + rank)
    fused = fuse(rankings, weights)[:top_k]
    return [
        _match(index, session_id, score, turn_hits.get(session_id, {}), summaries)
        for session_id, score in fused
    ]


def _candidates(index: NamespaceIndex, where: Where | None) -> set[int] | None:
    """A filter is on sessions (their session entries); every entry of a chosen session is a
    candidate."""
    if not where:
        return None
    chosen = index.select({**where, "kind": "session"}) or set()
    session_ids = set()
    for faiss_id in chosen:
        found = index.entry(faiss_id)
        if found is not None:
            session_ids.add(found[1]["session_id"])
    return index.select({"session_id": {"$in": sorted(session_ids)}}) if session_ids else set()


def _match(
    index: NamespaceIndex,
    session_id: str,
    score: float,
    turns: Mapping[int, float],
    summaries: Mapping[str, str],
) -> Match:
    session = _entry_of(index, session_id)
    summary_entry_ = _entry_of(index, f"{session_id}#summary")
    metadata: dict[str, Any] = dict(session[1]) if session else {"session_id": session_id}
    metadata.pop("kind", None)
    if summary_entry_ is not None:
        metadata["summary"] = index.text(summary_entry_[0])
        metadata["summary_method"] = summary_entry_[1].get("method")
    else:
        metadata["summary"] = summaries.get(session_id)
    best = sorted(turns, key=lambda faiss_id: -turns[faiss_id])[:MAX_HIGHLIGHTS]
    highlights = []
    for faiss_id in best:
        found = index.entry(faiss_id)
        if found is not None:
            content = index.text(faiss_id) or ""
            highlights.append(
                {"seq": found[1]["seq"], "role": found[1]["role"], "content": content[:HIGHLIGHT_CHARS]}
            )
    metadata["highlights"] = highlights  # best first
    return Match(session_id, score, metadata)


def _entry_of(index: NamespaceIndex, external: str) -> tuple[int, dict[str, Any]] | None:
    faiss_id = index.faiss_id(external)
    if faiss_id is None:
        return None
    found = index.entry(faiss_id)
    return None if found is None else (faiss_id, found[1])
