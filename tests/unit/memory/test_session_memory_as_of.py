"""Session memory as it stood at a moment (`as_of`) and filtered by session status
(engine.memory.sessions), through engine.closing.indexing and a real MemoryStore."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from engine.closing.indexing import closed_session, index_session, index_summary
from engine.memory import sessions
from engine.memory.index import IndexParams, NamespaceIndex
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.memory.sessions import (
    SESSION_MEMORY,
    SESSIONS_OF_MEMORY,
    ClosedSession,
    Past,
    SessionIndexes,
    summary_entry,
)
from engine.sessions.ops import SummaryInput
from engine.sessions.session import Message, SessionStatus
from tests.unit.memory.test_session_memory import Memory, embed


class Timed(Memory):
    def session(
        self,
        sid: str,
        *said: tuple[str, str, int],
        created_at: int,
        closed_at: int,
        status: str = "closed",
        summary: tuple[str, int] | None = None,
        org: str = "acme",
    ) -> None:
        """A session whose messages (role, content, created_at) were said at their times."""
        messages = [(role, content) for role, content, _ in said]
        times = [at for _, _, at in said]
        session = ClosedSession(sid, "maya chat", created_at, closed_at, messages, times, status)
        asyncio.run(index_session(self, org, session))
        if summary is not None:
            text, made_at = summary
            asyncio.run(index_summary(self, org, sid, text, "model", made_at=made_at))

    def found(self, text: str, **options: Any) -> dict[str, Any]:
        """Session id -> its match, for a query with these options (as_of among them)."""
        as_of = options.pop("as_of", None)
        op = QueryVectors(
            "acme",
            SESSION_MEMORY,
            embed([text])[0],
            options.pop("top_k", 10),
            options.pop("where", None),
            text,
            options.pop("mode", "hybrid"),
            None,
            as_of,
        )
        (result,) = self.store.apply_batch([op])
        if isinstance(result, Exception):
            raise result
        return {match.id: match for match in result}


def facts() -> Timed:
    """Maya says where she lives, then moves; a third session was open across both."""
    memory = Timed()
    memory.session(
        "sess_lisbon",
        ("user", "I live in Lisbon now", 1_100),
        ("assistant", "Noted, Lisbon it is", 1_200),
        created_at=1_000,
        closed_at=1_500,
        summary=("Maya lives in Lisbon.", 1_600),
    )
    memory.session(
        "sess_osaka",
        ("user", "we moved to Osaka last month", 5_100),
        created_at=5_000,
        closed_at=5_500,
        summary=("Maya moved to Osaka.", 5_600),
    )
    memory.session(
        "sess_cat",
        ("user", "my cat is called Pixel", 2_100),
        ("user", "Pixel learned to open the fridge door", 7_000),
        created_at=2_000,
        closed_at=8_000,
        status="completed",
    )
    return memory


def test_as_of_answers_with_the_sessions_that_existed_then() -> None:
    memory = facts()
    now = memory.found("Where does Maya live?")
    assert {"sess_lisbon", "sess_osaka"} <= set(now)
    then = memory.found("Where does Maya live?", as_of=3_000)
    assert "sess_osaka" not in then, "created after as_of"
    assert next(iter(then)) == "sess_lisbon"
    assert then["sess_lisbon"].metadata["summary"] == "Maya lives in Lisbon."
    assert memory.found("Where does Maya live?", as_of=999) == {}, "before every session"


def test_as_of_hides_a_later_turn_from_ranking_highlights_and_relevance() -> None:
    memory = facts()
    question = "Pixel learned to open the fridge door"
    now = memory.found(question)["sess_cat"]
    assert now.metadata["highlights"][0]["seq"] == 2
    then = memory.found(question, as_of=3_000)["sess_cat"]  # open then: only its first message
    assert [h["seq"] for h in then.metadata["highlights"]] == [1]
    assert then.relevance is not None and now.relevance is not None
    assert then.relevance < now.relevance, "relevance from the turns said by then only"
    assert then.metadata["summary"] is None
    assert memory.found("fridge door", as_of=3_000, mode="lexical").get("sess_cat") is None, (
        "its whole transcript (with the later words) was not there yet"
    )


def test_as_of_before_the_close_hides_the_whole_session_and_before_the_summary_hides_it() -> None:
    memory = facts()
    said_only = memory.found("Lisbon", as_of=1_150)["sess_lisbon"]
    assert [h["seq"] for h in said_only.metadata["highlights"]] == [1], "the reply came later"
    assert said_only.metadata["summary"] is None
    # Before its close (1_500) the session is found by the words of its turns said by then, not
    # by its whole transcript's.
    namespaces = dict(memory.store.namespaces())
    both = SessionIndexes(namespaces[("acme", SESSION_MEMORY)], namespaces[("acme", SESSIONS_OF_MEMORY)])
    for as_of, whole in ((1_400, []), (1_550, ["sess_lisbon"])):
        found = sessions.signals(both, None, "Lisbon", 10, mode="lexical", past=Past.of(both, as_of))
        assert {s for s, _ in found.rankings["turn_lexical"]} == {"sess_lisbon"}
        assert [s for s, _ in found.rankings["session_lexical"]] == whole, as_of
    closed = memory.found("Lisbon", as_of=1_550, mode="lexical")["sess_lisbon"]
    assert closed.metadata["summary"] is None, "made at 1_600"
    assert memory.found("Lisbon", as_of=1_600)["sess_lisbon"].metadata["summary"] == "Maya lives in Lisbon."


def test_entries_without_times_count_from_their_session_creation_and_close() -> None:
    memory = Timed()
    memory.close("acme", "sess_old", "trip", ("user", "we planned a trip to Lisbon"), at=1_000)  # no times
    summary = summary_entry("sess_old", "A trip to Lisbon.", "model")
    del summary.metadata["created_at"]  # as indexed before summaries carried it
    memory.store.apply_batch(
        [
            UpsertVectors(
                "acme",
                SESSIONS_OF_MEMORY,
                (summary.id,),
                embed([summary.text]),
                (summary.metadata,),
                texts=(summary.text,),
            )
        ]
    )
    assert memory.found("trip to Lisbon", as_of=999) == {}, "created at 1_000"
    open_then = memory.found("trip to Lisbon", as_of=1_200)["sess_old"]
    assert open_then.metadata["highlights"] and open_then.metadata["summary"] is None
    assert memory.found("trip to Lisbon", as_of=1_500)["sess_old"].metadata["summary"] == "A trip to Lisbon."


def test_an_older_engines_single_entry_counts_from_its_close() -> None:
    memory = Timed()
    legacy = {"session_id": "sess_old", "name": "n", "summary": "we planned a trip to Lisbon", "closed_at": 5}
    vector = embed(["we planned a trip to Lisbon"])
    memory.store.apply_batch([UpsertVectors("acme", SESSION_MEMORY, ("sess_old",), vector, (legacy,))])
    assert memory.found("trip to Lisbon", as_of=4, mode="dense") == {}
    assert set(memory.found("trip to Lisbon", as_of=5, mode="dense")) == {"sess_old"}


def test_a_query_without_as_of_computes_no_past(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = facts()
    far = memory.found("Where does Maya live?", as_of=10**13)

    def refused(*_: Any) -> None:
        raise AssertionError("a query without as_of looked at the entries' times")

    monkeypatch.setattr(sessions.Past, "of", refused)
    now = memory.found("Where does Maya live?")
    assert [(m.id, m.score, m.relevance) for m in now.values()] == [
        (m.id, m.score, m.relevance) for m in far.values()
    ], "as_of after everything answers as without it"


def test_status_filter_keeps_sessions_of_those_statuses_and_unstated_counts_as_closed() -> None:
    memory = facts()
    memory.close("acme", "sess_old", "maya chat", ("user", "Maya lives where?"))
    whole = memory.store.namespaces()
    index = dict(whole)[("acme", SESSIONS_OF_MEMORY)]
    faiss_id = index.faiss_id("sess_old")
    assert faiss_id is not None
    index.entry(faiss_id)[1].pop("status")  # type: ignore[index]  # as indexed before entries had one
    question = "Maya"
    assert set(memory.found(question)) == {"sess_lisbon", "sess_osaka", "sess_cat", "sess_old"}
    closed = set(memory.found(question, where={"status": "closed"}))
    assert closed == {"sess_lisbon", "sess_osaka", "sess_old"}
    assert set(memory.found(question, where={"status": {"$eq": "completed"}})) == {"sess_cat"}
    assert set(memory.found(question, where={"status": {"$ne": "closed"}})) == {"sess_cat"}
    both = memory.found(question, where={"status": {"$in": ["active", "completed"]}, "name": "maya chat"})
    assert set(both) == {"sess_cat"}
    assert memory.found(question, where={"status": "expired"}) == {}
    shown = {sid: match.metadata["status"] for sid, match in memory.found(question).items()}
    assert shown == {
        "sess_lisbon": "closed",
        "sess_osaka": "closed",
        "sess_cat": "completed",
        "sess_old": "closed",
    }


def test_closing_jobs_index_each_messages_time_and_the_sessions_status() -> None:
    messages = [Message("user", "hello", 10), Message("tool", "{}", 11), Message("assistant", "hi", 12)]
    job = SummaryInput("chat", messages, 5, 20, indexed=False, status=SessionStatus.EXPIRED)
    session = closed_session("sess_a", job)
    assert session.times == [10, 11, 12] and session.status == "expired"
    turns = sessions.turn_entries(session)
    assert [t.metadata["created_at"] for t in turns] == [10, 12]
    assert sessions.session_entry(session, turns).metadata["status"] == "expired"
    before = int(time.time() * 1000)
    assert summary_entry("sess_a", "s", "model").metadata["created_at"] >= before
    assert summary_entry("sess_a", "s", "model", made_at=7).metadata["created_at"] == 7


def test_a_fork_or_an_import_counts_its_copied_turns_from_its_own_creation() -> None:
    memory = facts()
    lisbon = "I live in Lisbon now"
    before = memory.found(lisbon, as_of=3_000)["sess_lisbon"].metadata["highlights"]
    # Forked from sess_lisbon at 9_000: its messages keep the times they were first said.
    memory.session(
        "sess_fork",
        ("user", lisbon, 1_100),
        ("assistant", "Noted, Lisbon it is", 1_200),
        ("user", "and I work from a cafe", 9_100),
        created_at=9_000,
        closed_at=9_500,
    )
    then = memory.found(lisbon, as_of=3_000)
    assert "sess_fork" not in then
    assert then["sess_lisbon"].metadata["highlights"] == before, (
        "the copies did not exist then, so they do not make the source's turns said twice"
    )
    assert [
        h["seq"] for h in memory.found("work from a cafe", as_of=9_200)["sess_fork"].metadata["highlights"]
    ] == [3]
    # Imported, its source not in this memory: found from its creation only.
    memory.session(
        "sess_import", ("user", "my bike is a red Brompton", 1_100), created_at=9_000, closed_at=9_500
    )
    assert "sess_import" not in memory.found("red Brompton bike", as_of=3_000)
    assert "sess_import" in memory.found("red Brompton bike", as_of=9_000)


def test_closing_jobs_time_a_forks_copied_messages_from_its_creation() -> None:
    messages = [
        Message("user", "hello", 1_100),
        Message("assistant", "hi", 1_200),
        Message("user", "new", 9_100),
    ]
    job = SummaryInput("fork", messages, 9_000, 9_500, indexed=False, status=SessionStatus.CLOSED)
    assert closed_session("sess_fork", job).times == [9_000, 9_000, 9_100]


def test_a_filter_and_as_of_together_keep_the_sessions_both_allow() -> None:
    memory = facts()
    asked = "Maya"
    assert set(memory.found(asked, as_of=3_000)) == {"sess_lisbon", "sess_cat"}
    [cat] = memory.found(asked, as_of=3_000, where={"status": "completed"}).values()
    assert cat.id == "sess_cat" and [h["seq"] for h in cat.metadata["highlights"]] == [1]
    assert set(memory.found(asked, as_of=3_000, where={"closed_at": {"$lte": 6_000}})) == {"sess_lisbon"}
    assert memory.found(asked, as_of=3_000, where={"session_id": "sess_osaka"}) == {}, "not created yet"
    assert memory.found(asked, as_of=3_000, where={"status": "expired"}) == {}


def test_as_of_with_a_filter_walks_only_the_entries_of_the_sessions_it_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = facts()
    indexes = dict(memory.store.namespaces())
    both = SessionIndexes(indexes[("acme", SESSION_MEMORY)], indexes[("acme", SESSIONS_OF_MEMORY)])
    past = Past.of(both, 10**13, ["sess_cat"])
    for index, ids in ((both.turns, past.turns), (both.whole, past.whole)):
        assert index is not None and ids
        assert {index.entry(faiss_id)[1]["session_id"] for faiss_id in ids} == {"sess_cat"}  # type: ignore[index]

    def every(*_: Any) -> None:
        raise AssertionError("walked every entry of the organization")

    monkeypatch.setattr(NamespaceIndex, "ids_below", every)
    assert set(memory.found("Maya", as_of=3_000, where={"status": "completed"})) == {"sess_cat"}


def test_a_greeting_said_again_only_later_still_tells_its_session_apart_as_of_before() -> None:
    memory = Timed()
    greeting = "Hi, it's Maya again"
    memory.session("sess_a", ("user", greeting, 1_100), created_at=1_000, closed_at=1_500)
    memory.session("sess_b", ("user", greeting, 5_100), created_at=5_000, closed_at=5_500)
    now = memory.found(greeting)
    assert all(not match.metadata["highlights"] for match in now.values()), "said in both: no highlight"
    then = memory.found(greeting, as_of=3_000)
    assert set(then) == {"sess_a"} and [h["seq"] for h in then["sess_a"].metadata["highlights"]] == [1]


def turns_index(params: IndexParams, said: list[tuple[str, np.ndarray, int]]) -> NamespaceIndex:
    """A turns index of one-message sessions `s<i>`: (text, vector, created_at) each."""
    index = NamespaceIndex(len(said[0][1]), params)
    index.upsert(
        [f"s{i}#1" for i in range(len(said))],
        np.stack([vector for _, vector, _ in said]),
        [
            {"session_id": f"s{i}", "kind": "turn", "seq": 1, "role": "user", "created_at": at}
            for i, (_, _, at) in enumerate(said)
        ],
        [f"s{i}\n{text}" for i, (text, _, _) in enumerate(said)],
    )
    index.commit()
    return index


def test_as_of_finds_earlier_turns_by_their_words_when_many_later_ones_match_better() -> None:
    # More earlier turns than the lexical index restricts a search to exactly, and more later ones
    # than it looks past the depth, each matching the query's word more often.
    early = sessions.EXACT_LEXICAL_KEYS + 100
    vector = np.ones(4, dtype=np.float32) / 2
    said = [(f"we moved to Lisbon in spring {i}", vector, 1_000) for i in range(early)]
    said += [(f"Lisbon, Lisbon, Lisbon again {i}", vector, 5_000) for i in range(2_000)]
    indexes = SessionIndexes(turns_index(IndexParams(), said), None)
    found = sessions.signals(indexes, None, "Lisbon", 10, mode="lexical", past=Past.of(indexes, 3_000))
    ranked = found.rankings["turn_lexical"]
    assert len(ranked) == 200, "a ranking as deep as without as_of"
    assert all(int(session_id[1:]) < early for session_id, _ in ranked)


def test_as_of_finds_the_few_earlier_turns_by_meaning_in_an_approximate_index() -> None:
    rng = np.random.default_rng(7)
    query = np.zeros(16, dtype=np.float32)
    query[0] = 1.0
    near = rng.normal(size=(1_000, 16)).astype(np.float32) * 0.1 + query  # later, close to the query
    far = rng.normal(size=(50, 16)).astype(np.float32)  # earlier, anywhere
    rows = np.vstack([far, near])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    said = [(f"turn {i}", row, 1_000 if i < len(far) else 5_000) for i, row in enumerate(rows)]
    index = turns_index(IndexParams(approximate_above=100, background=False), said)
    assert index.kind != "flat"
    indexes = SessionIndexes(index, None)
    found = sessions.signals(indexes, query, None, 10, mode="dense", past=Past.of(indexes, 3_000))
    ranked = found.rankings["turn_dense"]
    assert {session_id for session_id, _ in ranked} == {f"s{i}" for i in range(len(far))}
    cosines = sorted((rows[: len(far)] @ query).tolist(), reverse=True)
    assert [score for _, score in ranked] == pytest.approx(cosines, abs=0.01), "rows kept in 8 bits"
