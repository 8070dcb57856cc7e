"""Session memory as it stood at a moment (`as_of`) and filtered by session status
(engine.memory.sessions), through engine.closing.indexing and a real MemoryStore."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.closing.indexing import closed_session, index_session, index_summary
from engine.memory import sessions
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY, ClosedSession, summary_entry
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
    # Lexical ranks whole sessions and summaries only (turn words only pick highlights): closed
    # at 1_500, so not before.
    assert "sess_lisbon" not in memory.found("Lisbon", as_of=1_400, mode="lexical")
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
