"""Session memory: what a closed session becomes in its organization's `session-memory` namespace,
and how a query there finds prior sessions. Pure: no Ray, no models (vectors are passed in).

What is indexed, for each closed session:
- in `session-memory`, one entry per user or assistant message (`<session id>#<seq>`, kind
  `turn`): its vector and its words, each with the session's name on a first line (a message
  such as "we adopted a beagle" says nothing of whose beagle; the session's name often does).
  Tool and system messages are not indexed: tool output is mostly data, and a system prompt is
  the same in every session of an agent, so both would only add noise.
- in `session-memory/sessions` (a namespace only the engine reaches), one entry for the whole
  session (`<session id>`, kind `session`): the mean of its turns' vectors, and its name and
  every indexed message as one text, which gives BM25 over whole transcripts; its metadata is
  what a match shows (name, created_at, closed_at, message_count). Once its summary is made, one
  entry for the summary too (`<session id>#summary`, kind `summary`).

A query ranks entries six ways (dense and lexical for turns, sessions and summaries) and sessions a
seventh: by windows of turns, each an indexed message with the nearest indexed one on each side,
scored by the normalised mean of their vectors (`_windows`). A fact is often told over two or
three messages ("we got a dog" / "what's his name?" / "Biscuit"); the window holds it whole.
Windows are made at query time around the turns the dense search found, from the vectors already
stored, so they cost no memory, exist for open sessions as soon as their turns do, and need no
index of their own. (One earlier engine stored windows as entries, kind `window`: they rank
nowhere, and a shard drops them when it loads.) A query keeps each session's best score in each
ranking, and fuses the rankings of sessions (engine.memory.fusion: dense rankings min-max scaled,
lexical ones by their spread, weighted, summed) with weights tuned on both recall corpora
(benchmarks/README.md, "Session memory on conversations between friends"). A message said in
several sessions (a greeting, "thanks!") is left out of the turn rankings: it cannot tell them
apart. Each match is one session, with its summary and its best-matching messages (`highlights`,
with their `seq`; never a window), and its `relevance` (engine.memory.relevance): the fused score (0
or more, no upper bound) only ranks the sessions of one answer against each other, relevance says
how close the query is to what the session said, whatever else was found. A minimum relevance drops
matches below it; it never changes the order of the others.

A query may ask for memory as it stood at a moment (`as_of`, epoch ms): then it sees only the
entries that existed by then (`Past`): turns said by then (and so the windows made of them),
whole-session entries of sessions closed by then, summaries made by then. Without `as_of`
nothing of this is computed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from .fusion import Scale, fuse
from .index import Hits, Match, Mode, NamespaceIndex, Where
from .lexical import TERM_SET_LIMIT
from .relevance import relevance

SESSION_MEMORY = "session-memory"  # the namespace users query; it holds the turns
# Where the whole-session and summary entries go: a name the API refuses (it has a "/"), so only
# the engine reaches it.
SESSIONS_OF_MEMORY = "session-memory/sessions"
INDEXED_ROLES = frozenset({"user", "assistant"})
MAX_TURN_CHARS = 4000  # a longer message is indexed by its beginning (the embedder reads ~256 tokens)
MAX_HIGHLIGHTS = 3
HIGHLIGHT_CHARS = 400
# The keys a session-memory filter may name: the session entry's metadata.
FILTER_KEYS = frozenset({"session_id", "name", "created_at", "closed_at", "message_count", "status"})
# What a session entry indexed before entries carried a status counts as: only closing jobs of
# closed sessions indexed them.
UNSTATED_STATUS = "closed"
# Up to this many candidates the lexical index restricts its search to them, so what it answers is
# all there is; past it, it filters a deeper search of the whole index (engine.memory.lexical), and
# `_words` goes deeper again, from this many times the depth, when that came back short.
EXACT_LEXICAL_KEYS = TERM_SET_LIMIT  # the lexical index's own limit, not a copy
DEEPER_LEXICAL = 16

# A window's neighbour is the nearest indexed message within this many seqs on its side: tool and
# system messages between two messages are not indexed, and a later message is not there yet.
NEIGHBOUR_GAP = 8
# Windows are made around this many of the best turns the dense search found (its depth for the
# default top_k): deeper, their cost grows with top_k while what they add is at the bottom of a long
# answer, where the other rankings decide.
WINDOW_HITS = 200
# Tuned by benchmarks/fusion.py on both recall corpora, chosen on tuning sets and checked on held
# out ones (benchmarks/README.md, "Session memory on conversations between friends"). Lexical
# rankings are scaled by their spread (SCALES), so a small weight still counts where one session
# stands out from the rest.
WEIGHTS: Mapping[str, float] = {
    "turn_dense": 1.0,
    "turn_lexical": 0.05,
    "session_dense": 1.0,
    "session_lexical": 0.2,
    "summary_dense": 0.5,
    "summary_lexical": 0.1,
    "window_dense": 1.0,
}
SCALES: Mapping[str, Scale] = {
    signal: "spread" if signal.endswith("_lexical") else "range" for signal in WEIGHTS
}
# `mode: lexical` ranks by whole sessions' words, and a turn's a little: on the tuning sets that did
# as well as whole sessions alone, which beat the hybrid's lexical weights, and a session with no
# whole-session entry yet (open, or not indexed since its close) is found by its turns.
WEIGHTS_OF_MODE: Mapping[str, Mapping[str, float]] = {
    "hybrid": WEIGHTS,
    "dense": WEIGHTS,
    "lexical": {"session_lexical": 1.0, "turn_lexical": 0.05},
}
# What a session without a whole-session entry can be ranked by: its turns, and the windows made of
# them. The session entry and the summary are written when its closing job indexes it.
TURN_SIGNALS = ("turn_dense", "turn_lexical", "window_dense")
SIGNALS_OF_MODE: Mapping[str, tuple[str, ...]] = {
    "dense": ("turn_dense", "session_dense", "summary_dense", "window_dense"),
    "lexical": ("turn_lexical", "session_lexical", "summary_lexical"),
    "hybrid": tuple(WEIGHTS),
}


@dataclass(slots=True, frozen=True)
class Entry:
    """One index entry: `text` is what is embedded and indexed for words (empty: none is kept)."""

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
    times: Sequence[int] = ()  # each message's created_at, in the same order; () when unknown
    status: str = UNSTATED_STATUS  # the session's status (a SessionStatus value) when indexed
    first_seq: int = 1  # the seq of messages[0]: live memory indexes an open session's newer part


def turn_entries(session: ClosedSession) -> list[Entry]:
    """The session's indexed messages, in order. Each is embedded and indexed with the session's
    name on a first line (see `said`): a message such as "we adopted a beagle" says nothing of
    whose beagle, and the name of the session it was said in often does."""
    heading = " ".join(session.name.split())
    entries = []
    for seq, (role, content) in enumerate(session.messages, start=session.first_seq):
        if role not in INDEXED_ROLES or not content.strip():
            continue
        metadata: dict[str, Any] = {
            "session_id": session.session_id,
            "kind": "turn",
            "seq": seq,
            "role": role,
        }
        if session.times:
            metadata["created_at"] = session.times[seq - session.first_seq]
        text = f"{heading}\n{content[:MAX_TURN_CHARS]}"
        entries.append(Entry(f"{session.session_id}#{seq}", text, metadata))
    return entries


def said(turn_text: str) -> str:
    """The message of a turn entry's text, without the session name's line."""
    return turn_text.partition("\n")[2]


def session_entry(session: ClosedSession, turns: Sequence[Entry]) -> Entry:
    """The whole session's entry."""
    text = "\n".join([session.name, *(said(turn.text) for turn in turns)])
    metadata: dict[str, Any] = {
        "session_id": session.session_id,
        "kind": "session",
        "name": session.name,
        "created_at": session.created_at,
        "closed_at": session.closed_at,
        "message_count": len(session.messages),
        "status": session.status,
    }
    return Entry(session.session_id, text, metadata)


def live_session_entry(session: ClosedSession, message_count: int) -> Entry:
    """What stands for an open (or completed, or expired) session in live memory until a close
    indexes it whole: its name, and the metadata filters and matches read. `live` keeps it out of
    the whole-session rankings (its text and vector are not its transcript's): its turns rank."""
    metadata = {
        "session_id": session.session_id,
        "kind": "session",
        "name": session.name,
        "created_at": session.created_at,
        "closed_at": session.closed_at,  # when it ended (completed or expired), else None
        "message_count": message_count,
        "status": session.status,
        "live": True,
    }
    return Entry(session.session_id, session.name, metadata)


def session_vector(turn_vectors: np.ndarray) -> np.ndarray:
    """The session entry's vector: the normalized mean of its turns' (at least one)."""
    mean: np.ndarray = turn_vectors.mean(axis=0).astype(np.float32).reshape(1, -1)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def summary_entry(session_id: str, text: str, method: str, *, made_at: int | None = None) -> Entry:
    """The summary's entry; `made_at` (epoch ms, default now) is when it went into memory, which
    `as_of` goes by."""
    made_at = int(time.time() * 1000) if made_at is None else made_at
    metadata = {"session_id": session_id, "kind": "summary", "method": method, "created_at": made_at}
    return Entry(f"{session_id}#summary", text, metadata)


# -- finding sessions ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionIndexes:
    """An organization's session memory: its turns, and its sessions' whole entries and summaries
    (kept apart so that each ranking looks equally deep, however many turns a session has)."""

    turns: NamespaceIndex | None
    whole: NamespaceIndex | None


def _kind(metadata: Mapping[str, Any]) -> str:
    # Engines before turns were indexed stored one entry per session, its summary (no `kind`).
    return str(metadata.get("kind", "legacy"))


@dataclass(slots=True)
class Signals:
    """A query's rankings of sessions, one per signal: (session id, its best score), best first."""

    rankings: dict[str, list[tuple[str, float]]]
    turn_hits: dict[str, dict[int, float]]  # session -> {FAISS id of a matching turn: its weight}
    legacy: dict[str, str]  # session -> summary, from entries of older engines


def search(
    indexes: SessionIndexes,
    vector: np.ndarray | None,
    text: str | None,
    top_k: int,
    where: Where | None = None,
    mode: Mode = "hybrid",
    *,
    min_relevance: float | None = None,
    as_of: int | None = None,
) -> list[Match]:
    """Prior sessions for a query, one match each (id = session id), best first. Each has its
    relevance when there is a query vector (in every mode: the relevance is by meaning); with
    `min_relevance`, the top_k matches less relevant than it are left out; with `as_of`, memory
    is searched as it stood then (`Past`)."""
    chosen = _chosen_sessions(indexes.whole, where)
    past = None if as_of is None else Past.of(indexes, as_of, chosen)
    found = _signals(indexes, vector, text, top_k, chosen, mode, past)
    ranked = _carried(indexes, found, WEIGHTS_OF_MODE[mode], past)[:top_k]
    relevant = relevance_of(indexes, vector, [session_id for session_id, _ in ranked], past=past)
    matches = [
        _match(
            indexes,
            session_id,
            score,
            relevant.get(session_id),
            found.turn_hits.get(session_id, {}),
            found.legacy,
            past,
        )
        for session_id, score in ranked
    ]
    if min_relevance is None:
        return matches
    return [m for m in matches if m.relevance is not None and m.relevance >= min_relevance]


def relevance_of(
    indexes: SessionIndexes,
    vector: np.ndarray | None,
    session_ids: Sequence[str],
    *,
    past: Past | None = None,
) -> dict[str, float]:
    """Each session's relevance to the query vector (engine.memory.relevance)."""
    return {
        session_id: relevance(cosine)
        for session_id, cosine in closest_of(indexes, vector, session_ids, past=past).items()
    }


def closest_of(
    indexes: SessionIndexes,
    vector: np.ndarray | None,
    session_ids: Sequence[str],
    *,
    past: Past | None = None,
) -> dict[str, float]:
    """What a session's relevance is made of, from its own entries only (so it does not depend on
    what else was found): the cosine similarity of the query to its closest indexed message. A
    session with none (only tool messages; an older engine's summary entry) has its session
    entry's instead (its name). Windows, made at query time, are not entries and never count: a
    mean of messages is not something the session said. With `past`, only the entries that existed
    then count."""
    if vector is None or not session_ids:
        return {}
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    chosen = {"session_id": {"$in": list(session_ids)}}
    closest = _closest(indexes.turns, query, chosen, None if past is None else past.turns)
    missing = [session_id for session_id in session_ids if session_id not in closest]
    if missing:
        wholes = {"session_id": {"$in": missing}, "kind": "session"}
        closest.update(_closest(indexes.whole, query, wholes, None if past is None else past.whole))
    return {session_id: closest[session_id] for session_id in session_ids if session_id in closest}


def _closest(
    index: NamespaceIndex | None,
    query: np.ndarray,
    where: Where,
    existing: Collection[int] | None,
) -> dict[str, float]:
    """Per session, the best cosine similarity between the query and its entries that `where`
    keeps, of the `existing` ones (None: all) (their stored vectors, read back: exact, whatever the
    index's kind)."""
    if index is None or index.dimension != len(query):
        return {}
    selected = index.select(where) or set()
    faiss_ids = sorted(selected if existing is None else selected.intersection(existing))
    best: dict[str, float] = {}
    for faiss_id, cosine in zip(faiss_ids, (index.vectors(faiss_ids) @ query).tolist(), strict=True):
        entry = index.entry(faiss_id)
        if entry is not None:
            session_id = str(entry[1].get("session_id"))
            best[session_id] = max(best.get(session_id, -1.0), min(1.0, cosine))
    return best


def signals(
    indexes: SessionIndexes,
    vector: np.ndarray | None,
    text: str | None,
    top_k: int,
    where: Where | None = None,
    mode: Mode = "hybrid",
    *,
    past: Past | None = None,
) -> Signals:
    """Each signal's ranking of sessions for a query (what `search` fuses; the tuning benchmark
    fuses them with other weights); with `past`, of the entries that existed then only."""
    return _signals(indexes, vector, text, top_k, _chosen_sessions(indexes.whole, where), mode, past)


def _signals(
    indexes: SessionIndexes,
    vector: np.ndarray | None,
    text: str | None,
    top_k: int,
    chosen: Sequence[str] | None,
    mode: Mode,
    past: Past | None,
) -> Signals:
    found = Signals({signal: [] for signal in SIGNALS_OF_MODE[mode]}, {}, {})
    # Turns: many per session, so look deep enough to reach many sessions.
    for index, depth, existing in (
        (indexes.turns, max(20 * top_k, 200), None if past is None else past.turns),
        (indexes.whole, max(4 * top_k, 100), None if past is None else past.whole),
    ):
        if index is None:
            continue
        candidates = None if chosen is None else index.select({"session_id": {"$in": chosen}})
        if existing is not None:
            candidates = set(existing) if candidates is None else candidates & existing
        if index is indexes.whole:
            # Open sessions' stand-ins rank nowhere (`_rank` skips them): kept out of the search
            # itself, or many would crowd the sessions that rank out of its depth. Without any, as
            # cheap as before (one equality's posting list). Unfiltered, a few are outrun by a
            # deeper search; more than its depth, by every other entry as the candidates, so the
            # search never walks more than twice its depth for them.
            stand_ins = index.select({"live": True}) or set()
            if stand_ins and candidates is None and len(stand_ins) <= depth:
                depth += len(stand_ins)
            elif stand_ins and candidates is None:
                candidates = set(index.ids_below(index.next_id)) - stand_ins
            elif stand_ins and candidates is not None:
                candidates = candidates - stand_ins
        if candidates is not None and not candidates:
            continue
        # A few candidates in an approximate index are compared with the query one by one (its
        # filtered search would come back short): engine.memory.index, NamespaceIndex.dense.
        dense = index.dense(vector, depth, candidates) if vector is not None and mode != "lexical" else []
        lexical = _words(index, text or "", depth, candidates) if text and mode != "dense" else []
        for how, hits in (("dense", dense), ("lexical", lexical)):
            _rank(index, how, hits, found)
        if index is indexes.turns and vector is not None and "window_dense" in found.rankings:
            found.rankings["window_dense"] = _windows(index, vector, dense, existing)
    return found


def _windows(
    index: NamespaceIndex, vector: np.ndarray, hits: Hits, existing: Collection[int] | None
) -> list[tuple[str, float]]:
    """Sessions by their best window around the turns the dense search found first (`hits`, the
    first WINDOW_HITS): for each found turn, the windows centred on it and on its neighbours, each
    scored by the cosine of the query with the normalised mean of its messages' stored vectors
    (`session_vector`). Windows centred on the found turns only cost less and ranked the recall
    corpora's sessions within a question or two of these, but lost the held-out `when` questions to
    BM25 by that much (benchmarks/README.md, "Session memory at scale"). Of the `existing` turns
    only (None: all), so `as_of` sees the windows of the turns said by then."""
    Turn = tuple[int, int]  # (seq, FAISS id)
    near: dict[tuple[str, int], tuple[Turn | None, Turn | None]] = {}  # (session, seq) -> neighbours

    def beside(session_id: str, seq: int, step: int) -> Turn | None:
        for gap in range(1, NEIGHBOUR_GAP + 1):
            faiss_id = index.faiss_id(f"{session_id}#{seq + step * gap}")
            if faiss_id is not None and (existing is None or faiss_id in existing):
                return seq + step * gap, faiss_id
        return None

    def neighbours(session_id: str, seq: int) -> tuple[Turn | None, Turn | None]:
        key = (session_id, seq)
        held = near.get(key)
        if held is None:
            held = near[key] = (beside(session_id, seq, -1), beside(session_id, seq, 1))
        return held

    centres: dict[tuple[str, int], int] = {}  # (session, seq) -> its FAISS id, in the order found
    for faiss_id, _ in hits[:WINDOW_HITS]:
        entry = index.entry(faiss_id)
        if entry is None or entry[1].get("kind") != "turn":
            continue
        session_id, seq = str(entry[1]["session_id"]), int(entry[1]["seq"])
        centres[(session_id, seq)] = faiss_id
        for other in neighbours(session_id, seq):
            if other is not None:
                centres[(session_id, other[0])] = other[1]
    if not centres:
        return []
    # Each window as the rows of its (up to) three turns in `stored`; a missing neighbour is the
    # zero row at its end. One read of every turn's stored vector, then three gathers.
    rows: dict[int, int] = {}
    members = np.full((len(centres), 3), -1, dtype=np.int64)
    for w, ((session_id, seq), faiss_id) in enumerate(centres.items()):
        before, after = neighbours(session_id, seq)
        members[w, 1] = rows.setdefault(faiss_id, len(rows))
        if before is not None:
            members[w, 0] = rows.setdefault(before[1], len(rows))
        if after is not None:
            members[w, 2] = rows.setdefault(after[1], len(rows))
    stored = np.vstack([index.vectors(list(rows)), np.zeros((1, index.dimension), dtype=np.float32)])
    sums = stored[members[:, 0]] + stored[members[:, 1]] + stored[members[:, 2]]
    norms = np.maximum(np.linalg.norm(sums, axis=1), np.finfo(np.float32).tiny)
    cosines = (sums @ np.asarray(vector, dtype=np.float32).reshape(-1)) / norms
    best: dict[str, float] = {}
    for (session_id, _), cosine in zip(centres, cosines.tolist(), strict=True):
        best[session_id] = max(best.get(session_id, -1.0), min(1.0, cosine))
    return sorted(best.items(), key=lambda pair: -pair[1])


def _words(index: NamespaceIndex, text: str, depth: int, candidates: set[int] | None) -> Hits:
    """The entries that best match the query's words, of the candidates (None: all). For many
    candidates the lexical index searches the whole index a little past the depth and drops the
    others (engine.memory.lexical), so when the others match better (later turns, under `as_of`)
    it can answer short or empty: then search the whole index deeper, doubling, and keep the
    candidates, until enough are found or every matching entry was seen."""
    hits = index.words(text, depth, candidates)
    if candidates is None or len(candidates) <= EXACT_LEXICAL_KEYS or len(hits) >= depth:
        return hits
    k = DEEPER_LEXICAL * depth
    while True:
        found = index.words(text, k)
        hits = [hit for hit in found if hit[0] in candidates][:depth]
        if len(hits) >= depth or len(found) < k or k >= len(index):
            return hits
        k *= 2


def _rank(index: NamespaceIndex, how: str, hits: Sequence[tuple[int, float]], into: Signals) -> None:
    """Sessions in the order of their best hit, into the ranking of each hit's kind. A matching
    turn also counts toward its session's highlights, by its rank among the turns (a turn found by
    both dense and lexical search comes first). An earlier engine's window entry ranks nowhere."""
    shared = _shared_turns(index, hits)
    rank = 0
    for faiss_id, score in hits:
        entry = index.entry(faiss_id)
        if entry is None or faiss_id in shared:
            continue
        metadata = entry[1]
        if metadata.get("live"):
            continue  # an open session's stand-in (live_session_entry): for filters and matches only
        session_id, kind = str(metadata.get("session_id")), _kind(metadata)
        if kind == "window":
            continue
        rank += 1
        if kind == "legacy":
            kind = "summary"
            into.legacy.setdefault(session_id, str(metadata.get("summary", "")))
        ranking = into.rankings.get(f"{kind}_{how}")
        if ranking is None:
            continue
        ranking.append((session_id, score))
        if kind == "turn":
            turns = into.turn_hits.setdefault(session_id, {})
            turns[faiss_id] = turns.get(faiss_id, 0.0) + 1.0 / (60 + rank)


def _shared_turns(index: NamespaceIndex, hits: Sequence[tuple[int, float]]) -> set[int]:
    """The turns among these hits whose words were said in more than one session ("Hi, it's
    Maya again", "Thanks!"): they cannot tell sessions apart, and a greeting said in every session
    would otherwise fill the top of the turn rankings."""
    sessions_of: dict[str, set[str]] = {}
    turns_of: dict[str, list[int]] = {}
    for faiss_id, _ in hits:
        found = index.entry(faiss_id)
        if found is None or found[1].get("kind") != "turn":
            continue
        words = " ".join(said(index.text(faiss_id) or "").lower().split())
        sessions_of.setdefault(words, set()).add(str(found[1]["session_id"]))
        turns_of.setdefault(words, []).append(faiss_id)
    return {faiss_id for words, ids in turns_of.items() if len(sessions_of[words]) > 1 for faiss_id in ids}


def _carried(
    indexes: SessionIndexes, found: Signals, weights: Mapping[str, float], past: Past | None
) -> list[tuple[str, float]]:
    """The fused ranking, each session's sum divided by the weight of the signals it can be listed
    in, rather than by all of them. Not every session has every kind of entry: an open, completed
    or expired session, or a closed one not yet indexed (or closed after `past`'s moment), has only
    its turns (and their windows); one whose summary failed has no summary. Against the full
    weight, such a session would rank below sessions that match the query less but have more kinds
    of entry. Each is looked up by id (its session and summary entries)."""
    fused = fuse(found.rankings, weights, SCALES)
    present = {name: w for name, w in weights.items() if w > 0 and name in found.rankings}
    total = sum(present.values())
    if not fused or total <= 0 or set(present) <= set(TURN_SIGNALS):
        return fused
    # A session a turn or window ranking lists has a turn: no need to look.
    with_turns = {session_id for name in TURN_SIGNALS for session_id, _ in found.rankings.get(name, ())}
    rescored = []
    for session_id, score in fused:
        kinds = _kinds_of(indexes, session_id, past, session_id in with_turns)
        carried = sum(w for name, w in present.items() if name.rpartition("_")[0] in kinds)
        rescored.append((session_id, score * total / carried if 0 < carried < total else score))
    return sorted(rescored, key=lambda pair: -pair[1])  # stable: a tie keeps the fused order


def _kinds_of(
    indexes: SessionIndexes, session_id: str, past: Past | None, has_turns: bool = False
) -> set[str]:
    """The kinds of entry a session has in memory (as of `past`): turns (assumed: a session found
    at all has some, or is found by its name), windows where it has a turn (one with only tool
    messages has none; `has_turns`: known to have one), and its whole-session entry and summary."""
    kinds = {"turn", "window"} if has_turns else {"turn"}
    if not has_turns and indexes.turns is not None:
        held = indexes.turns.holding("session_id", session_id)
        legacy = indexes.turns.faiss_id(session_id)  # an older engine's one entry: not a turn
        turns = held if legacy is None else set(held) - {legacy}
        if turns and (past is None or not past.turns.isdisjoint(turns)):
            kinds.add("window")
    whole = indexes.whole
    existed = None if past is None else past.whole
    session = _entry_of(whole, session_id)
    if session is not None and (existed is None or session[0] in existed):
        kind = _kind(session[1])
        if kind == "legacy":  # an older engine's one entry per session, its summary
            kinds.add("summary")
        elif kind == "session" and not session[1].get("live"):
            kinds.add("session")
    summary = _entry_of(whole, f"{session_id}#summary")
    if summary is not None and (existed is None or summary[0] in existed):
        kinds.add("summary")
    return kinds


def _chosen_sessions(whole: NamespaceIndex | None, where: Where | None) -> list[str] | None:
    """The sessions a filter keeps (it is on their session entries); None: no filter. `status` is
    checked here rather than by the index, since entries without one count as UNSTATED_STATUS."""
    if not where:
        return None
    if whole is None:
        return []
    rest = {key: condition for key, condition in where.items() if key != "status"}
    kept = whole.select({**rest, "kind": "session"}) or set()
    entries = [entry for entry in map(whole.entry, kept) if entry is not None]
    if "status" in where:
        entries = [entry for entry in entries if _status_holds(entry[1], where["status"])]
    return sorted({str(entry[1]["session_id"]) for entry in entries})


def _status_holds(metadata: Mapping[str, Any], condition: Any) -> bool:
    """A status condition (a value, or $eq, $ne, $in of a list: the API takes no other) on a
    session entry."""
    status = metadata.get("status", UNSTATED_STATUS)
    if not isinstance(condition, Mapping):
        return bool(status == condition)
    among = condition.get("$in", [status])
    return (
        isinstance(among, list | tuple)
        and status in among
        and status == condition.get("$eq", status)
        and status != condition.get("$ne", object())
    )


@dataclass(slots=True, frozen=True)
class Past:
    """The entries of each index that existed at `as_of` (their FAISS ids): a turn said by then; a
    session entry of a session closed
    by then (its whole transcript existed); a summary made by then. A session still open then is found
    by its turns said by then only. A turn counts from its message's time or its session's creation,
    whichever is later: a fork or an import copies messages with the times they were first said, but
    they were not in this session before it existed. Entries indexed before they carried times count
    as said when their session was created (a turn) and made when it was closed (a summary, and an
    older engine's one entry per session).

    Checked entry by entry, in Python, on the memory shard: a query with `as_of` costs a walk of
    every entry of the sessions its filter keeps (of every session without one), which grows with
    the organization's memory; a query without `as_of` builds none."""

    turns: frozenset[int]
    whole: frozenset[int]

    @classmethod
    def of(cls, indexes: SessionIndexes, as_of: int, chosen: Sequence[str] | None = None) -> Past:
        """`chosen`: the sessions a filter keeps (None: all); only their entries are walked."""
        turns, whole = _entries(indexes.turns, chosen), _entries(indexes.whole, chosen)
        sessions = {
            str(metadata.get("session_id")): metadata for _, metadata in whole if _kind(metadata) == "session"
        }
        return cls(
            frozenset(i for i, metadata in turns if _at_or_before(_existed_at(metadata, sessions), as_of)),
            frozenset(i for i, metadata in whole if _at_or_before(_existed_at(metadata, sessions), as_of)),
        )


def _entries(
    index: NamespaceIndex | None, chosen: Sequence[str] | None
) -> list[tuple[int, Mapping[str, Any]]]:
    """The entries of these sessions (None: every entry)."""
    if index is None or (chosen is not None and not chosen):
        return []
    if chosen is None:
        ids: Collection[int] = index.ids_below(index.next_id)
    else:
        ids = index.select({"session_id": {"$in": list(chosen)}}) or set()
    return [(faiss_id, entry[1]) for faiss_id in ids if (entry := index.entry(faiss_id)) is not None]


def _existed_at(metadata: Mapping[str, Any], sessions: Mapping[str, Mapping[str, Any]]) -> Any:
    """When an entry's content existed: a turn's message was said in its session (not before the
    session was created: a fork's or an import's copies), a session was closed (its whole
    transcript), a summary was made. An older engine's one entry per session was made at close."""
    kind = _kind(metadata)
    if kind in ("session", "legacy"):
        return metadata.get("closed_at")
    session = sessions.get(str(metadata.get("session_id")), {})
    if kind == "summary":
        return metadata.get("created_at", session.get("closed_at"))
    said_at, created_at = metadata.get("created_at"), session.get("created_at")
    if _is_time(said_at) and _is_time(created_at):
        return max(said_at, created_at)
    return said_at if "created_at" in metadata else created_at


def _is_time(at: Any) -> TypeGuard[int]:
    return isinstance(at, int) and not isinstance(at, bool)


def _at_or_before(at: Any, as_of: int) -> bool:
    """An entry with no time to go by (a session not closed, a turn of an unknown session) is
    not known to have existed then."""
    return _is_time(at) and at <= as_of


def _match(
    indexes: SessionIndexes,
    session_id: str,
    score: float,
    relevance: float | None,
    turns: Mapping[int, float],
    legacy: Mapping[str, str],
    past: Past | None,
) -> Match:
    whole = indexes.whole
    session = _entry_of(whole, session_id)
    summary = _entry_of(whole, f"{session_id}#summary")
    if summary is not None and past is not None and summary[0] not in past.whole:
        summary = None  # made after as_of
    metadata: dict[str, Any] = dict(session[1]) if session else {"session_id": session_id}
    for internal in ("kind", "live", "windows"):
        metadata.pop(internal, None)
    if session is not None:
        metadata.setdefault("status", UNSTATED_STATUS)  # what a status filter takes it for
    if summary is not None and whole is not None:
        metadata["summary"] = whole.text(summary[0])
        metadata["summary_method"] = summary[1].get("method")
    else:  # none yet (the job indexes turns first), or an older engine's, which had no method
        metadata["summary"] = legacy.get(session_id)
        metadata["summary_method"] = None
    highlights = []
    if indexes.turns is not None:
        for faiss_id in sorted(turns, key=lambda faiss_id: -turns[faiss_id])[:MAX_HIGHLIGHTS]:
            found = indexes.turns.entry(faiss_id)
            if found is not None:
                content = said(indexes.turns.text(faiss_id) or "")
                highlights.append(
                    {"seq": found[1]["seq"], "role": found[1]["role"], "content": content[:HIGHLIGHT_CHARS]}
                )
    metadata["highlights"] = highlights  # best first
    return Match(session_id, score, metadata, relevance)


def _entry_of(index: NamespaceIndex | None, external: str) -> tuple[int, dict[str, Any]] | None:
    faiss_id = None if index is None else index.faiss_id(external)
    if index is None or faiss_id is None:
        return None
    found = index.entry(faiss_id)
    return None if found is None else (faiss_id, found[1])
