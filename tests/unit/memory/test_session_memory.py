"""Session memory: what a closed session becomes in its organization's memory, and how a query
finds prior sessions (engine.memory.sessions, through engine.closing.indexing and a real MemoryStore,
with a deterministic bag-of-words embedder instead of the model)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from engine.closing.indexing import forget_sessions, index_live, index_session, index_summary
from engine.errors import ValidationFailed
from engine.memory import sessions
from engine.memory.index import IndexParams
from engine.memory.ops import MemoryOp, QueryVectors, UpsertVectors
from engine.memory.sessions import (
    SCALES,
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    SIGNALS_OF_MODE,
    WEIGHTS,
    ClosedSession,
    Past,
    SessionIndexes,
    closest_of,
    said,
    search,
    session_entry,
    signals,
    turn_entries,
)
from engine.memory.store import MemoryStore
from engine.models.summarizer import Conversation, Summary

DIM = 64


def embed(texts: Sequence[str]) -> np.ndarray:
    """Words hashed into 64 buckets: texts that share words point the same way."""
    rows = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            rows[i, sum(map(ord, word)) % DIM] += 1.0
        rows[i, DIM - 1] += 0.01  # never all zeros
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Memory:
    """Session memory as a closing job reaches it (engine.closing.ports), over a MemoryStore."""

    def __init__(self) -> None:
        self.store = MemoryStore(IndexParams())

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return embed(texts)

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        results = self.store.apply_batch(list(ops))
        self.store.take_journal()
        return results

    async def summarize(self, conversation: Conversation) -> Summary:
        raise AssertionError("session memory never asks for a summary")

    def close(self, org: str, sid: str, name: str, *messages: tuple[str, str], at: int = 1000) -> None:
        session = ClosedSession(sid, name, at, at + 500, list(messages))
        asyncio.run(index_session(self, org, session))

    def query(self, text: str, org: str = "acme", **options: Any) -> list[Any]:
        mode = options.pop("mode", "hybrid")
        vector = None if mode == "lexical" else embed([text])[0]
        op = QueryVectors(
            org,
            SESSION_MEMORY,
            vector,
            options.pop("top_k", 10),
            options.pop("where", None),
            text,
            mode,
            options.pop("min_relevance", None),
        )
        (result,) = self.store.apply_batch([op])
        if isinstance(result, Exception):
            raise result
        return list(result)

    def ids(self, namespace: str = SESSION_MEMORY, org: str = "acme") -> set[str]:
        index = dict(self.store.namespaces()).get((org, namespace))
        return set() if index is None else {index.entry(i)[0] for i in index.ids_below(index.next_id)}  # type: ignore[index]


def test_turns_are_the_user_and_assistant_messages_under_the_session_name() -> None:
    session = ClosedSession(
        "sess_a",
        "Maya\ttrip",
        1,
        2,
        [("system", "be nice"), ("user", "Lisbon?"), ("tool", "{}"), ("assistant", "Yes")],
    )
    turns = turn_entries(session)
    assert [t.id for t in turns] == ["sess_a#2", "sess_a#4"], "seq is the message's place in the session"
    assert turns[0].text == "Maya trip\nLisbon?" and said(turns[0].text) == "Lisbon?"
    assert turns[0].metadata == {"session_id": "sess_a", "kind": "turn", "seq": 2, "role": "user"}
    whole = session_entry(session, turns)
    assert whole.text == "Maya\ttrip\nLisbon?\nYes"
    assert whole.metadata["message_count"] == 4 and whole.metadata["closed_at"] == 2


def test_one_match_per_session_with_its_summary_and_highlights() -> None:
    memory = Memory()
    beagle = ("user", "We adopted a beagle called Biscuit")
    memory.close("acme", "sess_a", "maya chat", ("user", "Hi"), beagle, ("assistant", "Lovely"))
    door = ("user", "How do I fix a squeaky door?")
    memory.close("acme", "sess_b", "maya chat", ("user", "Hi"), door, ("assistant", "Oil the hinges"))
    asyncio.run(index_summary(memory, "acme", "sess_a", "Maya adopted a beagle, Biscuit.", "extractive"))
    matches = memory.query("beagle Biscuit")
    assert [m.id for m in matches] == ["sess_a", "sess_b"]
    best = matches[0]
    assert best.score > matches[1].score >= 0, "a ranking score: 0 or more, no upper bound"
    assert best.metadata["summary"] == "Maya adopted a beagle, Biscuit."
    assert best.metadata["summary_method"] == "extractive"
    assert best.metadata["highlights"][0] == {
        "seq": 2,
        "role": "user",
        "content": "We adopted a beagle called Biscuit",
    }
    assert {"name", "created_at", "closed_at", "message_count", "session_id"} <= set(best.metadata)
    assert matches[1].metadata["summary"] is None, "no summary yet: still found by its messages"
    assert matches[1].metadata["summary_method"] is None, "its method is there too, null"
    assert set(matches[1].metadata) == set(best.metadata)


def test_a_message_said_in_every_session_does_not_decide_the_ranking() -> None:
    memory = Memory()
    for i in range(6):
        fact = "I bought a red kayak for the lake" if i == 4 else f"question number {i} about taxes"
        memory.close("acme", f"sess_{i}", "chat", ("user", "Hi, it's Maya again."), ("user", fact))
    matches = memory.query("Hi, it's Maya again. What boat did she buy for the lake?", mode="dense")
    assert matches[0].id == "sess_4"
    assert all(h["seq"] != 1 for m in matches for h in m.metadata["highlights"]), (
        "the greeting is no highlight"
    )


def test_modes_filters_and_time_ranges() -> None:
    memory = Memory()
    memory.close("acme", "sess_old", "support", ("user", "my invoice INV-2231 is wrong"), at=1_000)
    memory.close("acme", "sess_new", "sales", ("user", "invoice for the new plan"), at=9_000)
    assert [m.id for m in memory.query("INV-2231", mode="lexical")] == ["sess_old"]
    assert {m.id for m in memory.query("invoice", mode="dense")} == {"sess_old", "sess_new"}
    assert [m.id for m in memory.query("invoice", where={"name": "sales"})] == ["sess_new"]
    assert [m.id for m in memory.query("invoice", where={"created_at": {"$gte": 5_000}})] == ["sess_new"]
    assert [m.id for m in memory.query("invoice", where={"closed_at": {"$lt": 5_000}})] == ["sess_old"]
    assert [m.id for m in memory.query("invoice", where={"session_id": {"$in": ["sess_new", "x"]}})] == [
        "sess_new"
    ]
    assert memory.query("invoice", where={"name": "nobody"}) == []
    assert [m.id for m in memory.query("invoice", top_k=1)] in (["sess_old"], ["sess_new"])


def test_forgetting_a_session_removes_every_entry_and_other_orgs_see_nothing() -> None:
    memory = Memory()
    memory.close("acme", "sess_a", "a", ("user", "alpha beta"), ("assistant", "gamma"))
    memory.close("acme", "sess_b", "b", ("user", "alpha delta"))
    memory.close("other", "sess_c", "c", ("user", "alpha"))
    asyncio.run(index_summary(memory, "acme", "sess_a", "alpha summary", "model"))
    assert memory.ids() == {"sess_a#1", "sess_a#2", "sess_b#1"}
    assert memory.ids(SESSIONS_OF_MEMORY) == {"sess_a", "sess_a#summary", "sess_b"}
    asyncio.run(forget_sessions(memory, "acme", ["sess_a"]))
    assert memory.ids() == {"sess_b#1"} and memory.ids(SESSIONS_OF_MEMORY) == {"sess_b"}
    assert [m.id for m in memory.query("alpha")] == ["sess_b"]
    assert [m.id for m in memory.query("alpha", org="other")] == ["sess_c"]
    assert memory.query("alpha", org="nobody") == []


def test_indexing_again_replaces_the_same_entries() -> None:
    memory = Memory()
    for _ in range(2):  # a retried job
        memory.close("acme", "sess_a", "a", ("user", "alpha"), ("assistant", "beta"))
    assert memory.ids() == {"sess_a#1", "sess_a#2"}
    assert len(memory.query("alpha")) == 1


def test_entries_of_older_engines_are_still_found_as_summaries() -> None:
    memory = Memory()
    legacy = {"session_id": "sess_old", "name": "n", "summary": "we planned a trip to Lisbon", "closed_at": 5}
    op = UpsertVectors(
        "acme", SESSION_MEMORY, ("sess_old",), embed(["we planned a trip to Lisbon"]), (legacy,)
    )
    memory.store.apply_batch([op])
    [match] = memory.query("trip to Lisbon", mode="dense")
    assert match.id == "sess_old" and match.metadata["summary"] == "we planned a trip to Lisbon"


def test_a_query_of_another_dimension_is_refused() -> None:
    memory = Memory()
    memory.close("acme", "sess_a", "a", ("user", "alpha"))
    op = QueryVectors(
        "acme", SESSION_MEMORY, np.ones(3, dtype=np.float32) / np.sqrt(3), 5, None, "alpha", "hybrid"
    )
    (result,) = memory.store.apply_batch([op])
    assert isinstance(result, ValidationFailed)


def test_a_session_with_nothing_indexable_is_found_by_its_name() -> None:
    memory = Memory()
    memory.close("acme", "sess_t", "nightly billing export", ("tool", '{"rows": 3}'))
    assert memory.ids() == set() and memory.ids(SESSIONS_OF_MEMORY) == {"sess_t"}
    assert [m.id for m in memory.query("billing export")] == ["sess_t"]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_an_empty_memory_answers_nothing(mode: str) -> None:
    assert Memory().query("anything", mode=mode) == []


def test_a_window_finds_its_session_but_is_never_a_highlight_nor_counts_for_relevance() -> None:
    # Three turns on three axes: a query along their mean is closest to the window around the
    # middle one (made at query time), closer than to any single turn.
    axes = np.eye(DIM, dtype=np.float32)
    memory = Memory()
    vectors = {"chat\nwe got a dog": axes[0], "chat\nwhat is his name?": axes[1], "chat\nBiscuit": axes[2]}

    async def embedded(texts: Sequence[str]) -> np.ndarray:
        return np.stack([vectors.get(text, axes[DIM - 1]) for text in texts])

    memory.embed = embedded  # type: ignore[method-assign]
    said = ("user", "we got a dog"), ("assistant", "what is his name?"), ("user", "Biscuit")
    memory.close("acme", "sess_dog", "chat", *said)
    memory.close("acme", "sess_other", "chat", ("user", "taxes"))
    namespaces = dict(memory.store.namespaces())
    indexes = SessionIndexes(namespaces[("acme", SESSION_MEMORY)], namespaces[("acme", SESSIONS_OF_MEMORY)])
    query = (axes[0] + axes[1] + axes[2]) / np.sqrt(3)
    found = signals(indexes, query, None, 10, mode="dense")
    assert found.rankings["window_dense"][0] == ("sess_dog", pytest.approx(1.0))
    turns = indexes.turns
    assert turns is not None
    assert all(turns.entry(i)[1]["kind"] == "turn" for i in found.turn_hits["sess_dog"])  # type: ignore[index]
    (match, _) = search(indexes, query, None, 10, mode="dense")
    assert match.id == "sess_dog" and {h["seq"] for h in match.metadata["highlights"]} == {1, 2, 3}
    assert closest_of(indexes, query, ["sess_dog"])["sess_dog"] == pytest.approx(1 / np.sqrt(3), abs=1e-5), (
        "the closest message, not the window"
    )


def test_dense_mode_ranks_windows_and_hybrid_every_signal() -> None:
    assert "window_dense" in SIGNALS_OF_MODE["dense"] and "window_dense" not in SIGNALS_OF_MODE["lexical"]
    assert set(SIGNALS_OF_MODE["hybrid"]) == set(WEIGHTS) and len(WEIGHTS) == 7
    assert {SCALES[name] for name in SIGNALS_OF_MODE["lexical"]} == {"spread"}
    assert {SCALES[name] for name in SIGNALS_OF_MODE["dense"]} == {"range"}


def test_lexical_mode_ranks_by_whole_sessions_words_first() -> None:
    memory = Memory()
    # sess_b has the turn and the summary that match best on their own; sess_a matches best as a
    # whole session. Lexical mode goes by the whole session (its turns count a little), where the
    # hybrid's weights would not.
    memory.close("acme", "sess_a", "chat", ("user", "kayak"), ("user", "lake"))
    memory.close("acme", "sess_b", "chat", ("user", "kayak lake"), ("user", "some other words here today"))
    memory.close("acme", "sess_c", "chat", ("user", "lake house"), ("user", "mortgage rates rise"))
    for sid, summary in (
        ("sess_a", "a chat"),
        ("sess_b", "kayak lake, kayak lake"),
        ("sess_c", "lake house"),
    ):
        asyncio.run(index_summary(memory, "acme", sid, summary, "extractive"))
    namespaces = dict(memory.store.namespaces())
    indexes = SessionIndexes(namespaces[("acme", SESSION_MEMORY)], namespaces[("acme", SESSIONS_OF_MEMORY)])
    rankings = signals(indexes, None, "kayak lake", 10, mode="lexical").rankings
    assert rankings["turn_lexical"][0][0] == rankings["summary_lexical"][0][0] == "sess_b"
    by_sessions = [sid for sid, _ in rankings["session_lexical"]]
    assert by_sessions[0] == "sess_a"
    matches = memory.query("kayak lake", mode="lexical")
    assert [m.id for m in matches] == by_sessions
    assert matches[0].metadata["highlights"], "the matching messages still give the highlights"


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
def test_an_open_session_ranks_by_its_turns_against_closed_ones(mode: str) -> None:
    """An open session has no whole-session entry or summary yet: its score is over the weight of
    what it can be ranked by (its turns and their windows), so a closed session that matches less
    never outranks it."""
    memory = Memory()
    memory.close("acme", "closed_1", "chat", ("user", "the weather today"), ("assistant", "it was sunny"))
    memory.close(
        "acme", "closed_2", "chat", ("user", "my cat likes the sofa"), ("assistant", "cats love sofas")
    )
    open_one = ClosedSession(
        "open_1",
        "chat",
        1000,
        None,
        [("user", "what is my dog called"), ("assistant", "your dog is called Biscuit")],
        status="active",
    )
    asyncio.run(index_live(memory, {"acme": [(open_one, 2)]}))
    assert memory.query("what is my dog called Biscuit", mode=mode)[0].id == "open_1"


def test_a_session_with_only_tool_messages_is_not_charged_for_windows() -> None:
    """A session is scored over the weight of the rankings it can be listed in: one with no
    indexed turn can never have a window, so the window ranking's weight is not counted against
    it, while one with a turn (as of a moment, one said by then) can."""
    memory = Memory()
    memory.close("acme", "sess_t", "nightly billing export", ("tool", '{"rows": 3}'))
    memory.close("acme", "sess_c", "chat", ("user", "alpha"))
    namespaces = dict(memory.store.namespaces())
    indexes = SessionIndexes(namespaces[("acme", SESSION_MEMORY)], namespaces[("acme", SESSIONS_OF_MEMORY)])
    assert "window" not in sessions._kinds_of(indexes, "sess_t", None)
    assert "window" in sessions._kinds_of(indexes, "sess_c", None)
    assert "window" not in sessions._kinds_of(indexes, "sess_c", Past(frozenset(), frozenset()))
