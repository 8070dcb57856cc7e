"""What a closed session becomes in session memory besides its turns: a window around each turn
(engine.closing.indexing, engine.memory.sessions.window_entries), through a real MemoryStore and an
embedder that gives each text its own direction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.closing.indexing import forget_sessions, index_session
from engine.memory import sessions
from engine.memory.index import IndexParams, NamespaceIndex
from engine.memory.ops import MemoryOp, SessionTurnVectors
from engine.memory.sessions import (
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    ClosedSession,
    Past,
    SessionIndexes,
    turn_entries,
    window_entries,
)
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

    def entries(self, kind: str) -> dict[str, tuple[dict[str, Any], np.ndarray, str | None]]:
        """External id -> (metadata, vector, text) of the turns namespace's entries of this kind."""
        index = self.index_of()
        out = {}
        for faiss_id in index.ids_below(index.next_id):
            found = index.entry(faiss_id)
            if found is not None and found[1].get("kind") == kind:
                out[found[0]] = (found[1], index.vectors([faiss_id])[0], index.text(faiss_id))
        return out

    def indexes(self) -> SessionIndexes:
        return SessionIndexes(self.index_of(), self.index_of(SESSIONS_OF_MEMORY))


SAID = [("user", "alpha"), ("tool", "{}"), ("assistant", "beta"), ("user", "gamma"), ("assistant", "delta")]


def closed(said: Sequence[tuple[str, str]] = SAID, times: Sequence[int] = ()) -> ClosedSession:
    return ClosedSession("sess_a", "chat", 1_000, 9_000, list(said), times)


def test_each_indexed_turn_gets_a_window_of_its_neighbours_normalised_mean() -> None:
    memory = Memory()
    count = asyncio.run(index_session(memory, "acme", closed()))
    windows = memory.entries("window")
    assert sorted(windows) == ["sess_a#1#window", "sess_a#3#window", "sess_a#4#window", "sess_a#5#window"]
    assert count == 4 + 4 + 1, "turns, windows, the session entry"
    turns = {seq: memory.vector_of(f"chat\n{text}") for seq, (_, text) in enumerate(SAID, 1)}
    # The tool message is not indexed, so turn 3's neighbours are turns 1 and 4.
    for seq, near in ((1, (1, 3)), (3, (1, 3, 4)), (4, (3, 4, 5)), (5, (4, 5))):
        metadata, vector, text = windows[f"sess_a#{seq}#window"]
        mean = np.mean([turns[n] for n in near], axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)
        assert metadata == {"session_id": "sess_a", "kind": "window", "seq": seq, "created_at": 9_000}
        assert text is None


def test_a_window_is_timed_at_the_close_that_wrote_it() -> None:
    """Windows go into memory at close, as the whole-session entry does: `as_of` a moment before
    it finds the turns said by then and no window; from the close on, every window."""
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed(times=[1_100, 1_200, 1_300, 1_400, 1_500])))
    times = {metadata["created_at"] for metadata, _, _ in memory.entries("window").values()}
    assert times == {9_000}
    index = memory.index_of()

    def windows_as_of(moment: int) -> set[str]:
        past = Past.of(memory.indexes(), moment)
        return {index.entry(i)[0] for i in past.turns if index.entry(i)[1]["kind"] == "window"}  # type: ignore[index]

    assert windows_as_of(8_999) == set()
    assert len(windows_as_of(9_000)) == 4


def test_a_window_without_a_close_time_takes_its_last_messages() -> None:
    session = ClosedSession("sess_a", "chat", 1_000, None, list(SAID), [1_100, 1_200, 1_300, 1_400, 1_500])
    turns = turn_entries(session)
    windows, _ = window_entries(turns, np.eye(len(turns), dtype=np.float32))
    assert [w.metadata["created_at"] for w in windows] == [1_300, 1_400, 1_500, 1_500]


def test_indexing_again_replaces_the_windows_and_forgetting_removes_them() -> None:
    memory = Memory()
    for _ in range(2):  # a retried job
        asyncio.run(index_session(memory, "acme", closed()))
    assert len(memory.entries("window")) == 4 and len(memory.entries("turn")) == 4
    asyncio.run(forget_sessions(memory, "acme", ["sess_a"]))
    assert ("acme", SESSION_MEMORY) not in dict(memory.store.namespaces()), "nothing of it is left"


def test_windows_are_made_from_the_turns_live_memory_put_in_without_embedding_them_again() -> None:
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
    for external, (_, vector, _) in whole.entries("window").items():
        np.testing.assert_allclose(live.entries("window")[external][1], vector, atol=1e-6)


def test_a_sessions_turn_vectors_leave_its_windows_out() -> None:
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed()))
    (found,) = memory.store.apply_batch([SessionTurnVectors("acme", "sess_a")])
    assert found["seqs"] == [1, 3, 4, 5] and found["vectors"].shape == (4, DIM)


def test_windows_have_no_words_to_be_found_by() -> None:
    memory = Memory()
    asyncio.run(index_session(memory, "acme", closed()))
    index = memory.index_of()
    kinds = {
        index.entry(faiss_id)[1]["kind"] for faiss_id, _ in index.words("alpha beta gamma delta chat", 50)
    }  # type: ignore[index]
    assert kinds == {"turn"}


def test_a_session_with_nothing_indexed_has_no_windows() -> None:
    memory = Memory()
    count = asyncio.run(index_session(memory, "acme", closed([("tool", "{}")])))
    assert count == 1 and ("acme", SESSION_MEMORY) not in dict(memory.store.namespaces())
    assert sessions.window_entries([], np.zeros((0, DIM), np.float32))[1].shape == (0, DIM)
