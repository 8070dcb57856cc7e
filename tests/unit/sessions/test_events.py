"""The change feed's core (engine.sessions.events): positions that survive restarts and resume
exactly, isolation between organizations, and retention."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig, EventsConfig
from engine.errors import FeedGone, ValidationFailed
from engine.sessions.durable import DurableSessions
from engine.sessions.events import Event, EventLog, FeedReads, Page, Position, parse_position
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    FailSummary,
    FinishSummary,
    GetSession,
    MarkIndexed,
    ReplaceContext,
    StartSummary,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.snapshot import SNAPSHOT_MAGIC
from engine.storage.frames import frame, read_frames

T0 = 1_700_000_000_000


def open_shard(path: Path, clock: ManualClock, events: EventsConfig | None = None) -> DurableSessions:
    return DurableSessions(path, DurabilityConfig(), clock, lock_wait_s=0.2, events=events)


def everything(log: EventLog, after: Position, interests: set, limit: int = 1000) -> list:
    found = []
    while True:
        page = log.read(after, interests, limit)
        found += [(pos, e.type, e.session_id, e.body()) for pos, e in page.events]
        after = page.position
        if not page.more:
            return found


def create(shard: DurableSessions, org: str = "acme", ttl_s: int = 60) -> str:
    sid = new_session_id()
    shard.commit([CreateSession(org, sid, "s", ttl_s, {})])
    return sid


def say(org: str, sid: str, *texts: str) -> AppendMessages:
    return AppendMessages(org, sid, tuple(NewMessage("user", t) for t in texts))


def test_a_session_feed_holds_what_happened_to_it_in_order(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    sid = create(shard)
    shard.commit([say("acme", sid, "a", "b"), ReplaceContext("acme", sid, {"k": 1})])
    shard.commit([EndSession("acme", sid, SessionStatus.CLOSED)])
    shard.commit([FailSummary("acme", sid, "model broke", True)])
    feed = everything(shard.store.events, Position(1, 0), {("acme", sid)})
    assert [kind for _, kind, _, _ in feed] == [
        "session.created",
        "message.appended",
        "message.appended",
        "context.updated",
        "status.changed",
        "summary.failed",
    ]
    assert [body["message"]["content"] for _, kind, _, body in feed if kind == "message.appended"] == [
        "a",
        "b",
    ]
    assert [str(pos) for pos, *_ in feed] == ["1.1", "2.1", "2.2", "2.3", "3.1", "4.1"]
    org = everything(shard.store.events, Position(1, 0), {("acme", None)})
    assert [kind for _, kind, _, _ in org] == ["session.created", "session.closed", "summary.failed"]


def test_a_session_becoming_searchable_is_an_event_after_its_summary(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    sid = create(shard)
    shard.commit([say("acme", sid, "a"), EndSession("acme", sid, SessionStatus.CLOSED)])
    shard.commit([StartSummary("acme", sid)])
    shard.commit([FinishSummary("acme", sid, "a", "extractive", 1, 1, method="extractive", index=True)])
    assert shard.store.apply(GetSession("acme", sid), T0)["index_status"] == "pending"
    clock.advance(500)
    shard.commit([MarkIndexed("acme", sid, 2)])
    for interest in (("acme", sid), ("acme", None)):
        feed = everything(shard.store.events, Position(4, 0), {interest})
        assert [kind for _, kind, _, _ in feed] == ["summary.ready", "session.indexed"]
        assert feed[-1][3] == {
            "type": "session.indexed",
            "session_id": sid,
            "at": T0 + 500,
            "index_status": "ready",
            "indexed_at": T0 + 500,
        }


def test_a_log_that_marked_the_index_with_the_attempts_start_says_so_too(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock(T0))
    sid = create(shard)
    shard.commit([say("acme", sid, "a"), EndSession("acme", sid, SessionStatus.CLOSED)])
    shard.commit([StartSummary("acme", sid, indexed_entries=2)])  # as older releases logged it
    feed = everything(shard.store.events, Position(3, 0), {("acme", sid)})
    assert [(kind, body["indexed_at"]) for _, kind, _, body in feed] == [("session.indexed", T0)]


def test_expiry_and_deletion_reach_the_organization_feed(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    short, gone = create(shard, ttl_s=1), create(shard)
    clock.advance(1_000)
    shard.commit([ExpireDue(), DeleteSession("acme", gone)])
    feed = everything(shard.store.events, Position(3, 0), {("acme", None), ("acme", short)})
    assert [(kind, s) for _, kind, s, _ in feed] == [
        ("status.changed", short),
        ("session.expired", short),
        ("session.deleted", gone),
    ]


def test_no_event_of_another_organization_ever(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock(T0))
    mine, theirs = create(shard, "acme"), create(shard, "evil")
    shard.commit([say("acme", mine, "x"), say("evil", theirs, "y")])
    # Asking for another organization's session by its id, under one's own organization, finds nothing.
    for interests in ({("acme", None)}, {("acme", mine)}, {("acme", theirs)}):
        assert all(
            b["session_id"] != theirs for *_, b in everything(shard.store.events, Position(1, 0), interests)
        )
    assert everything(shard.store.events, Position(1, 0), {("acme", theirs)}) == []


def test_events_wait_for_their_log_record(tmp_path: Path) -> None:
    shard = open_shard(tmp_path, ManualClock(T0))
    sid = create(shard)
    store = shard.store
    store.apply(say("acme", sid, "not logged yet"), T0)  # applied in memory, no record written
    assert store.events.pending and everything(store.events, Position(1, 0), {("acme", sid)})[-1][1] == (
        "session.created"
    )


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("say"), st.integers(0, 3), st.integers(1, 3)),
        st.tuples(st.just("context"), st.integers(0, 3)),
        st.tuples(st.just("end"), st.integers(0, 3)),
        st.tuples(st.just("restart")),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS, limit=st.integers(1, 4), cut=st.integers(0, 100))
def test_positions_survive_restarts_and_resume_with_no_gap_and_no_duplicate(
    tmp_path_factory: pytest.TempPathFactory, actions: list, limit: int, cut: int
) -> None:
    path = tmp_path_factory.mktemp("feed")
    clock = ManualClock(T0)
    shard = open_shard(path, clock)
    sessions = [create(shard, org) for org in ("acme", "acme", "evil", "acme")]
    interests = {("acme", None), ("acme", sessions[0]), ("acme", sessions[1])}
    for action in actions:
        clock.advance(10)
        if action[0] == "restart":
            shard.close(snapshot=False)
            shard = open_shard(path, clock)
            continue
        sid = sessions[action[1]]
        org = "evil" if action[1] == 2 else "acme"
        if action[0] == "say":
            op = say(org, sid, *[f"m{i}" for i in range(action[2])])
        elif action[0] == "context":
            op = ReplaceContext(org, sid, {"at": clock.now_ms()})
        else:
            op = EndSession(org, sid, SessionStatus.COMPLETED)
        shard.commit([op])
    whole = everything(shard.store.events, Position(1, 0), interests)
    assert all(b["session_id"] != sessions[2] for *_, b in whole)
    # Resuming from any event's position, in pages of any size, gives exactly what followed it.
    resume_at = cut % (len(whole) + 1)
    start = Position(1, 0) if resume_at == 0 else whole[resume_at - 1][0]
    assert everything(shard.store.events, start, interests, limit) == whole[resume_at:]
    # And so does the same after one more restart.
    shard.close(snapshot=False)
    shard = open_shard(path, clock)
    assert everything(shard.store.events, start, interests, limit) == whole[resume_at:]
    shard.close(snapshot=False)


def test_a_resume_is_gone_only_when_an_event_it_wants_is_no_longer_kept(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock, EventsConfig(retention_s=60, max_events=3))
    sid = create(shard, ttl_s=3600)
    mine = {("acme", sid)}
    shard.commit([say("acme", sid, "a")])
    shard.store.events.read(Position(1, 0), mine)  # both records kept
    shard.commit([say("acme", sid, "b", "c")])  # four events: the first record's go
    with pytest.raises(FeedGone) as info:
        shard.store.events.read(Position(1, 0), mine)
    assert info.value.details["oldest_resumable"] == "1.1"  # right after session.created
    assert [e.type for _, e in shard.store.events.read(Position(1, 1), mine).events] == [
        "message.appended"
    ] * 3
    clock.advance(61_000)
    quiet = create(shard, ttl_s=3600)  # the older records age out
    with pytest.raises(FeedGone):
        shard.store.events.read(Position(3, 0), mine)
    assert shard.store.events.read(Position(3, 2), mine).events == []  # it had seen them all
    # Nothing of the quiet session was dropped, wherever its consumer left off.
    assert [e.type for _, e in shard.store.events.read(Position(1, 0), {("acme", quiet)}).events] == [
        "session.created"
    ]
    shard.snapshot_now()
    clock.advance(1)
    shard.commit([say("acme", sid, "d")])
    shard.close(snapshot=False)
    shard = open_shard(tmp_path, clock)  # from the snapshot: what came before it is not known
    with pytest.raises(FeedGone):
        shard.store.events.read(Position(4, 0), {("acme", quiet)})
    assert shard.store.events.read(Position(4, 1), {("acme", quiet), ("acme", None)}).events == []
    assert [e.type for _, e in shard.store.events.read(Position(3, 2), mine).events] == ["message.appended"]
    shard.close(snapshot=False)


def test_a_consumer_that_was_caught_up_resumes_after_a_graceful_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    sid = create(shard)
    shard.commit([say("acme", sid, "a", "b")])
    last_id = everything(shard.store.events, Position(1, 0), {("acme", sid)})[-1][0]
    org_at = shard.store.events.end  # where an organization's consumer stands after its feed.ready
    shard.close()  # graceful: a final snapshot at the newest record
    shard = open_shard(tmp_path, clock)
    shard.commit([say("acme", sid, "c"), EndSession("acme", sid, SessionStatus.COMPLETED)])
    resumed = everything(shard.store.events, last_id, {("acme", sid)})
    assert [(kind, body.get("message", {}).get("content")) for _, kind, _, body in resumed] == [
        ("message.appended", "c"),
        ("status.changed", None),
    ]
    assert [e[1] for e in everything(shard.store.events, org_at, {("acme", None)})] == ["session.completed"]
    shard.close()
    shard = open_shard(tmp_path, clock)  # and again, from a snapshot that has the last one's positions
    assert everything(shard.store.events, shard.store.events.end, {("acme", sid)}) == []
    with pytest.raises(FeedGone):
        shard.store.events.read(last_id, {("acme", sid)})  # "c" and the end are no longer known
    shard.close(snapshot=False)


def test_a_snapshot_without_feed_positions_refuses_every_position_before_it(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    sid = create(shard)
    shard.snapshot_now()
    shard.close(snapshot=False)
    snapshot = next(tmp_path.glob("snapshot-*.snap"))
    rewrite_trailer(snapshot, lambda trailer: {k: v for k, v in trailer.items() if k != "feed"})
    shard = open_shard(tmp_path, clock)  # as an engine from before feed positions wrote it
    assert len(shard.store) == 1
    with pytest.raises(FeedGone):
        shard.store.events.read(Position(1, 1), {("acme", sid)})
    shard.commit([say("acme", sid, "a")])
    assert len(shard.store.events.read(Position(2, 0), {("acme", sid)}).events) == 1
    shard.close()  # its snapshot carries the refusal on
    shard = open_shard(tmp_path, clock)
    with pytest.raises(FeedGone):
        shard.store.events.read(Position(1, 1), {("acme", "sess_never_seen")})
    shard.close(snapshot=False)


def rewrite_trailer(path: Path, change: Any) -> None:
    """Rewrite a snapshot's last frame (its trailer) with `change` applied."""
    frames = [payload for _, payload in read_frames(path, SNAPSHOT_MAGIC)]
    frames[-1] = orjson.dumps(change(orjson.loads(frames[-1])))
    path.write_bytes(SNAPSHOT_MAGIC + b"".join(frame(f) for f in frames))


def test_a_position_past_the_feed_or_past_its_record_is_a_validation_error(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock)
    sid = create(shard)
    shard.commit([say("acme", sid, "a", "b")])  # record 2: two events
    shard.commit([ExpireDue()])  # nothing due: no record
    shard.commit([ReplaceContext("acme", sid, {"k": 1})])  # record 3
    log, mine = shard.store.events, {("acme", sid)}
    assert log.end == Position(4, 0)
    for past in (Position(4, 1), Position(5, 0), Position(99, 0)):
        with pytest.raises(ValidationFailed) as info:
            log.read(past, mine)
        assert info.value.details == {"field": "Last-Event-ID", "position": str(past), "newest": "4.0"}
        assert "without Last-Event-ID" in info.value.hint
    with pytest.raises(ValidationFailed) as info:
        log.read(Position(2, 9), mine)
    assert info.value.details["events"] == 2
    assert len(log.read(Position(2, 2), mine).events) == 1  # after both: the context update
    shard.commit([EndSession("acme", sid, SessionStatus.CLOSED)])  # record 4
    shard.commit([FailSummary("acme", sid, "try again", False)])  # record 5: logged, no event
    assert shard.lsn == 5 and log.end == Position(6, 0)
    with pytest.raises(ValidationFailed) as info:
        log.read(Position(5, 1), mine)
    assert info.value.details["events"] == 0
    assert log.read(Position(5, 0), mine).events == []
    shard.close()
    shard = open_shard(tmp_path, clock)
    shard.commit([DeleteSession("acme", sid)])  # record 6, after the snapshot at 5
    shard.commit([say("acme", create(shard), "x")])
    with pytest.raises(ValidationFailed):
        shard.store.events.read(Position(6, 2), mine)
    assert shard.store.events.read(Position(2, 9), set()).events == []  # before the snapshot: not known
    shard.close(snapshot=False)


def test_a_deleted_sessions_entry_goes_once_its_deletion_is_no_longer_kept(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    shard = open_shard(tmp_path, clock, EventsConfig(max_events=2))
    sid, other = create(shard), create(shard)
    shard.commit([DeleteSession("acme", sid)])
    log = shard.store.events
    with pytest.raises(FeedGone):
        log.read(Position(1, 0), {("acme", sid)})  # its session.created is dropped, its deletion kept
    for _ in range(3):
        shard.commit([say("acme", other, "x")])
    assert ("acme", sid) not in log._gone and ("acme", other) in log._gone
    shard.close(snapshot=False)


@pytest.mark.parametrize("text", ["", "1", "1.", "a.b", "1.2.3", "-1.0", "1" * 19 + ".0", " 12 .0"])
def test_a_malformed_position_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_position(text)


def test_a_position_reads_back_as_it_was_written() -> None:
    assert parse_position(str(Position(1234, 5))) == Position(1234, 5)


class CountingLog:
    """An EventLog that counts the events its reads look at."""

    def __init__(self) -> None:
        self.log = EventLog()
        self.looked_at = 0
        self.lsn = 0

    def write(self, *sessions: str) -> None:
        self.lsn += 1
        events = [Event("message.appended", "acme", sid, T0, {}) for sid in sessions]
        self.log.publish(self.lsn, T0, events)

    def __call__(self) -> EventLog:
        return self

    def read(self, after: Position, interests: frozenset, limit: int) -> Page:
        page = self.log.read(after, interests, limit)
        self.looked_at += sum(
            len(e) for lsn, (_, e) in zip(self.log._lsns, self.log._records, strict=True) if lsn >= after.lsn
        )
        return page

    @property
    def end(self) -> Position:
        return self.log.end


async def test_a_waiting_read_looks_at_each_write_once_and_answers_what_it_wants() -> None:
    reads, log = FeedReads(), CountingLog()
    waiting = asyncio.ensure_future(reads.read(log, log.end, frozenset({("acme", "mine")}), 100, 5.0))
    for _ in range(50):  # writes it does not want: each is looked at once, not again at every write
        await asyncio.sleep(0)
        log.write("other", "other")
        reads.written()
    await asyncio.sleep(0)
    log.write("mine")
    reads.written()
    page = await asyncio.wait_for(waiting, 5)
    assert [e.session_id for _, e in page.events] == ["mine"]
    assert log.looked_at <= 2 * 50 + 1 + 2  # the first look, each write once, and the answer's


async def test_a_newer_read_of_the_same_reader_ends_the_older_at_once() -> None:
    reads, log = FeedReads(), CountingLog()
    interests = frozenset({("acme", "mine")})
    older = asyncio.ensure_future(reads.read(log, log.end, interests, 100, 30.0, ("gateway-1", 1)))
    await asyncio.sleep(0)
    newer = asyncio.ensure_future(reads.read(log, log.end, interests, 100, 30.0, ("gateway-1", 2)))
    page = await asyncio.wait_for(older, 1)  # not after its 30 s
    assert page.events == [] and not newer.done()
    late = await reads.read(log, log.end, interests, 100, 30.0, ("gateway-1", 1))  # arrived after it
    assert late.events == []
    log.write("mine")
    reads.written()
    assert [e.session_id for _, e in (await asyncio.wait_for(newer, 1)).events] == ["mine"]
