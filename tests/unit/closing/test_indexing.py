"""What a closed session becomes in session memory besides its turns, and the windows of turns a
query makes from them (engine.closing.indexing, engine.memory.sessions._windows), through a real
MemoryStore and an embedder that gives each text its own direction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from engine.closing.indexing import forget_sessions, index_live, index_session
from engine.memory import sessions
from engine.memory.index import IndexParams, NamespaceIndex
from engine.memory.ops import MemoryOp, SessionTurnVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY, ClosedSession, Past, SessionIndexes
from engine.memory.store import MemoryStore
from engine.models.summarizer import Conversation, Summary

DIM = 16


class Memory:
    """Session memory as a closing job reaches it (engine.closing.ports); each new text gets the
    next axis, so a vector says which text it was."""

    def __init__(self) -> None:
        self.store = MemoryStore(IndexParams())
        self.axes: dict[str, int] = {}

    def vector_of(self, text: str) -> np.ndarray:
        row = np.zeros(DIM, dtype=np.float32)
        row[self.axes.setdefault(text, len(self.axes))] = 1.0
        return row

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vector_of(text) for text in texts])

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        results = self.store.apply_batch(list(ops))
        self.store.take_journal()
        return results

    async def summarize(self, conversation: Conversation) -> Summary:
        raise AssertionError("indexing never asks for a summary")

    def index_of(self, namespace: str = SESSION_MEMORY) -> NamespaceIndex:
        return dict(self.store.namespaces())[("acme", namespace)]

    def entries(
        self, kind: str, namespace: str = SESSION_MEMORY
    ) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
        """External id -> (metadata, vector) of the namespace's entries of this kind."""
        index = self.index_of(namespace)
        out = {}
        for faiss_id in index.ids_below(index.next_id):
            found = index.entry(faiss_id)
            if found is not None and found[1].get("kind") == kind:
                out[found[0]] = (found[1], index.vectors([faiss_id])[0])
        return out

    def indexes(self) -> SessionIndexes:
        whole = dict(self.store.namespaces()).get(("acme", SESSIONS_OF_MEMORY))
        return SessionIndexes(self.index_of(), whole)

    def windows(self, query: np.ndarray, as_of: int | None = None) -> list[tuple[str, float]]:
        """The window ranking of a dense query, as a query fuses it."""
        indexes = self.indexes()
        past = None if as_of is None else Past.of(indexes, as_of)
        return sessions.signals(indexes, query, None, 10, mode="dense", past=past).rankings["window_dense"]

    def turn(self, text: str) -> np.ndarray:
        return self.vector_of(f"chat\n{text}")


SAID = [("user", "alpha"), ("tool", "{}"), ("assistant", "beta"), ("user", "gamma"), ("assistant", "delta")]


def closed(said: Sequence[tuple[str, str]] = SAID, times: Sequence[int] = ()) -> ClosedSession:
    return ClosedSession("sess_a", "chat", 1_000, 9_000, list(said), times)


def unit(*rows: np.ndarray) -> np.ndarray:
    mean = np.mean(rows, axis=0)
    return np.asarray(mean / np.linalg.norm(mean), dtype=np.float32)


def test_a_closed_session_is_its_turns_and_one_session_entry() -> None:
    memory = Memory()
    count = asyncio.run(index_session(memory, "acme", closed()))
    assert count == 4 + 1, "the indexed turns (the tool message is not), the session entry"
    assert sorted(memory.entries("turn")) == ["sess_a#1", "sess_a#3", "sess_a#4", "sess_a#5"]
    assert not memory.entries("window"), "windows are made at query time, never stored"
    (_, vector) = memory.entries("session", SESSIONS_OF_MEMORY)["sess_a"]
    turns = [memory.turn(text) for role, text in SAID if role != "tool"]
    np.testing.assert_allclose(vector, unit(*turns), atol=1e-6)


@pytest.mark.parametrize(
    ("near", "centre"),
    [
        (("alpha", "beta", "gamma"), 3),
        (("beta", "gamma", "delta"), 4),
        (("gamma", "delta"), 5),
        (("alpha", "beta"), 1),
    ],
)
def test_a_window_is_a_turn_and_its_nearest_indexed_neighbours(near: tuple[str, ...], centre: int) -> None:
    """A query along the mean of a window's turns finds it whole (cosine 1), whichever of its
    turns the dense search found; the tool message between turns 1 and 3 is skipped, so they are
    neighbours; the first and last windows have one neighbour."""
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed()))
    query = unit(*(memory.turn(text) for text in near))
    assert memory.windows(query) == [("sess_a", pytest.approx(1.0))], centre
    best_turn = sessions.signals(memory.indexes(), query, None, 10, mode="dense").rankings["turn_dense"][0]
    assert best_turn[1] == pytest.approx(1 / np.sqrt(len(near))), "no single turn is as close"


def test_a_neighbour_further_than_the_gap_is_not_one() -> None:
    gap = sessions.NEIGHBOUR_GAP
    said = [("user", "alpha"), *[("tool", "{}")] * gap, ("assistant", "beta")]
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed(said)))
    query = unit(memory.turn("alpha"), memory.turn("beta"))
    ((_, score),) = memory.windows(query)
    assert score == pytest.approx(1 / np.sqrt(2)), "each turn is a window of its own"
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed(said[:gap] + said[-1:])))
    assert memory.windows(query) == [("sess_a", pytest.approx(1.0))]


def test_as_of_makes_windows_of_the_turns_said_by_then() -> None:
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed(times=[1_100, 1_200, 1_300, 1_400, 1_500])))
    query = unit(memory.turn("alpha"), memory.turn("beta"), memory.turn("gamma"))
    assert memory.windows(query) == [("sess_a", pytest.approx(1.0))]
    # At 1_300 "gamma" (said at 1_400) was not: the best window is alpha and beta's.
    ((_, score),) = memory.windows(query, as_of=1_300)
    assert score == pytest.approx(float(query @ unit(memory.turn("alpha"), memory.turn("beta"))))
    assert memory.windows(query, as_of=1_050) == [], "nothing said yet"


def test_an_open_session_has_windows_as_soon_as_its_turns_are_in() -> None:
    memory = Memory()
    open_session = ClosedSession("sess_a", "chat", 1_000, None, SAID[:3], status="open")
    asyncio.run(index_live(memory, {"acme": [(open_session, 3)]}))
    query = unit(memory.turn("alpha"), memory.turn("beta"))
    assert memory.windows(query) == [("sess_a", pytest.approx(1.0))]


def test_an_earlier_engines_stored_windows_rank_nowhere_and_are_dropped() -> None:
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed()))
    stray = memory.vector_of("a stored window")
    window = {"session_id": "sess_b", "kind": "window", "seq": 1, "created_at": 9_000}
    memory.store.apply_batch(
        [UpsertVectors("acme", SESSION_MEMORY, ("sess_b#1#window",), stray[None], (window,))]
    )
    found = sessions.signals(memory.indexes(), stray, None, 10, mode="dense")
    assert all(session_id == "sess_a" for ranking in found.rankings.values() for session_id, _ in ranking)
    (turns,) = memory.store.apply_batch([SessionTurnVectors("acme", "sess_a")])
    assert turns["seqs"] == [1, 3, 4, 5], "a session's turn vectors are its turns only"
    assert memory.store.drop_stored_windows() == 1
    assert not memory.entries("window") and len(memory.entries("turn")) == 4


def test_indexing_again_replaces_the_entries_and_forgetting_removes_them() -> None:
    memory = Memory()
    for _ in range(2):  # a retried job
        asyncio.run(index_session(memory, "acme", closed()))
    assert len(memory.entries("turn")) == 4 and len(memory.entries("session", SESSIONS_OF_MEMORY)) == 1
    asyncio.run(forget_sessions(memory, "acme", ["sess_a"]))
    assert ("acme", SESSION_MEMORY) not in dict(memory.store.namespaces()), "nothing of it is left"


def test_the_session_entry_is_made_from_the_turns_live_memory_put_in_without_embedding_them_again() -> None:
    live, whole = Memory(), Memory()
    said = SAID[:3]
    asyncio.run(index_session(live, "acme", ClosedSession("sess_a", "chat", 1, 2, said[:1])))
    embedded: list[str] = []
    embed = live.embed

    async def counted(texts: Sequence[str]) -> np.ndarray:
        embedded.extend(texts)
        return await embed(texts)

    live.embed = counted  # type: ignore[method-assign]
    asyncio.run(index_session(live, "acme", ClosedSession("sess_a", "chat", 1, 2, said), live_through=1))
    assert embedded == ["chat\nbeta"], "the turn after live_through only"
    asyncio.run(index_session(whole, "acme", ClosedSession("sess_a", "chat", 1, 2, said)))
    np.testing.assert_allclose(
        live.entries("session", SESSIONS_OF_MEMORY)["sess_a"][1],
        whole.entries("session", SESSIONS_OF_MEMORY)["sess_a"][1],
        atol=1e-6,
    )


def test_a_session_with_nothing_indexed_has_only_its_session_entry() -> None:
    memory = Memory()
    count = asyncio.run(index_session(memory, "acme", closed([("tool", "{}")])))
    assert count == 1 and ("acme", SESSION_MEMORY) not in dict(memory.store.namespaces())
