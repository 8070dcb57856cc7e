from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import Internal, SessionNotActive, SessionNotFound, VersionMismatch
from engine.idempotency import GONE, Idempotent
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    GetSession,
    ImportSession,
    ListSessions,
    LiveTurns,
    MarkIndexed,
    MarkLive,
    Ping,
    PurgeSessions,
    ReplaceContext,
    ResetLive,
    SummaryJob,
    UpdateSession,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.store import SessionStore

T0 = 1_700_000_000_000


def create(store: SessionStore, org: str = "acme", ttl_s: int = 60, now_ms: int = T0, name: str = "s") -> str:
    session_id = new_session_id()
    store.apply(CreateSession(org, session_id, name, ttl_s, {}), now_ms)
    return session_id


def say(store: SessionStore, org: str, sid: str, *texts: str, now_ms: int = T0) -> list[dict]:
    return store.apply(AppendMessages(org, sid, tuple(NewMessage("user", t) for t in texts)), now_ms)


def test_another_organization_cannot_see_a_session() -> None:
    store = SessionStore()
    sid = create(store, org="acme")
    for op in (
        GetSession("evil", sid),
        AppendMessages("evil", sid, (NewMessage("user", "x"),)),
        ReplaceContext("evil", sid, {}),
        UpdateSession("evil", sid, name="x"),
        EndSession("evil", sid, SessionStatus.CLOSED),
        DeleteSession("evil", sid),
    ):
        with pytest.raises(SessionNotFound):
            store.apply(op, T0)
    assert store.apply(ListSessions("evil", 10), T0)["items"] == []
    assert store.apply(GetSession("acme", sid), T0)["status"] == "active"


def test_messages_read_back_in_arrival_order() -> None:
    store = SessionStore()
    sid = create(store)
    say(store, "acme", sid, "a", "b")
    say(store, "acme", sid, "c")
    messages = store.apply(GetSession("acme", sid), T0)["messages"]
    assert [(m["seq"], m["content"]) for m in messages] == [(1, "a"), (2, "b"), (3, "c")]


def test_the_timer_expires_due_sessions_and_only_them() -> None:
    store = SessionStore()
    short, long_ = create(store, ttl_s=1), create(store, ttl_s=10)
    assert store.apply(ExpireDue(), T0 + 999) == []
    assert store.apply(ExpireDue(), T0 + 1_000) == [("acme", short)]
    assert store.apply(GetSession("acme", short), T0 + 1_000)["status"] == "expired"
    assert store.apply(GetSession("acme", long_), T0 + 1_000)["status"] == "active"
    expired = store.apply(ListSessions("acme", 10, SessionStatus.EXPIRED), T0 + 1_000)["items"]
    assert [view["id"] for _, view in expired] == [short]


def test_a_due_session_reads_as_expired_and_refuses_writes_before_the_timer_runs() -> None:
    store = SessionStore()
    sid = create(store, ttl_s=1)
    view = store.apply(GetSession("acme", sid), T0 + 1_500)
    assert (view["status"], view["ended_at"]) == ("expired", T0 + 1_000)
    with pytest.raises(SessionNotActive) as info:
        say(store, "acme", sid, "late", now_ms=T0 + 1_500)
    assert info.value.status == "expired"
    assert store.apply(ListSessions("acme", 10, SessionStatus.ACTIVE), T0 + 1_500)["items"] == []


def test_extending_the_ttl_keeps_a_session_alive_past_its_old_deadline() -> None:
    store = SessionStore()
    sid = create(store, ttl_s=1)
    store.apply(UpdateSession("acme", sid, ttl_s=60), T0 + 500)
    assert store.apply(ExpireDue(), T0 + 5_000) == []
    assert store.apply(ExpireDue(), T0 + 60_500) == [("acme", sid)]


def test_ended_and_deleted_sessions_leave_stale_deadlines_harmlessly() -> None:
    store = SessionStore()
    closed, deleted = create(store, ttl_s=1), create(store, ttl_s=1)
    store.apply(EndSession("acme", closed, SessionStatus.CLOSED), T0)
    store.apply(DeleteSession("acme", deleted), T0)
    assert store.apply(ExpireDue(), T0 + 2_000) == []
    assert store.apply(GetSession("acme", closed), T0 + 2_000)["status"] == "closed"
    assert store.next_deadline() is None


def test_ended_sessions_refuse_every_change() -> None:
    store = SessionStore()
    sid = create(store)
    store.apply(EndSession("acme", sid, SessionStatus.COMPLETED), T0)
    for op in (
        AppendMessages("acme", sid, (NewMessage("user", "x"),)),
        ReplaceContext("acme", sid, {"a": 1}),
        UpdateSession("acme", sid, ttl_s=5),
        EndSession("acme", sid, SessionStatus.CLOSED),
    ):
        with pytest.raises(SessionNotActive):
            store.apply(op, T0)


def test_delete_removes_the_session_from_reads_and_lists() -> None:
    store = SessionStore()
    sid = create(store)
    store.apply(DeleteSession("acme", sid), T0)
    with pytest.raises(SessionNotFound):
        store.apply(GetSession("acme", sid), T0)
    assert store.apply(ListSessions("acme", 10), T0)["items"] == []
    assert store.apply(Ping(), T0) == {"sessions": 0}


def test_a_batch_reports_each_ops_own_error() -> None:
    store = SessionStore()
    sid = create(store)
    results = store.apply_batch(
        [
            AppendMessages("acme", sid, (NewMessage("user", "ok"),)),
            ReplaceContext("acme", sid, {}, if_match=7),
            GetSession("acme", new_session_id()),
            AppendMessages("acme", sid, (NewMessage("user", "still ok"),)),
        ],
        T0,
    )
    assert results[0][0]["seq"] == 1
    assert isinstance(results[1], VersionMismatch)
    assert isinstance(results[2], SessionNotFound)
    assert results[3][0]["seq"] == 2


def test_a_bug_in_one_op_is_an_internal_error_for_that_op_only() -> None:
    store = SessionStore()

    def broken(op: GetSession, now_ms: int) -> None:
        raise RuntimeError("a bug")

    store._handlers[GetSession] = broken
    results = store.apply_batch([GetSession("acme", new_session_id()), Ping()], T0)
    assert isinstance(results[0], Internal) and "GetSession" in results[0].message
    assert results[1] == {"sessions": 0}


def test_lists_are_newest_first_and_pages_continue_after_the_cursor() -> None:
    store = SessionStore()
    ids = [create(store, now_ms=T0 + i) for i in range(7)]
    first = store.apply(ListSessions("acme", 3), T0 + 10)
    assert [v["id"] for _, v in first["items"]] == ids[::-1][:3]
    assert first["has_more"]
    second = store.apply(ListSessions("acme", 3, before=first["items"][-1][0]), T0 + 10)
    assert [v["id"] for _, v in second["items"]] == ids[::-1][3:6]
    last = store.apply(ListSessions("acme", 3, before=second["items"][-1][0]), T0 + 10)
    assert ([v["id"] for _, v in last["items"]], last["has_more"]) == ([ids[0]], False)


def test_status_filters_follow_transitions() -> None:
    store = SessionStore()
    a, b, c = create(store), create(store), create(store)
    store.apply(EndSession("acme", a, SessionStatus.CLOSED), T0)
    store.apply(EndSession("acme", b, SessionStatus.COMPLETED), T0)

    def listed(status: SessionStatus) -> set[str]:
        return {v["id"] for _, v in store.apply(ListSessions("acme", 10, status), T0)["items"]}

    assert listed(SessionStatus.CLOSED) == {a}
    assert listed(SessionStatus.COMPLETED) == {b}
    assert listed(SessionStatus.ACTIVE) == {c}


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 5)),
        st.tuples(st.just("say"), st.integers(0, 9), st.integers(1, 4)),
        st.tuples(st.just("end"), st.integers(0, 9)),
        st.tuples(st.just("delete"), st.integers(0, 9)),
        st.tuples(st.just("tick"), st.integers(0, 3_000)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_any_op_sequence_keeps_seqs_gap_free_and_lists_complete(script: list[tuple]) -> None:
    store, now = SessionStore(), T0
    sessions: list[str] = []
    sent: dict[str, list[str]] = {}
    for step in script:
        kind = step[0]
        if kind == "create":
            sessions.append(create(store, ttl_s=step[1], now_ms=now))
            sent[sessions[-1]] = []
        elif kind == "tick":
            now += step[1]
            store.apply(ExpireDue(), now)
        elif sessions:
            sid = sessions[step[1] % len(sessions)]
            results = store.apply_batch(
                [
                    AppendMessages(
                        "acme", sid, tuple(NewMessage("user", f"{sid}:{i}") for i in range(step[2]))
                    )
                    if kind == "say"
                    else EndSession("acme", sid, SessionStatus.CLOSED)
                    if kind == "end"
                    else DeleteSession("acme", sid)
                ],
                now,
            )
            if kind == "say" and isinstance(results[0], list):
                sent[sid].extend(m["content"] for m in results[0])
            if kind == "delete" and results[0] is None:
                sessions.remove(sid)
                del sent[sid]
    for sid in sessions:
        messages = store.apply(GetSession("acme", sid), now)["messages"]
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert [m["content"] for m in messages] == sent[sid]
    seen, before = [], None
    while True:
        page = store.apply(ListSessions("acme", 4, before=before), now)
        seen += [v["id"] for _, v in page["items"]]
        if not page["has_more"]:
            break
        before = page["items"][-1][0]
    assert sorted(seen) == sorted(sessions)
    assert len(seen) == len(set(seen))


def test_a_snapshot_chunk_ends_once_its_sessions_hold_enough_messages() -> None:
    # Long sessions make a chunk of their own, so no step holds the shard much longer than another.
    store = SessionStore()
    lengths = [30, 1, 1, 1, 40, 2]
    for n in lengths:
        sid = create(store)
        say(store, "acme", sid, *(f"m{i}" for i in range(n)))
    cursor = store.begin_snapshot(lambda session: len(session.messages))
    chunks = []
    while not cursor.done:
        chunks.append(cursor.next_chunk(100, max_messages=30))
    assert chunks == [[30], [1, 1, 1, 40], [2]]
    assert sum(map(sum, chunks)) == sum(lengths), "every session is written, once"


def test_retention_finds_ended_sessions_past_their_organizations_cutoff_and_purges_them_whole() -> None:
    store = SessionStore()
    for org in ("acme", "globex"):
        for sid in ("old", "new", "live"):
            store.apply(CreateSession(org, sid, "s", 3600, {}), T0)
        store.apply(Idempotent("k1", "fp", EndSession(org, "old", SessionStatus.CLOSED)), T0 + 1000)
        store.apply(EndSession(org, "new", SessionStatus.COMPLETED), T0 + 5000)
    assert len(store.idempotency) == 2
    # acme keeps ended sessions 3 s, globex forever (None), everyone else 1 s.
    due = store.purgeable({"acme": T0 + 4000, "globex": None}, T0 + 9000, limit=10)
    assert due == [("acme", "old")]
    everyone = [("acme", "old"), ("acme", "new"), ("globex", "old"), ("globex", "new")]
    assert store.purgeable({}, T0 + 9000, limit=10) == everyone
    assert len(store.purgeable({}, T0 + 9000, limit=3)) == 3
    assert store.apply(PurgeSessions((("acme", "old"), ("acme", "live"), ("acme", "gone"))), T0) == [
        ("acme", "old")
    ]
    assert ("acme", "old") not in store._sessions and ("acme", "live") in store._sessions, (
        "active is never purged"
    )
    (acme, gone), (globex, kept) = store.idempotency
    assert (acme[0], gone.result, globex[0]) == ("acme", GONE, "globex"), "its answer went with it"
    assert kept.result["status"] == "closed", "another organization's stays"
    with pytest.raises(SessionNotFound):  # a retry is told it is gone, and makes nothing
        store.apply(Idempotent("k1", "fp", EndSession("acme", "old", SessionStatus.CLOSED)), T0)
    journal = store.take_journal()
    assert isinstance(journal[-1], PurgeSessions)
    store.apply(PurgeSessions((("acme", "old"),)), T0)
    assert store.take_journal() == [], "a purge that removes nothing is not logged"


def closed(store: SessionStore, sid: str | None = None) -> str:
    """A closed session with two messages (under `sid` if given): its closing job is queued."""
    sid = sid or new_session_id()
    store.apply(CreateSession("acme", sid, "s", 60, {}), T0)
    say(store, "acme", sid, "a", "b")
    store.apply(EndSession("acme", sid, SessionStatus.CLOSED), T0)
    return sid


def test_a_stale_mark_never_matches_a_session_made_again_under_its_id() -> None:
    """An import after a delete, or a create under the same Idempotency-Key once the key lapsed:
    a mark made for the deleted session is not applied to the one there now."""
    store = SessionStore()
    sid = closed(store)
    line = encode_session(store._sessions[("acme", sid)])
    for make_again in (
        lambda: closed(store, sid),
        lambda: store.apply(ImportSession("acme", sid, line), T0),
    ):
        old = store.apply(SummaryJob("acme", sid), T0)
        store.apply(DeleteSession("acme", sid), T0)
        make_again()
        assert store.apply(MarkIndexed("acme", sid, 2, old.incarnation), T0) is None
        assert store.apply(GetSession("acme", sid), T0)["index_status"] == "pending"
    now = store.apply(SummaryJob("acme", sid), T0)
    assert store.apply(MarkIndexed("acme", sid, 2, now.incarnation), T0)["index_status"] == "ready"


def test_a_mark_read_before_the_store_is_rebuilt_never_matches_after_it(tmp_path: Path) -> None:
    """A failed log write rebuilds the store from the files while closing jobs run on: a mark read
    from the store before matches no session after, not even one imported twice since."""
    source = SessionStore()
    sid = closed(source)
    line = encode_session(source._sessions[("acme", sid)])
    shard = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0), lock_wait_s=0.2)
    shard.commit([ImportSession("acme", sid, line)])
    old = shard.store.apply(SummaryJob("acme", sid), T0)  # the job reads the first import
    shard.snapshot_now()
    shard.commit([DeleteSession("acme", sid)])
    shard.commit([ImportSession("acme", sid, line)])
    shard._rebuild()  # what going read-only after a failed log write does
    assert shard.commit([MarkIndexed("acme", sid, 2, old.incarnation)]) == [None]
    assert shard.store.apply(GetSession("acme", sid), T0)["index_status"] == "pending"
    shard.close()


def test_a_session_made_again_under_its_id_is_not_one_to_forget() -> None:
    store = SessionStore()
    sid = closed(store)
    line = encode_session(store._sessions[("acme", sid)])
    store.apply(DeleteSession("acme", sid), T0)
    store.apply(ImportSession("acme", sid, line), T0)
    other = closed(store)
    store.apply(DeleteSession("acme", other), T0)
    closed(store, other)  # made again by a create under the same id
    gone = closed(store)
    store.apply(DeleteSession("acme", gone), T0)
    assert store.take_live_deleted() == [("acme", gone)], "what memory holds under the others is theirs"


def live_mark(store: SessionStore, sid: str) -> tuple[tuple[str, int, int, bool, str | None], int]:
    """What a live tick that read the session now would mark (all its messages), and the incarnation
    it read."""
    live = store.apply(LiveTurns("acme", sid, 100), T0)
    return (sid, live.live_through, live.message_count, False, live.name), live.incarnation


def test_a_live_mark_read_from_a_deleted_session_does_not_mark_the_one_imported_under_its_id(
    tmp_path: Path,
) -> None:
    shard = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0), lock_wait_s=0.2)
    store = shard.store
    sid, other = create(store, name="trip"), create(store, name="other")
    say(store, "acme", sid, "old turn 0", "old turn 1")
    say(store, "acme", other, "hello")
    earlier_export = encode_session(store._sessions[("acme", sid)])
    shard.commit(
        [AppendMessages("acme", sid, (NewMessage("user", "old turn 2"), NewMessage("user", "old turn 3")))]
    )
    (mark, read), (other_mark, other_read) = live_mark(store, sid), live_mark(store, other)
    shard.commit([DeleteSession("acme", sid), ImportSession("acme", sid, earlier_export)])
    store.take_live()
    marked = MarkLive("acme", (mark, other_mark), incarnations=(read, other_read))
    assert shard.commit([marked]) == [(sid,)], "what the tick put in under the id is taken out"
    assert store._sessions[("acme", sid)].live_through == 0, "the import's own turns still go in"
    assert store.take_live() == [("acme", sid)]
    assert store._sessions[("acme", other)].live_through == 1
    shard._rebuild()  # the log, replayed, says the same
    assert shard.store._sessions[("acme", sid)].live_through == 0
    assert shard.store._sessions[("acme", other)].live_through == 1
    shard.close()


def test_a_live_mark_read_before_a_reset_is_not_applied() -> None:
    store = SessionStore()
    sid = create(store)
    say(store, "acme", sid, "a", "b")
    mark, read = live_mark(store, sid)
    store.apply(ResetLive("acme", sid), T0)
    assert store.apply(MarkLive("acme", (mark,), incarnations=(read,)), T0) == (sid,)
    assert store._sessions[("acme", sid)].live_through == 0
    mark, read = live_mark(store, sid)
    assert store.apply(MarkLive("acme", (mark,), incarnations=(read,)), T0) == ()
    assert store._sessions[("acme", sid)].live_through == 2
