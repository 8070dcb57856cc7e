"""Resuming a change feed (engine.sessions.events) across snapshots (whole, or taken a chunk at a
time with writes between, as the shard takes them), graceful stops and kill -9s, on a real
DurableSessions, against a model of what the shard keeps written here from the rule alone: a consumer
that resumes from its last id gets exactly the events of its feed after it, and is refused
(FeedGone) only when an event it wants and has not seen is really no longer kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig, EventsConfig
from engine.errors import FeedGone
from engine.sessions.durable import DurableSessions
from engine.sessions.events import Event, EventLog, Interest, Position
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    FailSummary,
    ReplaceContext,
)
from engine.sessions.session import NewMessage, SessionStatus

T0 = 1_700_000_000_000
# Two sessions of each of two organizations; the first of each with a short TTL, so it can expire.
SESSIONS = (("acme", "sess_a0"), ("acme", "sess_a1"), ("umbrella", "sess_b0"), ("umbrella", "sess_b1"))
INTERESTS: tuple[Interest, ...] = (*SESSIONS, ("acme", None), ("umbrella", None))
SESSION_TYPES = frozenset(
    {
        "session.created",
        "message.appended",
        "context.updated",
        "session.updated",
        "status.changed",
        "summary.ready",
        "summary.failed",
        "session.indexed",
        "session.deleted",
    }
)
ORG_TYPES = frozenset(
    {
        "session.created",
        "session.closed",
        "session.completed",
        "session.expired",
        "session.deleted",
        "summary.ready",
        "summary.failed",
        "session.indexed",
    }
)


def in_feed(event: Event, interest: Interest) -> bool:
    org, session_id = interest
    if event.org != org:
        return False
    if session_id is None:
        return event.type in ORG_TYPES
    return event.session_id == session_id and event.type in SESSION_TYPES


@dataclass
class Model:
    """Every event the shard ever published, at its position, and which records' events it keeps:
    the newest records, at most `max_events` events and none older than `retention_ms` at the last
    write, and none from before the snapshot it last started from."""

    max_events: int
    retention_ms: int
    records: list[tuple[int, int, list[Event]]] = field(default_factory=list)  # (lsn, now_ms, events)
    kept: list[tuple[int, int, int]] = field(default_factory=list)  # (lsn, now_ms, events), oldest first
    snapshot_lsn: int = 0

    def written(self, lsn: int, now_ms: int, events: list[Event]) -> None:
        self.records.append((lsn, now_ms, list(events)))
        self._keep(lsn, now_ms, len(events))

    def _keep(self, lsn: int, now_ms: int, count: int) -> None:
        if count:
            self.kept.append((lsn, now_ms, count))
        while self.kept and (
            sum(n for *_, n in self.kept) > self.max_events or self.kept[0][1] < now_ms - self.retention_ms
        ):
            self.kept.pop(0)

    def restarted(self, snapshot_lsn: int) -> None:
        """From snapshot `snapshot_lsn`, then the log after it, written again in order."""
        self.kept = []
        for lsn, now_ms, events in self.records:
            if lsn > snapshot_lsn:
                self._keep(lsn, now_ms, len(events))

    def after(self, position: Position, interest: Interest) -> list[tuple[Position, Event]]:
        """The events of `interest`'s feed a consumer at `position` has not seen, with the position
        after each."""
        return [
            (Position(lsn, k + 1), event)
            for lsn, _, events in self.records
            for k, event in enumerate(events)
            if Position(lsn, k) >= position and in_feed(event, interest)
        ]

    def is_kept(self, lsn: int) -> bool:
        return any(kept == lsn for kept, _, _ in self.kept)

    def deletion_forgotten(self, interest: Interest) -> bool:
        """A deleted session whose deletion is no longer kept: its feed answers 404 (the session is
        not there), so no one resumes it."""
        return interest[1] is not None and any(
            e.type == "session.deleted" and (e.org, e.session_id) == interest and not self.is_kept(lsn)
            for lsn, _, events in self.records
            for e in events
        )


def read_all(log: EventLog, after: Position, interest: Interest, limit: int) -> list[tuple[Position, Event]]:
    found: list[tuple[Position, Event]] = []
    while True:
        page = log.read(after, [interest], limit)
        found += page.events
        after = page.position
        if not page.more:
            return found


ENDS = [SessionStatus.CLOSED, SessionStatus.COMPLETED]
OPS = st.one_of(
    st.tuples(st.just("say"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("context"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 3), st.sampled_from(ENDS)),
    st.tuples(st.just("fail"), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.integers(0, 3)),
)
LIVE = (  # what goes on while the shard runs, a snapshot in progress or not
    st.tuples(st.just("write"), st.lists(OPS, min_size=1, max_size=3)),
    st.tuples(st.just("wait"), st.integers(1, 400)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("read"), st.integers(0, len(INTERESTS) - 1), st.integers(1, 4), st.booleans()),
)
# A snapshot taken the way the shard takes it: begun, then a chunk at a time with ops (and the
# retention trims they cause) between its steps and before it completes; then the shard is killed,
# stopped gracefully, goes on, or is killed before the snapshot completes.
STEPPED = st.tuples(
    st.just("stepped"),
    st.lists(st.one_of(st.tuples(st.just("step"), st.integers(1, 3)), *LIVE), min_size=1, max_size=8),
    st.booleans(),  # a write while its file is made durable (in a thread, in the shard)
    st.sampled_from(["kill", "graceful", "run", "kill before complete"]),
)
ACTIONS = st.lists(
    st.one_of(
        *LIVE,
        st.tuples(st.just("snapshot")),
        STEPPED,
        st.tuples(st.just("graceful")),
        st.tuples(st.just("kill")),
    ),
    min_size=1,
    max_size=40,
)
# Chunks of one session and one event, so even these small shards' snapshots take many steps.
DURABILITY = DurabilityConfig(snapshot_chunk_sessions=1, snapshot_chunk_messages=1)


def op_of(action: tuple[Any, ...], now_ms: int) -> Any:
    org, sid = SESSIONS[action[1]]
    if action[0] == "say":
        return AppendMessages(org, sid, tuple(NewMessage("user", f"m{i}") for i in range(action[2])))
    if action[0] == "context":
        return ReplaceContext(org, sid, {"at": now_ms})
    if action[0] == "end":
        return EndSession(org, sid, action[2])
    if action[0] == "fail":
        return FailSummary(org, sid, "model broke", True)
    return DeleteSession(org, sid)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    actions=ACTIONS,
    max_events=st.sampled_from([2, 3, 5, 8, 100_000]),
    retention_ms=st.sampled_from([300, 1_000, 600_000]),
)
def test_a_consumer_resumes_exactly_and_is_refused_only_for_events_really_dropped(
    tmp_path_factory: pytest.TempPathFactory,
    actions: list[tuple[Any, ...]],
    max_events: int,
    retention_ms: int,
) -> None:
    path = tmp_path_factory.mktemp("feed")
    clock = ManualClock(T0)
    config = EventsConfig(max_events=max_events, retention_s=retention_ms / 1000)
    model = Model(max_events, retention_ms)

    def start() -> DurableSessions:
        shard = DurableSessions(path, DURABILITY, clock, lock_wait_s=0.2, events=config)
        shard.observe_events = lambda events: model.written(shard.lsn, clock.now_ms(), events)
        return shard

    shard = start()
    for i, (org, sid) in enumerate(SESSIONS):
        ttl_s = 1 if i % 2 == 0 else 3600
        assert not isinstance(shard.commit([CreateSession(org, sid, sid, ttl_s, {})])[0], Exception)
    positions = dict.fromkeys(INTERESTS, Position(1, 0))  # each consumer's last id

    def resume(interest: Interest, limit: int, to_end: bool) -> None:
        log = shard.store.events
        after = positions[interest]
        if model.deletion_forgotten(interest):
            return
        wanted = model.after(after, interest)
        dropped = [p for p, _ in wanted if not model.is_kept(p.lsn)]
        try:
            got = read_all(log, after, interest, limit)
        except FeedGone:
            assert dropped, f"{interest} refused at {after}, but every event it wants after it is kept"
            positions[interest] = log.end  # it reads the state again and follows from now
            return
        assert not dropped, f"{interest} resumed at {after} although {dropped} are no longer kept"
        assert [(p, e.type, e.session_id, e.body()) for p, e in got] == [
            (p, e.type, e.session_id, e.body()) for p, e in wanted
        ]
        if got:
            positions[interest] = got[-1][0]
        elif to_end:
            positions[interest] = log.end  # what a new connection's feed.ready names

    def restart(graceful: bool) -> None:
        nonlocal shard
        if graceful:
            shard.close()  # with its final snapshot (any snapshot in progress abandoned)
            model.snapshot_lsn = shard.lsn
        else:
            shard.close(snapshot=False)  # as if killed: the files as the last write left them
        shard = start()
        model.restarted(model.snapshot_lsn)

    def live(action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == "write":
            clock.advance(1)
            shard.commit([op_of(op, clock.now_ms()) for op in action[1]])
        elif kind == "wait":
            clock.advance(action[1])
        elif kind == "expire":
            clock.advance(1_000)
            shard.commit([ExpireDue()])
        else:
            resume(INTERESTS[action[1]], action[2], action[3])

    def stepped(during: list[tuple[Any, ...]], write_during_io: bool, then: str) -> None:
        shard.begin_snapshot()
        snapshot_lsn = shard.lsn  # the state it writes, and the feed's up to there, are as of now
        more = True
        for action in during:
            if action[0] != "step":
                live(action)
            for _ in range(action[1] if action[0] == "step" else 0):
                more = more and shard.snapshot_step()
        if then == "kill before complete":
            restart(graceful=False)  # the snapshot it was taking is not there
            return
        while more:
            more = shard.snapshot_step()
        shard.finish_snapshot_io()
        if write_during_io:
            live(("write", [("say", 0, 1), ("context", 2)]))
        shard.complete_snapshot()
        model.snapshot_lsn = snapshot_lsn
        if then != "run":
            restart(graceful=then == "graceful")

    for action in actions:
        kind = action[0]
        if kind == "snapshot":
            shard.snapshot_now()
            model.snapshot_lsn = shard.lsn
        elif kind == "stepped":
            stepped(*action[1:])
        elif kind in ("graceful", "kill"):
            restart(graceful=kind == "graceful")
        else:
            live(action)
    for interest in INTERESTS:
        resume(interest, 3, False)
    shard.close(snapshot=False)
