"""Live memory (engine.closing.live) over a real SessionStore and a real session memory (a
MemoryStore behind the index port): an open session's turns go in as ticks run, deletes and closes
interleave with them, and a restart picks up where the marks were."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.closing import job as job_module
from engine.closing.job import ClosingJobs
from engine.closing.live import LiveIndexer
from engine.config import LiveMemoryConfig, SummarizerConfig
from engine.errors import Unavailable
from engine.memory.index import IndexParams
from engine.memory.ops import ForgetSessions, MemoryOp, QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY, SessionIndexes, signals
from engine.memory.store import MemoryStore
from engine.models.summarizer import Conversation
from engine.sessions.codec import decode_session, encode_session
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    FailSummary,
    GetSession,
    ImportSession,
    LiveTurns,
    MarkLive,
    PurgeSessions,
    SessionOp,
    UpdateSession,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.store import SessionStore

T0 = 1_700_000_000_000


class Harness:
    """A shard's store, live indexer and closing jobs, with the memory shard a MemoryStore."""

    def __init__(
        self, store: SessionStore | None = None, memory: MemoryStore | None = None, **live: Any
    ) -> None:
        self.store = store or SessionStore()
        self.memory = memory or MemoryStore(IndexParams())
        self.now = T0
        self.embedded: list[str] = []
        self.embed_fails = 0
        self.before_upsert: Callable[[], None] | None = None  # runs as an upsert reaches memory
        self.before_mark: Callable[[], None] | None = None  # runs as MarkLive reaches the shard
        self.before_read: Callable[[], Awaitable[None]] | None = None  # awaited as LiveTurns is sent
        self.marks_refused = False
        self.lags: list[float] = []
        self.live = LiveIndexer(
            self.record,
            self,
            LiveMemoryConfig.model_validate(live),
            take=self.store.take_live,
            lag=self.lags.append,
            now_ms=lambda: self.now,
        )
        config = SummarizerConfig(model_pass="off", retry_backoff_s=0.0)
        self.closing = ClosingJobs(self.record, self, config, settled=self.live.settled)

    # -- the ports and the shard's log --------------------------------------------------------------

    async def record(self, ops: Sequence[SessionOp]) -> list[Any]:
        if self.before_read is not None and any(isinstance(op, LiveTurns) for op in ops):
            await self.before_read()
        if any(isinstance(op, MarkLive) for op in ops):
            if self.before_mark is not None:
                self.before_mark()
            if self.marks_refused:
                return [Unavailable("read-only")] * len(ops)
        results = self.store.apply_batch(list(ops), self.now)
        self.store.take_journal()
        self.after_commit()
        return results

    def after_commit(self) -> None:
        """What the shard does after a batch is logged: forget what was deleted, queue closes."""
        for org, sid in self.store.take_live_deleted():
            self.memory.apply_batch([ForgetSessions(org, (sid,))])

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embed_fails:
            self.embed_fails -= 1
            raise RuntimeError("the embedder died")
        self.embedded += texts
        rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8) for text in texts]
        return np.asarray([row / np.linalg.norm(row) for row in rows], dtype=np.float32)

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        if self.before_upsert is not None and any(isinstance(op, UpsertVectors) for op in ops):
            self.before_upsert()
        results = self.memory.apply_batch(list(ops))
        self.memory.take_journal()
        return results

    async def upgrade(self, conversation: Conversation) -> Any:
        raise AssertionError("the model pass is off")

    # -- what clients do -------------------------------------------------------------------------------

    def apply(self, *ops: SessionOp) -> list[Any]:
        results = self.store.apply_batch(list(ops), self.now)
        self.store.take_journal()
        self.after_commit()
        return results

    def open_session(self, *said: str, name: str = "trip", ttl_s: int = 60) -> str:
        sid = new_session_id()
        self.apply(CreateSession("acme", sid, name, ttl_s, {}))
        if said:
            self.say(sid, *said)
        return sid

    def say(self, sid: str, *said: str) -> None:
        self.apply(AppendMessages("acme", sid, tuple(NewMessage("user", text) for text in said)))

    def delete(self, sid: str) -> None:
        """As the route does: forget the session's memory, then delete it (the shard forgets again)."""
        self.memory.apply_batch([ForgetSessions("acme", (sid,))])
        self.apply(DeleteSession("acme", sid))

    async def close(self, sid: str) -> None:
        self.apply(EndSession("acme", sid, SessionStatus.CLOSED))
        self.closing.submit(self.store.take_summary_jobs())
        await self.closing.drain()

    def live_through(self, sid: str) -> int:
        live = self.store.apply(LiveTurns("acme", sid, 0), self.now)
        return int(live.live_through)

    # -- what memory holds -----------------------------------------------------------------------------

    def index_of(self, namespace: str) -> Any:
        return dict(self.memory.namespaces()).get(("acme", namespace))

    def ids(self, namespace: str) -> list[str]:
        index = self.index_of(namespace)
        if index is None:
            return []
        return [found[0] for i in index.ids_below(index.next_id) if (found := index.entry(i)) is not None]

    def entry(self, namespace: str, external: str) -> dict[str, Any]:
        index = self.index_of(namespace)
        found = index.entry(index.faiss_id(external))
        return dict(found[1])

    def vector(self, namespace: str, external: str) -> np.ndarray:
        index = self.index_of(namespace)
        vectors: np.ndarray = index.vectors([index.faiss_id(external)])
        return vectors[0]

    def found(self, text: str, where: dict[str, Any] | None = None) -> list[str]:
        """The sessions a hybrid query finds with `text` in a highlight: a lexical query ranks
        sessions by their whole-session entries (turns' words pick highlights only), which an open
        session has none of yet, so it is found by meaning, and its highlights show the turn."""
        vector = np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8).astype(np.float32)
        query = QueryVectors(
            "acme", SESSION_MEMORY, vector / np.linalg.norm(vector), 10, where, text, "hybrid"
        )
        (matches,) = self.memory.apply_batch([query])
        return [
            m.id
            for m in matches
            if any(text.lower() in h["content"].lower() for h in m.metadata["highlights"])
        ]


def turns_of(*sids: str, counts: Sequence[int]) -> set[str]:
    return {f"{sid}#{seq}" for sid, count in zip(sids, counts, strict=True) for seq in range(1, count + 1)}


async def test_an_open_sessions_turn_is_found_after_a_tick_and_filters_see_it_active() -> None:
    h = Harness()
    sid = h.open_session("we adopted a beagle named Biscuit", "she sleeps on the sofa")
    assert h.found("Biscuit") == []
    await h.live.tick()
    assert h.found("Biscuit") == [sid]
    assert h.found("Biscuit", {"status": "active"}) == [sid]
    assert h.found("Biscuit", {"status": "closed"}) == []
    assert h.found("Biscuit", {"name": "trip"}) == [sid]
    assert set(h.ids(SESSION_MEMORY)) == turns_of(sid, counts=[2])
    assert h.live_through(sid) == 2
    assert h.lags == [0.0, 0.0], "each indexed message's lag is told"


async def test_the_stand_in_takes_no_part_in_whole_session_rankings() -> None:
    h = Harness()
    sid = h.open_session("the lighthouse keeper waved")
    await h.live.tick()
    stand_in = h.entry(SESSIONS_OF_MEMORY, sid)
    assert stand_in["live"] is True
    assert stand_in["status"] == "active"
    assert stand_in["closed_at"] is None
    indexes = SessionIndexes(h.index_of(SESSION_MEMORY), h.index_of(SESSIONS_OF_MEMORY))
    found = signals(indexes, h.vector(SESSIONS_OF_MEMORY, sid), "trip lighthouse", 5)
    assert found.rankings["session_dense"] == []
    assert found.rankings["session_lexical"] == []
    assert [s for s, _ in found.rankings["turn_lexical"]] == [sid]
    query = h.vector(SESSION_MEMORY, f"{sid}#1")
    (matches,) = h.memory.apply_batch(
        [QueryVectors("acme", SESSION_MEMORY, query, 5, None, "lighthouse", "hybrid")]
    )
    assert "live" not in matches[0].metadata
    assert matches[0].metadata["status"] == "active"


async def test_a_tick_takes_at_most_max_turns_and_leaves_the_rest_for_the_next() -> None:
    h = Harness(max_turns=3)
    first = h.open_session("one", "two")
    second = h.open_session("three", "four", "five")
    assert await h.live.tick() is True
    assert set(h.ids(SESSION_MEMORY)) == turns_of(first, counts=[2]) | {f"{second}#1"}
    assert await h.live.tick() is False
    assert set(h.ids(SESSION_MEMORY)) == turns_of(first, second, counts=[2, 3])


async def test_only_new_turns_are_embedded_and_one_embed_serves_a_tick() -> None:
    h = Harness()
    a, b = h.open_session("alpha one"), h.open_session("beta one")
    await h.live.tick()
    h.embedded.clear()
    h.say(a, "alpha two")
    await h.live.tick()
    assert h.embedded == ["trip\nalpha two"]
    assert set(h.ids(SESSION_MEMORY)) == turns_of(a, b, counts=[2, 1])


async def test_an_expired_or_completed_session_is_written_again_with_its_status() -> None:
    h = Harness()
    expiring = h.open_session("the ferry to Tangier", ttl_s=1)
    done = h.open_session("the ferry to Tarifa")
    await h.live.tick()
    h.now += 2000
    h.apply(ExpireDue(), EndSession("acme", done, SessionStatus.COMPLETED))
    h.embedded.clear()
    await h.live.tick()
    assert h.entry(SESSIONS_OF_MEMORY, expiring)["status"] == "expired"
    assert h.entry(SESSIONS_OF_MEMORY, done)["status"] == "completed"
    assert h.found("ferry", {"status": "active"}) == []
    assert set(h.found("ferry", {"status": {"$in": ["expired", "completed"]}})) == {expiring, done}
    assert h.embedded == ["trip"], "only the stand-ins, by their name (the same: embedded once)"
    assert await h.live.tick() is False
    assert h.store.live_backlog() == [], "written with their final status: nothing left for a restart"


async def test_a_rename_puts_every_turn_in_again_with_the_new_name() -> None:
    h = Harness()
    sid = h.open_session("we moved to Porto", "the flat is small")
    await h.live.tick()
    h.apply(UpdateSession("acme", sid, name="Maya"))
    h.embedded.clear()
    await h.live.tick()
    assert sorted(h.embedded) == ["Maya\nthe flat is small", "Maya\nwe moved to Porto"]
    assert set(h.ids(SESSION_MEMORY)) == turns_of(sid, counts=[2])


async def test_a_failed_tick_leaves_its_sessions_waiting_and_appends_go_on() -> None:
    h = Harness()
    sid = h.open_session("first words")
    h.embed_fails = 1
    try:
        await h.live.tick()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the embedder's failure is the tick's")
    h.say(sid, "second words")
    assert h.live.waiting == [("acme", sid)]
    await h.live.tick()
    assert set(h.ids(SESSION_MEMORY)) == turns_of(sid, counts=[2])


async def test_marks_the_shard_refuses_are_indexed_again_from_where_they_were() -> None:
    h = Harness()
    sid = h.open_session("first words", "second words")
    h.marks_refused = True
    with contextlib.suppress(Unavailable):
        await h.live.tick()
    h.marks_refused = False
    h.embedded.clear()
    await h.live.tick()
    assert len(h.embedded) == 2, "both turns again (the stand-in is their mean), replacing what went in"
    assert set(h.ids(SESSION_MEMORY)) == turns_of(sid, counts=[2])


async def test_a_restart_before_the_marks_indexes_again_without_doubling() -> None:
    h = Harness()
    sid = h.open_session("one", "two", "three")
    await h.live.tick()
    h.say(sid, "four", "five")
    h.before_mark = lambda: (_ for _ in ()).throw(KeyboardInterrupt())  # the shard dies here
    with contextlib.suppress(KeyboardInterrupt):
        await h.live.tick()
    # The shard starts again from its state (a snapshot of it) with the same memory shard.
    store = SessionStore()
    store.load(decode_session(encode_session(s)) for s in h.store._sessions.values())
    again = Harness(store, h.memory)
    again.live.add(store.live_backlog())
    await again.live.tick()
    assert sorted(again.ids(SESSION_MEMORY)) == sorted(turns_of(sid, counts=[5]))
    assert again.ids(SESSIONS_OF_MEMORY) == [sid]
    assert again.live_through(sid) == 5


async def test_a_close_after_live_indexing_makes_the_session_entry_indexing_all_at_close_makes() -> None:
    said = ("Maya adopted a beagle", "it is called Biscuit", "they walk by the river")
    live, at_close = Harness(), Harness()
    sid = live.open_session(*said[:2])
    await live.live.tick()
    live.say(sid, said[2])
    live.embedded.clear()
    await live.close(sid)
    assert live.embedded[0] == f"trip\n{said[2]}", "the close embeds only the turn not indexed yet"
    other = at_close.open_session(*said)
    await at_close.close(other)
    assert np.allclose(
        live.vector(SESSIONS_OF_MEMORY, sid), at_close.vector(SESSIONS_OF_MEMORY, other), atol=1e-6
    )
    whole = live.entry(SESSIONS_OF_MEMORY, sid)
    assert "live" not in whole
    assert whole["status"] == "closed"
    assert whole["closed_at"] is not None
    assert live.index_of(SESSIONS_OF_MEMORY).text(
        live.index_of(SESSIONS_OF_MEMORY).faiss_id(sid)
    ) == "\n".join(["trip", *said])
    assert set(live.ids(SESSION_MEMORY)) == turns_of(sid, counts=[3])
    assert await live.live.tick() is False, "a closed session is its closing job's"


async def test_a_close_waits_for_the_tick_in_flight_and_its_entry_is_not_replaced() -> None:
    h = Harness()
    sid = h.open_session("the tram to Belem")
    ticking = asyncio.Event()
    release = asyncio.Event()

    async def slow_embed(texts: Sequence[str]) -> np.ndarray:
        ticking.set()
        await release.wait()
        return await Harness.embed(h, texts)

    h.embed = slow_embed  # type: ignore[method-assign]
    tick = asyncio.create_task(h.live.tick())
    await ticking.wait()
    h.apply(EndSession("acme", sid, SessionStatus.CLOSED))
    h.closing.submit(h.store.take_summary_jobs())
    await asyncio.sleep(0)
    release.set()
    await tick
    await h.closing.drain()
    assert "live" not in h.entry(SESSIONS_OF_MEMORY, sid)
    assert h.entry(SESSIONS_OF_MEMORY, sid)["status"] == "closed"


async def test_a_rename_during_a_sessions_first_tick_puts_its_turns_in_under_the_new_name() -> None:
    h = Harness()
    sid = h.open_session("we moved to Porto", name="old")

    def rename() -> None:
        h.before_upsert = None
        h.apply(UpdateSession("acme", sid, name="new"))

    h.before_upsert = rename
    await h.live.tick()  # read under "old": its mark, naming "old", is not applied
    assert h.live_through(sid) == 0
    while await h.live.tick():
        pass
    index = h.index_of(SESSION_MEMORY)
    assert index.text(index.faiss_id(f"{sid}#1")) == "new\nwe moved to Porto"
    assert h.entry(SESSIONS_OF_MEMORY, sid)["name"] == "new"
    assert h.lags == [0.0], "indexed again under the new name: not lag a second time"
    h.embedded.clear()
    await h.close(sid)
    turns = [text for text in h.embedded if "\n" in text]  # a turn's text: its session's name first
    assert turns == [], "the turns in memory are the new name's: read back, not embedded again"


async def test_a_close_after_a_rename_the_ticks_missed_indexes_every_turn_under_the_new_name() -> None:
    h = Harness()
    sid = h.open_session("we moved to Porto", name="old")
    await h.live.tick()
    h.apply(UpdateSession("acme", sid, name="new"))
    await h.close(sid)
    index = h.index_of(SESSION_MEMORY)
    assert index.text(index.faiss_id(f"{sid}#1")) == "new\nwe moved to Porto"


async def test_a_purge_that_meets_a_tick_leaves_nothing_of_the_session() -> None:
    h = Harness()
    sid = h.open_session("a secret to purge", ttl_s=1)
    await h.live.tick()
    h.now += 2000
    h.apply(ExpireDue())

    def retention_forgets() -> None:  # retention forgets first; the tick's upsert lands after
        h.before_upsert = None
        h.memory.apply_batch([ForgetSessions("acme", (sid,))])

    h.before_upsert = retention_forgets
    await h.live.tick()
    h.apply(PurgeSessions((("acme", sid),)))
    assert set(h.ids(SESSION_MEMORY)) | set(h.ids(SESSIONS_OF_MEMORY)) == set()
    assert await h.live.tick() is False


async def test_a_closed_session_whose_job_failed_before_indexing_it_has_a_stand_in_saying_closed() -> None:
    h = Harness()
    sid = h.open_session("the ferry to Tangier")
    await h.live.tick()
    h.apply(EndSession("acme", sid, SessionStatus.CLOSED))
    assert await h.live.tick() is False, "its job's while it is unfinished"
    h.apply(FailSummary("acme", sid, "embedder down", final=True))
    await h.live.tick()
    stand_in = h.entry(SESSIONS_OF_MEMORY, sid)
    assert stand_in["status"] == "closed"
    assert stand_in["closed_at"] == h.now
    assert h.store.live_backlog() == []


async def test_a_session_whose_summary_fails_for_good_is_indexed_whole_after_its_live_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    sid = h.open_session("the ferry to Tangier", "the ferry back")
    await h.live.tick()
    embedded = len(h.embedded)

    def broken(conversation: Conversation) -> str:
        raise RuntimeError("the extract fell over")

    monkeypatch.setattr(job_module, "extract_of", broken)
    await h.close(sid)
    view = h.store.apply(GetSession("acme", sid, limit=0), h.now)
    assert (view["summary_status"], view["index_status"]) == ("failed", "ready")
    whole = h.entry(SESSIONS_OF_MEMORY, sid)
    assert not whole.get("live") and whole["status"] == "closed", "its session entry replaced the stand-in"
    assert f"{sid}#summary" not in h.ids(SESSIONS_OF_MEMORY)
    assert len(h.embedded) == embedded, "the turns live memory put in were read back, not embedded again"
    assert h.store.live_backlog() == [], "and live memory leaves it alone"


async def test_an_ended_sessions_stand_in_says_when_it_ended() -> None:
    h = Harness()
    sid = h.open_session("the ferry to Tarifa")
    await h.live.tick()
    h.now += 5
    h.apply(EndSession("acme", sid, SessionStatus.COMPLETED))
    await h.live.tick()
    assert h.entry(SESSIONS_OF_MEMORY, sid)["closed_at"] == h.now


@pytest.mark.parametrize("open_sessions", [5, 120])  # fewer and more than the search's depth
async def test_stand_ins_do_not_crowd_closed_sessions_out_of_the_whole_session_rankings(
    open_sessions: int,
) -> None:
    h = Harness()
    closed = h.open_session("the harbour ferry schedule", name="trip")
    await h.close(closed)
    for _ in range(open_sessions):
        h.open_session("the harbour ferry", name="trip")  # each stand-in's vector: the same turn's
    while await h.live.tick():
        pass
    indexes = SessionIndexes(h.index_of(SESSION_MEMORY), h.index_of(SESSIONS_OF_MEMORY))
    query = (await h.embed(["trip\nthe harbour ferry"]))[0]
    found = signals(indexes, query, None, 5, mode="dense")
    assert [sid for sid, _ in found.rankings["session_dense"]] == [closed]
    chosen = signals(indexes, query, None, 5, {"name": "trip"}, mode="dense")
    assert [sid for sid, _ in chosen.rankings["session_dense"]] == [closed]


async def test_the_turns_waiting_count_each_session_once() -> None:
    h = Harness(max_turns=1)
    sid = h.open_session("one", "two", "three")
    await h.live.tick()  # takes one, leaves the session waiting
    h.say(sid, "four")  # marked again
    assert h.store.live_waiting([*h.live.waiting, *h.store.live_dirty]) == 3


async def test_a_forget_that_fails_after_the_marks_is_tried_again_until_it_succeeds() -> None:
    h = Harness()
    sid = h.open_session("a secret to forget")

    def delete_now() -> None:  # the route's and the shard's forgets land before the tick's upsert
        h.before_upsert = None
        h.delete(sid)

    h.before_upsert = delete_now
    forgets_fail = 2
    index = h.index

    async def failing_forgets(org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        nonlocal forgets_fail
        if forgets_fail and any(isinstance(op, ForgetSessions) for op in ops):
            forgets_fail -= 1
            raise RuntimeError("the memory shard died")
        return await index(org, ops)

    h.index = failing_forgets  # type: ignore[method-assign]
    await h.live.tick()  # MarkLive finds it gone; the tick's forget fails
    assert set(h.ids(SESSION_MEMORY)) == {f"{sid}#1"}
    assert h.live.failures == 0, "a failed forget is kept, it does not fail the tick"
    await h.live.tick()  # fails again: kept
    assert forgets_fail == 0 and set(h.ids(SESSION_MEMORY)) == {f"{sid}#1"}
    await h.live.tick()
    assert set(h.ids(SESSION_MEMORY)) | set(h.ids(SESSIONS_OF_MEMORY)) == set()


async def test_one_organizations_failed_forget_blocks_neither_the_others_nor_indexing() -> None:
    h = Harness()
    sid = h.open_session("the ferry to Cacilhas")
    index = h.index

    async def down_for_globex(org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        if org == "globex":
            raise RuntimeError("globex's memory shard died")
        return await index(org, ops)

    h.index = down_for_globex  # type: ignore[method-assign]
    h.live.forget([("globex", "gone-1"), ("acme", "gone-2")])
    assert await h.live.tick() is False  # the forgets ran and acme's session went in
    assert set(h.ids(SESSION_MEMORY)) == {f"{sid}#1"}
    assert h.live._forgets == {"globex": {"gone-1"}}  # kept for the next tick; acme's done


async def test_a_start_forgets_again_the_sessions_replay_saw_deleted() -> None:
    h = Harness()
    sid = h.open_session("a secret to forget")
    await h.live.tick()
    h.apply(DeleteSession("acme", sid))  # as if the run crashed before its forget
    h.memory.apply_batch(
        [
            UpsertVectors(
                "acme",
                SESSION_MEMORY,
                (f"{sid}#9",),
                np.ones((1, 8), np.float32) / 8**0.5,
                ({"session_id": sid},),
            )
        ]
    )
    h.live.forget([("acme", sid)])
    await h.live.tick()
    assert set(h.ids(SESSION_MEMORY)) | set(h.ids(SESSIONS_OF_MEMORY)) == set()


async def test_a_session_skipped_at_its_read_is_settled_before_the_tick_ends() -> None:
    h = Harness()
    owned = h.open_session("the tram to Belem")
    other = h.open_session("the bus to Sintra")
    h.apply(EndSession("acme", owned, SessionStatus.CLOSED))
    h.store.take_summary_jobs()
    ticking, release = asyncio.Event(), asyncio.Event()

    async def slow_embed(texts: Sequence[str]) -> np.ndarray:
        ticking.set()
        await release.wait()
        return await Harness.embed(h, texts)

    h.embed = slow_embed  # type: ignore[method-assign]
    tick = asyncio.create_task(h.live.tick())
    await ticking.wait()
    await asyncio.wait_for(h.live.settled("acme", owned), 1)  # not held until the tick ends
    settled_other = asyncio.create_task(h.live.settled("acme", other))
    await asyncio.sleep(0)
    assert not settled_other.done()
    release.set()
    await tick
    await asyncio.wait_for(settled_other, 1)


async def test_a_close_waits_for_a_tick_whose_read_has_not_been_answered_yet() -> None:
    """The shard answers the tick's read after a close got in: the close's job waits for the tick
    (the session counts as in flight from the moment its read is sent), so its entry stays."""
    h = Harness()
    sid = h.open_session("the tram to Belem")
    reading, answer = asyncio.Event(), asyncio.Event()

    async def slow_read() -> None:
        h.before_read = None
        reading.set()
        await answer.wait()

    h.before_read = slow_read
    tick = asyncio.create_task(h.live.tick())
    await reading.wait()
    h.apply(EndSession("acme", sid, SessionStatus.CLOSED))
    h.closing.submit(h.store.take_summary_jobs())
    await asyncio.sleep(0)
    answer.set()
    await tick
    await h.closing.drain()
    assert "live" not in h.entry(SESSIONS_OF_MEMORY, sid)
    assert h.entry(SESSIONS_OF_MEMORY, sid)["status"] == "closed"


def deleted_at(moment: str) -> set[str]:
    """Delete an open session at `moment` of a tick; what memory holds of it afterwards."""

    async def run() -> set[str]:
        h = Harness()
        sid = h.open_session("a secret to forget", "another one")
        if moment == "before the read":
            h.delete(sid)
        elif moment == "before the upsert":

            def delete_now() -> None:
                h.before_upsert = None
                h.delete(sid)

            h.before_upsert = delete_now
        elif moment == "before the marks":
            h.before_mark = lambda: h.delete(sid)
        await h.live.tick()
        h.before_upsert = h.before_mark = None
        if moment == "after the marks":
            h.delete(sid)
        return set(h.ids(SESSION_MEMORY)) | set(h.ids(SESSIONS_OF_MEMORY))

    return asyncio.run(run())


def test_a_delete_anywhere_in_a_tick_leaves_nothing_of_the_session() -> None:
    for moment in ("before the read", "before the upsert", "before the marks", "after the marks"):
        assert deleted_at(moment) == set(), moment


def test_a_delete_whose_shard_forget_lands_before_the_upsert_is_caught_by_the_marks() -> None:
    """The route forgot and the shard forgot before the tick's upsert arrived: MarkLive finds the
    session gone and the tick forgets it."""

    async def run() -> set[str]:
        h = Harness()
        sid = h.open_session("a secret to forget")

        def delete_now() -> None:
            h.before_upsert = None
            h.delete(sid)

        h.before_upsert = delete_now
        await h.live.tick()
        return set(h.ids(SESSION_MEMORY)) | set(h.ids(SESSIONS_OF_MEMORY))

    assert asyncio.run(run()) == set()


# -- any order of appends, ticks, closes and deletes ----------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["open", "say", "tick", "close", "delete", "delete_in_tick"]), st.integers(0, 3)
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_memory_ends_with_exactly_the_turns_of_the_sessions_that_exist(
    actions: list[tuple[str, int]],
) -> None:
    async def run() -> None:
        h = Harness(max_turns=4)
        sessions: list[str] = []
        for action, pick in actions:
            sid = sessions[pick % len(sessions)] if sessions else None
            if action == "open" or sid is None:
                sessions.append(h.open_session(f"hello {len(sessions)}"))
            elif action == "say" and h.store._sessions.get(("acme", sid)) is not None:
                if h.store._sessions[("acme", sid)].status is SessionStatus.ACTIVE:
                    h.say(sid, f"more from {sid[-4:]}", f"and more {pick}")
            elif action == "tick":
                await h.live.tick()
            elif action == "close" and ("acme", sid) in h.store._sessions:
                if h.store._sessions[("acme", sid)].status is SessionStatus.ACTIVE:
                    await h.close(sid)
            elif action == "delete" and ("acme", sid) in h.store._sessions:
                h.delete(sid)
            elif action == "delete_in_tick" and ("acme", sid) in h.store._sessions:

                def delete_now(sid: str = sid) -> None:
                    h.before_upsert = None
                    h.delete(sid)

                h.before_upsert = delete_now
                await h.live.tick()
                h.before_upsert = None
        while await h.live.tick():
            pass
        await h.live.tick()
        existing = {sid: s for (_, sid), s in h.store._sessions.items()}
        expected = {f"{sid}#{seq}" for sid, s in existing.items() for seq in range(1, len(s.messages) + 1)}
        held = h.ids(SESSION_MEMORY)
        assert len(held) == len(set(held)), "no turn twice"
        assert set(held) == expected
        assert {entry.partition("#")[0] for entry in h.ids(SESSIONS_OF_MEMORY)} <= set(existing)

    asyncio.run(run())


async def test_a_forgotten_session_leaves_no_lag_behind() -> None:
    h = Harness()
    sid = h.open_session("the lift to Chiado")
    await h.live.tick()
    assert ("acme", sid) in h.live._lagged  # open: its lag is watched for the next turns
    h.apply(DeleteSession("acme", sid))  # between ticks: the shard hands it to forget
    h.live.forget([("acme", sid)])
    assert ("acme", sid) not in h.live._lagged


async def test_a_forget_handed_over_for_a_session_made_again_under_its_id_leaves_its_memory() -> None:
    """A retried forget, or a start's forget of a delete its replay saw, meets the session imported
    again under its id since: what memory holds under the id is the import's."""
    h = Harness()
    sid = h.open_session("the ferry to Tangier", "the ferry back")
    await h.live.tick()
    line = encode_session(h.store._sessions[("acme", sid)])
    h.delete(sid)
    h.apply(ImportSession("acme", sid, line))
    await h.live.tick()
    assert h.live_through(sid) == 2
    h.live.forget([("acme", sid)])
    await h.live.tick()
    assert set(h.ids(SESSION_MEMORY)) == {f"{sid}#1", f"{sid}#2"}
    assert h.live._forgets == {}


async def test_a_tick_that_read_a_deleted_session_forgets_the_earlier_export_imported_under_its_id() -> None:
    """The tick read four turns; the session was deleted (the route's forget first) and an export of
    it with two turns, under the same name, imported before the tick's upsert and its marks: the
    marks are not applied, the id is forgotten, and the import's own turns go in at the next tick."""
    h = Harness()
    sid = h.open_session("old turn 0", "old turn 1")
    earlier_export = encode_session(h.store._sessions[("acme", sid)])
    h.say(sid, "old turn 2", "old turn 3")

    def replaced_now() -> None:
        h.before_upsert = None
        h.delete(sid)
        h.apply(ImportSession("acme", sid, earlier_export))

    h.before_upsert = replaced_now
    await h.live.tick()
    assert h.live_through(sid) == 0
    assert set(h.ids(SESSION_MEMORY)) == set(), "nothing of the deleted session's turns is left"
    await h.live.tick()
    assert h.live_through(sid) == 2
    assert set(h.ids(SESSION_MEMORY)) == {f"{sid}#1", f"{sid}#2"}
