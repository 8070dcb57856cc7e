"""The change feed of a session shard: what each logged op did, as events, kept for a while.

Events are derived from ops that changed state, with their results, so they are exactly what the
log holds: an op's events are published only once its record is written (`EventLog.publish`), and
recovery derives them again from the records it replays. An event's position is `(lsn, k)`: the
k-th event of log record `lsn`. A position names what a consumer has seen: `(lsn, k)` means every
event before the k-th of record `lsn`, so `Position(lsn + 1, 0)` follows the whole of record `lsn`.
Positions survive restarts (LSNs do), and a consumer resumes from one exactly, with no gap and no
duplicate.

A shard retains the events of its newest records: at most `max_events`, none older than
`retention_ms`, and none from before the snapshot it last started from. A consumer is refused
(FeedGone) only if an event of its own feed that it has not seen is no longer retained: so the log
keeps, per feed (an interest), the position after its newest event that is not retained, and a
snapshot keeps the same for the events before it (`FeedAtSnapshot`). A consumer that was caught up
resumes after any restart, and a quiet session's consumer is not refused because other sessions'
events were dropped. A position past the feed's end, or past the last event of a record still
retained, is no position this feed gave: refused as a validation error.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.config import EventsConfig
from engine.errors import FeedGone, ValidationFailed
from engine.idempotency import Idempotent
from engine.sessions.session import SessionStatus

# A session's feed: everything that happens to it. An organization's feed: sessions made, ended and
# deleted, their summaries, and when they became searchable (an end is `status.changed` in a
# session's feed and `session.<status>` in its organization's).
SESSION_FEED = (
    "session.created",
    "message.appended",
    "context.updated",
    "session.updated",
    "status.changed",
    "summary.ready",
    "summary.failed",
    "session.indexed",
    "session.deleted",
)
ORG_FEED = (
    "session.created",
    "session.closed",
    "session.completed",
    "session.expired",
    "session.deleted",
    "summary.ready",
    "summary.failed",
    "session.indexed",
)


class Position(NamedTuple):
    lsn: int
    k: int

    def __str__(self) -> str:
        return f"{self.lsn}.{self.k}"


_POSITION = re.compile(r"^(\d{1,18})\.(\d{1,9})$")


def parse_position(text: str, field: str = "Last-Event-ID") -> Position:
    match = _POSITION.match(text.strip())
    if match is None:
        raise ValidationFailed(
            f"{field} is not a feed position",
            {"field": field, "format": "<record>.<event>, e.g. 1234.0"},
            "Send back the id of the last event you received, unchanged.",
        )
    return Position(int(match[1]), int(match[2]))


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    org: str
    session_id: str
    at: int  # epoch ms: when the op ran
    data: dict[str, Any]

    @property
    def in_session_feed(self) -> bool:
        return self.type in SESSION_FEED

    @property
    def in_org_feed(self) -> bool:
        return self.type in ORG_FEED

    def body(self) -> dict[str, Any]:
        """What a consumer receives (the organization is the consumer's own, so it is left out)."""
        return {"type": self.type, "session_id": self.session_id, "at": self.at, **self.data}


def events_of(op: Any, result: Any, now_ms: int) -> list[Event]:
    """The events of one op that succeeded and is logged, from the op and what it returned."""
    if type(op) is Idempotent:
        op = op.op
    name = type(op).__name__
    if name == "AppendMessages":
        return [_event("message.appended", op, now_ms, {"message": m}) for m in result]
    if name in ("CreateSession", "ForkSession"):  # a fork is a new session, made as a create makes one
        return [_event("session.created", op, now_ms, {"session": result})]
    if name == "ReplaceContext":
        data = {"version": result["version"], "context": result["context"]}
        return [_event("context.updated", op, now_ms, data)]
    if name == "UpdateSession":
        data = {key: result[key] for key in ("name", "ttl_seconds", "expires_at")}
        return [_event("session.updated", op, now_ms, data)]
    if name == "EndSession":
        return _ended(op.org, op.session_id, result["status"], now_ms)
    if name == "ExpireDue":
        return [e for org, sid in result for e in _ended(org, sid, SessionStatus.EXPIRED.value, now_ms)]
    # A kept upgrade is the summary ready again, with the model's text (engine.closing.model_pass).
    if name == "FinishSummary" or (name == "UpgradeSummary" and op.outcome == "kept"):
        data = {"summary": result["summary"], "summary_provenance": result.get("summary_provenance")}
        return [_event("summary.ready", op, now_ms, data)]
    if name == "FailSummary" and op.final:
        return [_event("summary.failed", op, now_ms, {"error": op.error})]
    # The session is searchable in session memory: its turns and its ready summary are in. A client
    # that waits for that (index_status in a feed's first state) finds the change here. Logs written
    # before MarkIndexed marked it with the attempt's StartSummary.
    if name == "MarkIndexed" or (name == "StartSummary" and op.indexed_entries is not None):
        data = {"index_status": result["index_status"], "indexed_at": result["indexed_at"]}
        return [_event("session.indexed", op, now_ms, data)]
    if name == "DeleteSession":
        return [_event("session.deleted", op, now_ms, {"reason": "deleted"})]
    if name == "PurgeSessions":
        return [Event("session.deleted", org, sid, now_ms, {"reason": "retention"}) for org, sid in result]
    return []  # summary steps (start, request): the job's progress, not a change to watch


def _event(type_: str, op: Any, now_ms: int, data: dict[str, Any]) -> Event:
    return Event(type_, op.org, op.session_id, now_ms, data)


def _ended(org: str, session_id: str, status: str, now_ms: int) -> list[Event]:
    return [
        Event("status.changed", org, session_id, now_ms, {"status": status}),
        Event(f"session.{status}", org, session_id, now_ms, {"status": status}),
    ]


# Who a read is for: (organization, session id) for a session's feed, (organization, None) for
# an organization's feed. A gateway reads for all of its consumers at once.
Interest = tuple[str, str | None]
# Who reads a shard's feed over and over (a gateway process's tail of it), and which read this is.
Reader = tuple[str, int]


def wanted(event: Event, interests: frozenset[Interest]) -> bool:
    return (event.in_session_feed and (event.org, event.session_id) in interests) or (
        event.in_org_feed and (event.org, None) in interests
    )


@dataclass(frozen=True, slots=True)
class Page:
    events: list[tuple[Position, Event]]  # each with the position after it
    position: Position  # where the next read starts
    more: bool  # the limit cut the page short


class EventLog:
    def __init__(self, max_events: int = 100_000, retention_ms: int = 600_000) -> None:
        self.max_events = max_events
        self.retention_ms = retention_ms
        self.pending: list[Event] = []  # of ops applied, not yet logged
        self._lsns: list[int] = []  # of the records retained, ascending
        self._records: list[tuple[int, Sequence[Event]]] = []  # (now_ms, events), beside _lsns
        self._count = 0
        self.floor = 0  # the newest record whose events are not retained
        self.lsn = 0  # the newest record published
        # Per interest, the position after its newest event that is not retained; an interest with
        # none has lost nothing after `_gone_before` (a snapshot from before these were kept, or 0.0).
        # A deleted session's entry goes with its session.deleted event: its feed answers 404.
        self._gone: dict[Interest, Position] = {}
        self._gone_before = Position(0, 0)

    @classmethod
    def from_config(cls, config: EventsConfig) -> EventLog:
        return cls(config.max_events, round(config.retention_s * 1000))

    def empty_like(self) -> EventLog:
        return EventLog(self.max_events, self.retention_ms)

    @property
    def end(self) -> Position:
        """The position after every event published so far: where a new consumer starts."""
        return Position(self.lsn + 1, 0)

    def take_pending(self) -> list[Event]:
        taken, self.pending = self.pending, []
        return taken

    def publish(self, lsn: int, now_ms: int, events: Sequence[Event]) -> None:
        """Record `lsn` is in the log: its events become readable."""
        self.lsn = lsn
        if events:
            self._lsns.append(lsn)
            self._records.append((now_ms, events))
            self._count += len(events)
        self._trim(now_ms)

    def start_after(self, lsn: int, saved: SavedFeed | None) -> None:
        """Recovery read a snapshot up to `lsn`: the events before it are not known. `saved`: what
        the snapshot kept of the feed (FeedAtSnapshot); None, from a snapshot written before it
        kept that: every position before it is refused."""
        self.floor = self.lsn = lsn
        if saved is None:
            self._gone, self._gone_before = {}, Position(lsn + 1, 0)
        else:
            self._gone, self._gone_before = saved

    def _trim(self, now_ms: int) -> None:
        drop = 0
        count = self._count
        oldest_kept = now_ms - self.retention_ms
        while drop < len(self._records) and (count > self.max_events or self._records[drop][0] < oldest_kept):
            forget(self._gone, self._lsns[drop], self._records[drop][1])
            count -= len(self._records[drop][1])
            drop += 1
        if drop:
            self.floor = self._lsns[drop - 1]
            del self._lsns[:drop], self._records[:drop]
            self._count = count

    def at_snapshot(self) -> FeedAtSnapshot:
        """What a snapshot of the state as of now keeps of the feed (taken when it begins)."""
        return FeedAtSnapshot(dict(self._gone), self._gone_before, self._lsns[:], self._records[:])

    def read(self, after: Position, interests: Iterable[Interest], limit: int = 1000) -> Page:
        """The wanted events after `after`, at most `limit`; FeedGone if one of them is no longer
        retained, ValidationFailed if `after` is no position of this feed."""
        chosen = frozenset(interests)
        self.check(after, chosen)
        found: list[tuple[Position, Event]] = []
        position = self.end
        start = bisect.bisect_left(self._lsns, after.lsn)
        for i in range(start, len(self._lsns)):
            lsn = self._lsns[i]
            events = self._records[i][1]
            first = after.k if lsn == after.lsn else 0
            for k in range(first, len(events)):
                if wanted(events[k], chosen):
                    if len(found) >= limit:
                        return Page(found, Position(lsn, k), True)
                    found.append((Position(lsn, k + 1), events[k]))
        return Page(found, position, False)

    def check(self, after: Position, interests: Iterable[Interest]) -> None:
        """Whether a consumer of `interests` may resume after `after`: refused with FeedGone only if
        an event it wants from there on is no longer retained."""
        end = self.end
        if after > end:
            raise ValidationFailed(
                f"Last-Event-ID {after} is past the end of this feed ({end})",
                {"field": "Last-Event-ID", "position": str(after), "newest": str(end)},
                "Send back the id of an event this feed gave you, unchanged. An id from another "
                "deployment, or from writes the engine lost in a crash (durability.fsync everysec or "
                "never), is no position here: open the feed again without Last-Event-ID.",
            )
        if after.lsn > self.floor:
            held = self._events_in(after.lsn)
            if after.k > held:
                raise ValidationFailed(
                    f"Last-Event-ID {after} names no event: record {after.lsn} holds {held}",
                    {"field": "Last-Event-ID", "position": str(after), "events": held},
                    "Send back the id of the last event you received, unchanged.",
                )
            return  # every event from there on is retained
        gone = max((self._gone.get(i, self._gone_before) for i in interests), default=Position(0, 0))
        if gone > after:
            raise FeedGone(str(after), str(gone), str(end))

    def _events_in(self, lsn: int) -> int:
        """How many events retained record `lsn` holds (0: a record of none)."""
        i = bisect.bisect_left(self._lsns, lsn)
        return len(self._records[i][1]) if i < len(self._lsns) and self._lsns[i] == lsn else 0

    def __len__(self) -> int:
        return self._count


_SESSION_TYPES = frozenset(SESSION_FEED)
_ORG_TYPES = frozenset(ORG_FEED)


def forget(gone: dict[Interest, Position], lsn: int, events: Sequence[Event]) -> None:
    """Record `lsn`'s events are no longer retained: note, per interest, the position after its
    newest one. A session.deleted ends its session's entry (the session is not there to follow)."""
    for k, event in enumerate(events, 1):
        kind = event.type
        if kind in _SESSION_TYPES:
            if kind == "session.deleted":
                gone.pop((event.org, event.session_id), None)
            else:
                gone[event.org, event.session_id] = Position(lsn, k)
        if kind in _ORG_TYPES:
            gone[event.org, None] = Position(lsn, k)


# What a snapshot keeps of its shard's feed: (per interest, the position after its newest event up
# to the snapshot; the same for interests without an entry).
SavedFeed = tuple[dict[Interest, Position], Position]


class FeedAtSnapshot:
    """The feed's part of a snapshot: a restart from it knows no event up to its record, so per
    interest, the position after its newest event up to there. Taken when the snapshot begins (a
    copy of what is not retained, and the retained records, which never change), then worked out a
    chunk of events at a time between ops (`fold`), and written with the snapshot's trailer."""

    def __init__(
        self,
        gone: dict[Interest, Position],
        gone_before: Position,
        lsns: list[int],
        records: list[tuple[int, Sequence[Event]]],
    ) -> None:
        self._gone = gone
        self._gone_before = gone_before
        self._lsns = lsns
        self._records = records
        self._next = 0

    def fold(self, max_events: int) -> bool:
        """Take the next retained records, about `max_events` events; True once all are taken."""
        taken = 0
        while self._next < len(self._records) and taken < max_events:
            events = self._records[self._next][1]
            forget(self._gone, self._lsns[self._next], events)
            taken += len(events)
            self._next += 1
        return self._next >= len(self._records)

    def encode(self) -> dict[str, Any]:
        """As JSON: `before` and `gone`, a list of [org, session id or null, lsn, k]."""
        assert self._next >= len(self._records), "fold every record first"
        return {
            "before": list(self._gone_before),
            "gone": [[org, sid, at.lsn, at.k] for (org, sid), at in self._gone.items()],
        }


def decode_saved_feed(encoded: Any) -> SavedFeed | None:
    """What FeedAtSnapshot.encode wrote; None for a snapshot written before it (no such part)."""
    if encoded is None:
        return None
    gone = {(org, sid): Position(lsn, k) for org, sid, lsn, k in encoded["gone"]}
    return gone, Position(*encoded["before"])


class FeedReads:
    """A shard's long-polls of its feed: each waits until an event it wants is written or its wait
    is over. `written()` is called after every log write. A wait moves past what it has looked at,
    so a write wakes it to look at that write only. `reader` names who reads (a gateway's tail) and
    which read it is: a newer read of the same reader ends the older one at once, so a read given up
    on does not keep waking at every write until its wait is over."""

    def __init__(self) -> None:
        self._written = asyncio.Event()
        self._readers: dict[str, int] = {}

    def written(self) -> None:
        self._written.set()
        self._written = asyncio.Event()

    async def read(
        self,
        log: Callable[[], EventLog],
        after: Position | None,
        interests: frozenset[Interest],
        limit: int,
        wait_s: float,
        reader: Reader | None = None,
    ) -> Page:
        """`log()` gives the shard's event log as it is now (or raises, e.g. while it cannot
        serve); `after=None` answers at once with only where the feed ends."""
        if after is None:
            return Page([], log().end, False)
        if reader is not None:
            who, number = reader
            if number < self._readers.get(who, -1):
                return Page([], after, False)  # a newer read of this reader came first
            self._readers[who] = number
            self.written()  # ends this reader's older read, if it still waits
        deadline = time.monotonic() + wait_s
        while True:
            page = log().read(after, interests, limit)
            left = deadline - time.monotonic()
            if page.events or left <= 0:
                return page
            if reader is not None and self._readers.get(reader[0]) != reader[1]:
                return Page([], after, False)  # superseded: no one reads this any more
            after = page.position  # nothing wanted up to here: the next look starts after it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), left)
