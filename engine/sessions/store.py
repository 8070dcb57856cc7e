"""SessionStore: many sessions hosted together, their per-organization listing index and expiry heap.

Pure Python, no Ray, no I/O. `apply(op, now_ms)` is the one entry point; given the same ops at the
same times it reaches the same state, which is what makes a write-ahead log of ops replayable.
Every mutating op that succeeds is appended to `journal`, which the durability layer drains into
the log. `begin_snapshot()` gives a cursor (engine.sessions.snapshot) over a consistent view: a
session about to change before the cursor has reached it is copied first (copy-on-write), so a
snapshot taken a chunk at a time still holds exactly the state at the moment it began.
Reads never change state: a session past its deadline reads as expired and refuses writes at once,
but only the timer's `ExpireDue` op moves it to `expired`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from sortedcontainers import SortedList

from engine.errors import (
    QuotaExceeded,
    SessionExists,
    SessionNotActive,
    SessionNotFound,
    ValidationFailed,
    apply_each,
)
from engine.idempotency import GONE, IdempotencyRecords, Idempotent, Replayed
from engine.sessions.codec import decode_session
from engine.sessions.events import EventLog, events_of
from engine.sessions.export import ExportCursor
from engine.sessions.ops import (
    SESSION_OPS,
    AppendMessages,
    CheckKey,
    CloseExport,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    ExportPage,
    FailSummary,
    FinishSummary,
    ForkSession,
    GetSession,
    ImportSession,
    ListSessions,
    LiveInput,
    LiveTurns,
    MarkIndexed,
    MarkLive,
    OpenExport,
    OpenExports,
    Ping,
    PurgeSessions,
    ReplaceContext,
    RequestSummary,
    ResetLive,
    SessionOp,
    StartSummary,
    SummaryInput,
    SummaryJob,
    SummaryUpgradeJob,
    UpdateSession,
    UpgradeSummary,
)
from engine.sessions.session import Session, SessionStatus, SummaryStatus
from engine.sessions.snapshot import SnapshotCursor
from engine.sessions.views import MessageView, SessionView, SessionWithMessages
from engine.storage.cursors import Cursors

SortKey = tuple[int, str]

# Session.incarnation: one count for the whole process, so that no two session objects that ever
# enter a store of this process (a store rebuilt after a failed log write included) share a stamp.
_INCARNATIONS = itertools.count(1)


class _OrgIndex:
    """One organization's sessions on this shard, ordered by (created_at, id), overall and per status."""

    __slots__ = ("all", "by_status")

    def __init__(self) -> None:
        self.all: SortedList = SortedList()
        self.by_status: dict[SessionStatus, SortedList] = {s: SortedList() for s in SessionStatus}

    def add(self, session: Session) -> None:
        self.all.add(session.sort_key)
        self.by_status[session.status].add(session.sort_key)

    def remove(self, session: Session) -> None:
        self.all.remove(session.sort_key)
        self.by_status[session.status].remove(session.sort_key)

    def move(self, session: Session, old: SessionStatus) -> None:
        self.by_status[old].remove(session.sort_key)
        self.by_status[session.status].add(session.sort_key)


class SessionStore:
    def __init__(self, idempotency: IdempotencyRecords | None = None, events: EventLog | None = None) -> None:
        self.idempotency = idempotency if idempotency is not None else IdempotencyRecords()
        # The change feed: each journaled op's events wait in `events.pending` until its log record
        # is written (engine.sessions.durable publishes them).
        self.events = events if events is not None else EventLog()
        self.replaying = False  # set while the log is replayed: logged ops are applied as they were
        self.condition: dict[str, Any] = {}  # set by the durability layer; pings answer it
        self._sessions: dict[tuple[str, str], Session] = {}
        self._orgs: dict[str, _OrgIndex] = {}
        self._deadlines: list[tuple[int, str, str]] = []  # heap; entries go stale on TTL change or delete
        # Mutating ops applied and not yet taken by the log, in order.
        self.journal: list[SessionOp | Idempotent] = []
        self._applied: SessionOp | None = None  # the part of the op being applied that the log holds
        self.summary_jobs: list[tuple[str, str]] = []  # (org, session id) queued for a summary, in order
        # Live memory (engine.closing.live): sessions that got messages or changed status since the
        # indexer last took them (a dict as an ordered set: one assignment in the append path), and
        # sessions deleted since, whose memory the shard takes out once the delete is logged (also
        # an ordered set: a session made again under its id leaves it, its memory is its own now).
        self.live_dirty: dict[tuple[str, str], None] = {}
        self.live_deleted: dict[tuple[str, str], None] = {}
        self._snapshot: SnapshotCursor | None = None
        self._snap_epoch = 0
        self._exports: Cursors[ExportCursor] = Cursors("a shard")
        self._now_ms = 0  # when the op being applied runs: a cursor lapsed by then is not copied into
        # The last log record written, read by an export cursor for its watermark; the durability
        # layer sets it (a store on its own has no log).
        self.log_position: Callable[[], int] = lambda: 0
        self._handlers: dict[type, Callable[[Any, int], Any]] = SESSION_OPS.handlers(self)

    def __len__(self) -> int:
        return len(self._sessions)

    def apply(self, op: SessionOp | Idempotent, now_ms: int) -> Any:
        self._now_ms = now_ms
        self._applied = None
        if type(op) is Idempotent:
            return self._apply_once(op, now_ms)
        result = self._handlers[type(op)](op, now_ms)
        # Reached only if the op succeeded; a failed op changes nothing, so nothing is logged.
        spec = SESSION_OPS.spec(op)
        if spec.logged and (result or spec.log_without_result):
            # What it applied, where that is only part of it (MarkLive): replay applies the same.
            self.journal.append(self._applied or op)
            self.events.pending += events_of(op, result, now_ms)
        return result

    def _apply_once(self, once: Idempotent, now_ms: int) -> Any:
        """A session write under an idempotency key (see engine.idempotency); scope: its session."""
        op = once.op

        def run() -> Any:
            result = self._handlers[type(op)](op, now_ms)
            self.journal.append(once)  # the key is logged with its op
            self.events.pending += events_of(op, result, now_ms)
            return result

        return self.idempotency.apply_once(
            once,
            op.session_id,
            now_ms,
            replaying=self.replaying,
            run=run,
            replay=lambda kept: self._replay(op, kept),
            # An append keeps (first seq, count), not copies of messages the session keeps.
            keep=lambda result: [result[0]["seq"], len(result)] if isinstance(op, AppendMessages) else result,
        )

    def _check_key(self, op: CheckKey, now_ms: int) -> Replayed | None:
        record = self.idempotency.find(op.org, op.session_id, op.key, op.fingerprint, now_ms)
        return None if record is None else self._replay(op.op, record.result)

    def _replay(self, op: Any, result: Any) -> Replayed:
        if result == GONE and not isinstance(op, DeleteSession):
            raise SessionNotFound(op.session_id)  # deleted since: its writes are not made again
        return Replayed(self._expand(op, result))

    def _expand(self, op: Any, result: Any) -> Any:
        """An append's record holds (first seq, count), not copies of messages the session keeps."""
        if not isinstance(op, AppendMessages):
            return result
        first, count = result
        messages = self._find(op.org, op.session_id).messages
        return [messages[seq - 1].view(seq) for seq in range(first, first + count)]

    def count_by_status(self) -> dict[SessionStatus, int]:
        """Sessions by status (as stored: one past its deadline counts as active until it expires)."""
        counts = dict.fromkeys(SessionStatus, 0)
        for index in self._orgs.values():
            for status, keys in index.by_status.items():
                counts[status] += len(keys)
        return counts

    def take_summary_jobs(self) -> list[tuple[str, str]]:
        taken, self.summary_jobs = self.summary_jobs, []
        return taken

    def take_live(self) -> list[tuple[str, str]]:
        taken, self.live_dirty = list(self.live_dirty), {}
        return taken

    def take_live_deleted(self) -> list[tuple[str, str]]:
        taken, self.live_deleted = list(self.live_deleted), {}
        return taken

    def live_backlog(self) -> list[tuple[str, str]]:
        """What a start hands live memory: sessions no closing job owns with messages past
        live_through, and live-indexed ones that ended since their entry was last written."""
        return [key for key, session in self._sessions.items() if session.live_behind]

    def live_waiting(self, keys: Iterable[tuple[str, str]]) -> int:
        """Messages of these sessions not yet in live memory (for status); each session counted once
        however often `keys` names it."""
        sessions = (self._sessions.get(key) for key in dict.fromkeys(keys))
        return sum(len(s.messages) - s.live_through for s in sessions if s is not None and not s.live_owned)

    def unfinished_summaries(self) -> list[tuple[str, str]]:
        """Jobs a restart must resume: queued, or running when the shard stopped (a re-index too)."""
        return [key for key, session in self._sessions.items() if session.job_unfinished]

    def pending_upgrades(self) -> list[tuple[str, str]]:
        """Upgrades a restart must resume: the model's pass over a ready extract, queued and not done."""
        return [key for key, session in self._sessions.items() if session.upgrade_due]

    def take_journal(self) -> list[SessionOp | Idempotent]:
        taken, self.journal = self.journal, []
        return taken

    def load(self, sessions: Iterable[Session]) -> None:
        """Adopt sessions read from a snapshot (into an empty store)."""
        for session in sessions:
            session.incarnation = next(_INCARNATIONS)
            self._sessions[(session.org, session.id)] = session
            self._orgs.setdefault(session.org, _OrgIndex()).add(session)
            if session.status is SessionStatus.ACTIVE:
                self._deadlines.append((session.expires_at, session.org, session.id))
        heapq.heapify(self._deadlines)

    def begin_snapshot(self, encode: Callable[[Session], Any]) -> SnapshotCursor:
        if self._snapshot is not None:
            raise RuntimeError("a snapshot is already in progress")
        self._snap_epoch += 1
        self._snapshot = SnapshotCursor(
            self._sessions.get, self._snap_epoch, list(self._sessions), encode, self.idempotency.frozen()
        )
        return self._snapshot

    def end_snapshot(self) -> None:
        self._snapshot = None

    def _before_change(self, session: Session) -> None:
        snapshot = self._snapshot
        if snapshot is not None and session.snap_epoch < snapshot.epoch:
            snapshot.saved[(session.org, session.id)] = session.copy()
            session.snap_epoch = snapshot.epoch
        for export in self._exports.of_org(session.org, self._now_ms):
            export.keep_before_change(session)

    def apply_batch(self, ops: Sequence[SessionOp], now_ms: int) -> list[Any]:
        """Apply ops in order; one op's error is its own result and never fails the others."""
        return apply_each(lambda op: self.apply(op, now_ms), ops)

    def next_deadline(self) -> int | None:
        return self._deadlines[0][0] if self._deadlines else None

    # -- writes -------------------------------------------------------------------------------------

    def _create(self, op: CreateSession, now_ms: int) -> SessionView:
        self._check_new(op.org, op.session_id, op.max_active)
        session = Session(
            org=op.org,
            id=op.session_id,
            name=op.name,
            ttl_s=op.ttl_s,
            created_at=now_ms,
            updated_at=now_ms,
            expires_at=now_ms + op.ttl_s * 1000,
            context=op.context,
            snap_epoch=self._snap_epoch,  # made after any snapshot in progress began: not part of it
        )
        self._add(session)
        return session.view()

    def _fork(self, op: ForkSession, now_ms: int) -> SessionView:
        """A new active session with the source's messages 1..at_seq: the same Message objects (a
        slice copies references), so a fork costs a reference per message while the shard runs. The
        source may have ended; it does not change."""
        source = self._find(op.org, op.source_id)
        held = len(source.messages)
        if not 0 <= op.at_seq <= held:
            raise ValidationFailed(
                f"at_seq: the session holds messages 1..{held}; {op.at_seq} is out of range",
                {"field": "at_seq", "at_seq": op.at_seq, "message_count": held},
                "Send a seq of one of the session's messages, or 0 for a fork with none of them.",
            )
        self._check_new(op.org, op.session_id, op.max_active)
        if op.max_messages is not None and not self.replaying and op.at_seq > op.max_messages:
            raise QuotaExceeded(
                "max_messages_per_session",
                op.max_messages,
                "Fork at an earlier message, or ask the operator to raise limits.max_messages_per_session.",
            )
        ttl_s = source.ttl_s if op.ttl_s is None else op.ttl_s
        session = Session(
            org=op.org,
            id=op.session_id,
            name=source.name if op.name is None else op.name,
            ttl_s=ttl_s,
            created_at=now_ms,
            updated_at=now_ms,
            expires_at=now_ms + ttl_s * 1000,
            # A context is replaced, never changed in place, so the fork may hold the source's.
            context=source.context if op.context is None else op.context,
            messages=source.messages[: op.at_seq],
            forked_from=(source.id, op.at_seq),
            snap_epoch=self._snap_epoch,
        )
        self._add(session)
        if session.messages:
            self.live_dirty[(op.org, op.session_id)] = None
        return session.view()

    def _check_new(self, org: str, session_id: str, max_active: int | None) -> None:
        """A session may be made under this id, within the organization's share of active sessions."""
        if (org, session_id) in self._sessions:
            raise SessionExists(session_id)
        if max_active is not None and not self.replaying:
            index = self._orgs.get(org)
            if index is not None and len(index.by_status[SessionStatus.ACTIVE]) >= max_active:
                raise QuotaExceeded(
                    "max_active_sessions",
                    max_active,
                    "Close, complete or delete active sessions of this organization, or ask the "
                    "operator to raise limits.max_active_sessions.",
                )

    def _add(self, session: Session) -> None:
        self._enter(session)
        self._sessions[(session.org, session.id)] = session
        self._orgs.setdefault(session.org, _OrgIndex()).add(session)
        heapq.heappush(self._deadlines, (session.expires_at, session.org, session.id))

    def _append(self, op: AppendMessages, now_ms: int) -> list[MessageView]:
        session = self._writable(op.org, op.session_id, now_ms)
        if (
            op.max_messages is not None
            and not self.replaying
            and len(session.messages) + len(op.messages) > op.max_messages
        ):
            raise QuotaExceeded(
                "max_messages_per_session",
                op.max_messages,
                f"The session holds {len(session.messages)} messages. Close it and continue in a new "
                "session, or ask the operator to raise limits.max_messages_per_session.",
            )
        appended = session.append(list(op.messages), now_ms=now_ms)
        self.live_dirty[(op.org, op.session_id)] = None
        return appended

    def _replace_context(self, op: ReplaceContext, now_ms: int) -> SessionView:
        session = self._writable(op.org, op.session_id, now_ms)
        session.replace_context(op.context, if_match=op.if_match, now_ms=now_ms)
        return session.view()

    def _update(self, op: UpdateSession, now_ms: int) -> SessionView:
        session = self._writable(op.org, op.session_id, now_ms)
        renamed = op.name is not None and op.name != session.name
        session.update(name=op.name, ttl_s=op.ttl_s, now_ms=now_ms)
        if renamed:
            # Every turn is indexed with its session's name: all of them go in again, replaced. Dirty
            # even when none was marked yet: a tick reading the old name may be under way, and its
            # mark (which names the name it read) is then not applied.
            session.live_through, session.live_ended = 0, False
            self.live_dirty[(op.org, op.session_id)] = None
        if op.ttl_s is not None:
            heapq.heappush(self._deadlines, (session.expires_at, op.org, op.session_id))
        return session.view()

    def _end(self, op: EndSession, now_ms: int) -> SessionView:
        session = self._writable(op.org, op.session_id, now_ms)
        self._transition(session, op.status, now_ms)
        if session.summary_status is SummaryStatus.PENDING:
            self.summary_jobs.append((op.org, op.session_id))
        return session.view()

    # -- summaries: queued by close or by a request, then run by the shard's closing jobs -----------

    def _request_summary(self, op: RequestSummary, now_ms: int) -> SessionView:
        session = self._find(op.org, op.session_id)
        self._before_change(session)
        if session.request_summary():
            session.updated_at = now_ms
            self.summary_jobs.append((op.org, op.session_id))
        return session.view()

    def _summary_job(self, op: SummaryJob, now_ms: int) -> SummaryInput | None:
        session = self._sessions.get((op.org, op.session_id))
        if session is None or not session.job_unfinished:
            return None
        # A summary asked for since its summary was made or since the import (RequestSummary) is
        # made first; the index follows it, with the new text.
        reindex = not session.summary_unfinished
        kept = None
        if reindex and session.summary is not None and session.summary_status is SummaryStatus.READY:
            kept = (session.summary, session.summary_method or "model", session.summarized_at)
        return SummaryInput(
            session.name,
            session.messages,
            session.created_at,
            session.ended_at,
            indexed=session.indexed_at is not None,
            reindex=reindex,
            summary=kept,
            status=session.status,
            live_through=session.live_through,
            incarnation=session.incarnation,
        )

    def _start_summary(self, op: StartSummary, now_ms: int) -> SessionView | None:
        session = self._sessions.get((op.org, op.session_id))
        if session is None or not session.summary_unfinished:
            return None
        self._before_change(session)
        if op.indexed_entries is not None:
            session.mark_indexed(op.indexed_entries, now_ms=now_ms)
        session.start_summary()
        return session.view()

    def _finish_summary(self, op: FinishSummary, now_ms: int) -> SessionView:
        session = self._find(op.org, op.session_id)
        self._before_change(session)
        session.finish_summary(
            op.text,
            op.model,
            op.messages_covered,
            op.messages_total,
            now_ms=now_ms,
            method=op.method,
            reason=op.reason,
            upgrade=op.upgrade,
            index=bool(op.index),
        )
        return session.view()

    def _summary_upgrade_job(self, op: SummaryUpgradeJob, now_ms: int) -> SummaryInput | None:
        session = self._sessions.get((op.org, op.session_id))
        if session is None or not session.upgrade_due:
            return None
        return SummaryInput(
            session.name, session.messages, session.created_at, session.ended_at, indexed=True
        )

    def _upgrade_summary(self, op: UpgradeSummary, now_ms: int) -> SessionView | None:
        session = self._find(op.org, op.session_id)
        if not session.upgrade_due:
            return None  # asked for again since: the new summary queues its own upgrade
        self._before_change(session)
        session.upgrade_summary(
            op.outcome,
            model=op.model,
            text=op.text,
            reason=op.reason,
            covered=op.messages_covered,
            total=op.messages_total,
            now_ms=now_ms,
        )
        return session.view()

    def _mark_indexed(self, op: MarkIndexed, now_ms: int) -> SessionView | None:
        session = self._find(op.org, op.session_id)
        if op.incarnation is not None and op.incarnation != session.incarnation:
            # Made for a session since deleted (or read from a store since rebuilt): this one's own
            # index has not run, or runs again.
            return None
        self._before_change(session)
        session.mark_indexed(op.entries, now_ms=now_ms)
        return session.view()

    # -- live memory (engine.closing.live) ---------------------------------------------------------

    def _live_turns(self, op: LiveTurns, now_ms: int) -> LiveInput | None:
        session = self._sessions.get((op.org, op.session_id))
        if session is None:
            return None
        start = session.live_through
        return LiveInput(
            session.name,
            session.created_at,
            session.status,
            start,
            len(session.messages),
            session.messages[start : start + op.limit],
            session.live_owned,
            session.live_ended,
            session.ended_at,
            session.incarnation,
        )

    def _mark_live(self, op: MarkLive, now_ms: int) -> tuple[str, ...]:
        gone = []
        applied = []
        for i, mark in enumerate(op.marks):
            session_id, after, through, ended, name = mark
            session = self._sessions.get((op.org, session_id))
            if session is None:
                gone.append(session_id)
                applied.append(mark)
                continue
            if op.incarnations is not None and op.incarnations[i] != session.incarnation:
                # Read from a session since deleted (made again under its id) or reset: what the tick
                # put in under the id may be that session's, and this one's turns are not in yet
                # (live_through 0: the indexer is sequential, so no later tick marked it). One with
                # turns marked is the same session read again from a store rebuilt since: what went
                # in is its own, and nothing need be taken out.
                if session.live_through == 0:
                    gone.append(session_id)
                if session.live_behind:
                    self.live_dirty[(op.org, session_id)] = None
                continue
            applied.append(mark)
            if session.live_through == after and (name is None or name == session.name):
                self._before_change(session)
                session.live_through = max(after, through)
                session.live_ended = ended
            if session.live_behind:  # more came, or it ended, while the indexer read and wrote
                self.live_dirty[(op.org, session_id)] = None
        if len(applied) < len(op.marks):
            self._applied = MarkLive(op.org, tuple(applied))
        return tuple(gone)

    def _reset_live(self, op: ResetLive, now_ms: int) -> SessionView | None:
        session = self._sessions.get((op.org, op.session_id))
        if session is None:
            return None
        self._before_change(session)
        session.live_through, session.live_ended = 0, False
        # A tick that read it before this is not marked: what it put in may precede the forget.
        session.incarnation = next(_INCARNATIONS)
        if session.live_behind:
            self.live_dirty[(op.org, op.session_id)] = None
        return session.view()

    def _fail_summary(self, op: FailSummary, now_ms: int) -> SessionView:
        session = self._find(op.org, op.session_id)
        self._before_change(session)
        session.fail_summary(op.error, final=op.final, index=bool(op.index))
        if session.live_behind:  # failed for good with nothing to index: its stand-in says its status
            self.live_dirty[(op.org, op.session_id)] = None
        return session.view()

    def _delete(self, op: DeleteSession, now_ms: int) -> None:
        self._remove(self._find(op.org, op.session_id))
        self.live_deleted[(op.org, op.session_id)] = None
        self.live_dirty.pop((op.org, op.session_id), None)

    def _purge(self, op: PurgeSessions, now_ms: int) -> list[tuple[str, str]]:
        purged = []
        for key in op.keys:
            session = self._sessions.get(key)
            if session is not None and session.status is not SessionStatus.ACTIVE:
                self._remove(session)
                purged.append(key)
                # As a delete: a tick that read it before the purge forgets it at its MarkLive, and
                # the shard forgets it once the purge is logged (retention forgot it before, too).
                self.live_deleted[key] = None
                self.live_dirty.pop(key, None)
        return purged

    def purgeable(
        self, cutoffs: dict[str, int | None], default: int | None, limit: int
    ) -> list[tuple[str, str]]:
        """Up to `limit` ended sessions that ended before their organization's cutoff (epoch ms):
        `cutoffs` by organization, `default` for the rest (None: keep them). A read, for retention."""
        found: list[tuple[str, str]] = []
        for org, index in self._orgs.items():
            cutoff = cutoffs.get(org, default)
            if cutoff is None:
                continue
            for status in (SessionStatus.CLOSED, SessionStatus.COMPLETED, SessionStatus.EXPIRED):
                # A session ends after it is made: only those made before the cutoff can qualify.
                for _, session_id in index.by_status[status].irange(maximum=(cutoff, "")):
                    session = self._sessions[(org, session_id)]
                    if session.ended_at is not None and session.ended_at < cutoff:
                        found.append((org, session_id))
                        if len(found) >= limit:
                            return found
        return found

    def _remove(self, session: Session) -> None:
        """Everything of the session goes: messages, context, summary, and what its idempotency
        records hold (their keys stay until they lapse, so a retry is not applied again)."""
        self._before_change(session)
        del self._sessions[(session.org, session.id)]
        index = self._orgs[session.org]
        index.remove(session)
        if not index.all:
            del self._orgs[session.org]
        self.idempotency.forget_results(session.org, session.id)

    def _expire_due(self, op: ExpireDue, now_ms: int) -> list[tuple[str, str]]:
        expired: list[tuple[str, str]] = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, org, session_id = heapq.heappop(self._deadlines)
            session = self._sessions.get((org, session_id))
            # Stale entries (deleted, ended, or TTL extended since) are dropped here.
            if session is not None and session.is_due(now_ms):
                self._before_change(session)
                self._transition(session, SessionStatus.EXPIRED, now_ms)
                expired.append((org, session_id))
        return expired

    # -- reads --------------------------------------------------------------------------------------

    def _get_view(self, op: GetSession, now_ms: int) -> SessionWithMessages:
        session = self._find(op.org, op.session_id)
        view = session.view_with_messages(op.after_seq, op.limit)
        _show_due_as_expired(session, view, now_ms)
        return view

    def _list(self, op: ListSessions, now_ms: int) -> dict[str, Any]:
        index = self._orgs.get(op.org)
        if index is None:
            return {"items": [], "has_more": False}
        keys = index.all if op.status is None else index.by_status[op.status]
        newest_first: Iterator[SortKey] = (
            keys.irange(maximum=op.before, inclusive=(True, False), reverse=True)
            if op.before is not None
            else reversed(keys)
        )
        if op.status is SessionStatus.ACTIVE:
            # An active session past its deadline already reads as expired; leave it out of 'active'.
            newest_first = (k for k in newest_first if not self._sessions[(op.org, k[1])].is_due(now_ms))
        items: list[tuple[SortKey, SessionView]] = []
        for key in islice(newest_first, op.limit + 1):
            session = self._sessions[(op.org, key[1])]
            view = session.view()
            _show_due_as_expired(session, view, now_ms)
            items.append((key, view))
        return {"items": items[: op.limit], "has_more": len(items) > op.limit}

    def _ping(self, op: Ping, now_ms: int) -> dict[str, Any]:
        return {"sessions": len(self._sessions), **self.condition}

    # -- export and import (engine.sessions.export) ----------------------------------------------------

    def _open_export(self, op: OpenExport, now_ms: int) -> dict[str, Any]:
        index = self._orgs.get(op.org)
        keys = [(op.org, sid) for _, sid in index.all] if index is not None else []
        # Ops earlier in this batch are in the journal: the log's next record will hold them.
        watermark = self.log_position() + (1 if self.journal else 0)
        self._exports.open(
            op.export_id,
            op.org,
            (op.max_open, op.max_per_org),
            now_ms,
            lambda: ExportCursor(op.org, keys, watermark, now_ms, op.idle_ms),
        )
        return {"watermark": watermark, "sessions": len(keys)}

    def _export_page(self, op: ExportPage, now_ms: int) -> dict[str, Any]:
        cursor = self._exports.page(op.export_id, op.org, now_ms)
        if op.max_lines == 0:
            return {"lines": [], "done": False}  # a keep-alive: the cursor waits for its turn
        lines, done = cursor.next_page(self._sessions, op.max_lines)
        if done:
            self._exports.close(op.export_id, op.org)
        return {"lines": lines, "done": done}

    def _close_export(self, op: CloseExport, now_ms: int) -> None:
        self._exports.close(op.export_id, op.org)

    def _open_exports(self, op: OpenExports, now_ms: int) -> dict[str, int]:
        return {"exports": len(self._exports)}

    def _import(self, op: ImportSession, now_ms: int) -> SessionView | None:
        session = decode_session(op.session)
        key = (op.org, op.session_id)
        if session.org != op.org or session.id != op.session_id:
            raise ValidationFailed("an imported session must be the one its op names", {"field": "session"})
        if key in self._sessions:
            return None  # imported before (or made here): skipped, and not logged
        if session.status is SessionStatus.ACTIVE:
            self._check_new(op.org, op.session_id, op.max_active)
        session.snap_epoch = self._snap_epoch  # made after any snapshot in progress began: not in it
        session.live_through, session.live_ended = 0, False  # this memory holds none of it yet
        self._enter(session)
        self._sessions[key] = session
        self._orgs.setdefault(op.org, _OrgIndex()).add(session)
        if session.status is SessionStatus.ACTIVE:
            heapq.heappush(self._deadlines, (session.expires_at, op.org, op.session_id))
        if session.job_unfinished:
            self.summary_jobs.append(key)  # into session memory as its source had it (ImportedSession)
        elif session.live_behind:
            self.live_dirty[key] = None
        return session.view()

    # -- internals ----------------------------------------------------------------------------------

    def _enter(self, session: Session) -> None:
        """A session made under its id (created, forked, imported, replayed): stamped, and no longer
        one whose memory is to be taken out, should it have been deleted before (what memory holds
        under its id from now on is its own)."""
        session.incarnation = next(_INCARNATIONS)
        self.live_deleted.pop((session.org, session.id), None)

    def _find(self, org: str, session_id: str) -> Session:
        session = self._sessions.get((org, session_id))
        if session is None:
            raise SessionNotFound(session_id)
        return session

    def _writable(self, org: str, session_id: str, now_ms: int) -> Session:
        session = self._find(org, session_id)
        if session.is_due(now_ms):
            raise SessionNotActive(session_id, SessionStatus.EXPIRED.value)
        self._before_change(session)
        return session

    def _transition(self, session: Session, to: SessionStatus, now_ms: int) -> None:
        old = session.status
        session.transition(to, now_ms=now_ms)
        self._orgs[session.org].move(session, old)
        if session.live_through:
            self.live_dirty[(session.org, session.id)] = None  # its entry in memory says active


def _show_due_as_expired(session: Session, view: SessionView, now_ms: int) -> None:
    if session.is_due(now_ms):
        view["status"] = SessionStatus.EXPIRED.value
        view["ended_at"] = session.expires_at
