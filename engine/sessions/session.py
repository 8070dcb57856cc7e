"""One session: its state, its lifecycle, and the changes it accepts. Pure Python, no I/O.

A session is a virtual actor: the shard that owns it applies its operations one at a time in
arrival order, so nothing here locks.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import sys
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple, cast

from engine.errors import SessionNotActive, SessionNotEnded, VersionMismatch
from engine.routing import shard_for

from .views import (
    ForkedFrom,
    IndexState,
    MessageView,
    Role,
    SessionView,
    SessionWithMessages,
    SummaryProvenance,
)

SESSION_ID_PREFIX = "sess_"
_SESSION_ID_HEX_CHARS = 32  # 128 random bits


def new_session_id() -> str:
    return SESSION_ID_PREFIX + secrets.token_hex(_SESSION_ID_HEX_CHARS // 2)


def session_id_for_key(org: str, idempotency_key: str) -> str:
    """The id a create under an Idempotency-Key gets: the same for every retry, so each retry
    reaches the shard that holds the first one's record."""
    digest = hashlib.blake2b(f"{org}\0{idempotency_key}".encode(), digest_size=_SESSION_ID_HEX_CHARS // 2)
    return SESSION_ID_PREFIX + digest.hexdigest()


def fork_session_id(org: str, source_id: str, shards: int, idempotency_key: str | None = None) -> str:
    """An id for a fork of `source_id` that lands on the source's shard, so that one op on one shard
    makes the fork from the source's messages. Drawn until one does (as many draws as there are
    shards, on average); under an Idempotency-Key the draws are the key's and the source's, so a
    retry gets the same id and reaches the first one's record."""
    home = shard_for(org, source_id, shards)
    draws = itertools.count()
    while True:
        if idempotency_key is None:
            candidate = new_session_id()
        else:
            candidate = session_id_for_key(org, f"{idempotency_key}\0fork\0{source_id}\0{next(draws)}")
        if shard_for(org, candidate, shards) == home:
            return candidate


def is_session_id(value: str) -> bool:
    hex_part = value[len(SESSION_ID_PREFIX) :]
    return (
        value.startswith(SESSION_ID_PREFIX)
        and len(hex_part) == _SESSION_ID_HEX_CHARS
        and all(c in "0123456789abcdef" for c in hex_part)
    )


class SessionStatus(StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    COMPLETED = "completed"
    EXPIRED = "expired"


# Every session starts active; leaving active is final.
TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.ACTIVE: frozenset({SessionStatus.CLOSED, SessionStatus.COMPLETED, SessionStatus.EXPIRED}),
    SessionStatus.CLOSED: frozenset(),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.EXPIRED: frozenset(),
}


class SummaryStatus(StrEnum):
    """A closed session's summary: pending (queued) -> running -> ready, or failed with a reason.
    A failed attempt that will be retried goes back to pending, keeping its error. A job indexes
    the session's messages before it starts the summary, so it reads pending while it does."""

    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True, frozen=True)
class NewMessage:
    role: str
    content: str
    tool_call_id: str | None = None
    tool_name: str | None = None


# One str object per role, shared by every message: a role decoded from the log or a snapshot is
# otherwise a string of its own, 53 bytes a message (a tenth of a recovered session's memory).
_ROLES = {role: role for role in ("user", "assistant", "system", "tool")}


def shared_role(role: str) -> str:
    return _ROLES.get(role, role)


class Message(NamedTuple):
    """A stored message. Its seq is its position in the session (1-based), so it is not stored.

    A tuple of atomic values: the cyclic garbage collector stops tracking such tuples, which keeps
    its full passes short when a shard holds millions of messages."""

    role: str
    content: str
    created_at: int
    tool_call_id: str | None = None
    tool_name: str | None = None

    def view(self, seq: int) -> MessageView:
        out: MessageView = {
            "seq": seq,
            "role": cast(Role, self.role),
            "content": self.content,
            "created_at": self.created_at,
        }
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_name is not None:
            out["tool_name"] = self.tool_name
        return out


@dataclass(slots=True)
class Session:
    org: str
    id: str
    name: str
    ttl_s: int
    created_at: int
    expires_at: int
    context: dict[str, Any]
    updated_at: int = 0
    status: SessionStatus = SessionStatus.ACTIVE
    version: int = 1
    ended_at: int | None = None
    summary_status: SummaryStatus | None = None
    summary: str | None = None
    summary_error: str | None = None
    summary_model: str | None = None
    summary_covered: int = 0  # messages the summary was made from (long sessions are cut)
    summary_total: int = 0  # messages the session had then
    summarized_at: int | None = None
    summary_attempts: int = 0
    summary_method: str | None = None  # model | extractive
    summary_reason: str | None = None  # why it is extractive: "first pass", or the model's text set aside
    # The model's pass over the ready extract is queued (engine.closing.model_pass); cleared by its verdict.
    summary_upgrade: bool = False
    summary_rejected: str | None = None  # why the model's pass did not replace the extract
    indexed_at: int | None = None  # when its messages became searchable in session memory
    indexed_entries: int = 0
    # Its closing job only puts its turns, and a ready summary, into session memory: a summary made
    # (finish_summary) and not yet indexed, or a session imported with its summary kept
    # (engine.sessions.export); cleared once they are there (mark_indexed).
    reindex: bool = False
    # Live memory (engine.closing.live): the seq through which its messages are in session memory
    # while it is open, and whether the entry standing for it there carries its final status.
    live_through: int = 0
    live_ended: bool = False
    messages: list[Message] = field(default_factory=list)
    forked_from: tuple[str, int] | None = None  # (source session id, seq): made by a fork at that message
    snap_epoch: int = 0  # the last snapshot that has (or had a copy of) this session; see SessionStore
    # Which entry into a store this object is: SessionStore stamps it from a count of the whole
    # process each time a session enters one (made, forked, imported, loaded from a snapshot,
    # replayed), and never encodes it. A closing job's MarkIndexed names the one it read, so a mark
    # made for a session since deleted and made again under its id is not applied; a store rebuilt
    # meanwhile stamps every session anew, so such a mark can only miss, never match another.
    incarnation: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        # One string per organization however the session was made (created, replayed from the
        # log, read from a snapshot), not a copy of the name in each session.
        self.org = sys.intern(self.org)

    def copy(self) -> Session:
        """A copy that later changes to this session cannot reach (messages are immutable)."""
        return replace(self, messages=list(self.messages))

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.created_at, self.id)

    def is_due(self, now_ms: int) -> bool:
        return self.status is SessionStatus.ACTIVE and now_ms >= self.expires_at

    def transition(self, to: SessionStatus, *, now_ms: int) -> None:
        if to not in TRANSITIONS[self.status]:
            raise SessionNotActive(self.id, self.status.value)
        self.status = to
        # An expired session ended at its deadline, whenever the timer noticed.
        self.ended_at = self.expires_at if to is SessionStatus.EXPIRED else now_ms
        self.updated_at = self.ended_at
        if to is SessionStatus.CLOSED:
            self.summary_status = SummaryStatus.PENDING

    @property
    def summary_unfinished(self) -> bool:
        """Queued, or running (a job that was running when the shard stopped is resumed)."""
        return self.summary_status in (SummaryStatus.PENDING, SummaryStatus.RUNNING)

    @property
    def job_unfinished(self) -> bool:
        """Its closing job has work left: a summary, or only putting it back into session memory."""
        return self.summary_unfinished or self.reindex

    def request_summary(self) -> bool:
        """Queue a (new) summary of an ended session; False if one is already queued or running."""
        if self.status is SessionStatus.ACTIVE:
            raise SessionNotEnded(self.id)
        if self.summary_unfinished:
            return False
        self.summary_status = SummaryStatus.PENDING
        self.summary_error = None
        self.summary_attempts = 0
        self.summary_upgrade = False  # the new summary queues its own upgrade
        return True

    def start_summary(self) -> None:
        self.summary_status = SummaryStatus.RUNNING
        self.summary_attempts += 1

    def finish_summary(
        self,
        text: str,
        model: str,
        covered: int,
        total: int,
        *,
        now_ms: int,
        method: str | None = None,
        reason: str | None = None,
        upgrade: bool = False,
        index: bool = False,
    ) -> None:
        """`index`: the summary (and the turns not yet there) go into session memory after it."""
        self.summary_status = SummaryStatus.READY
        self.summary = text
        self.summary_error = None
        self.summary_model = model
        self.summary_covered = covered
        self.summary_total = total
        self.summarized_at = now_ms
        self.summary_method = method
        self.summary_reason = reason
        self.summary_upgrade = upgrade
        self.summary_rejected = None
        if index:
            self.reindex = True

    @property
    def upgrade_due(self) -> bool:
        """The model's pass over its ready summary is queued and not done yet, and the summary is in
        session memory: the upgrade replaces its `#summary` entry, so it waits for the index."""
        return self.summary_upgrade and self.summary_status is SummaryStatus.READY and not self.reindex

    def upgrade_summary(
        self,
        outcome: str,
        *,
        model: str,
        text: str | None,
        reason: str | None,
        covered: int,
        total: int,
        now_ms: int,
    ) -> None:
        """The model pass's verdict on the ready extract: kept (its text replaces the extract),
        rejected (the extract stays; `reason` says why), or skipped (the pass is paused or off)."""
        self.summary_upgrade = False
        if outcome == "kept" and text is not None:
            self.finish_summary(text, model, covered, total, now_ms=now_ms, method="model")
        elif outcome == "rejected":
            self.summary_model = model  # the model that was asked
            self.summary_rejected = reason or "rejected"

    def mark_indexed(self, entries: int | None, *, now_ms: int) -> None:
        """`entries` None: only the summary went in; the turns' count stays."""
        self.indexed_at = now_ms
        if entries is not None:
            self.indexed_entries = entries
        self.reindex = False

    @property
    def live_owned(self) -> bool:
        """A closing job puts it into session memory (its job unfinished: closed, a summary asked
        for or failed for good and not yet indexed, an import's re-index), or did (indexed whole):
        live memory leaves it alone. A closed session whose job ended without indexing it (it has
        no messages, or a log written before failed summaries were indexed says so) is live
        memory's again, so its stand-in comes to say its status."""
        return self.job_unfinished or self.indexed_at is not None

    @property
    def live_behind(self) -> bool:
        """Live memory has work on it: messages past live_through, or an entry that still says
        active although it ended."""
        if self.live_owned:
            return False
        ended = self.status is not SessionStatus.ACTIVE
        return len(self.messages) > self.live_through or (
            self.live_through > 0 and ended and not self.live_ended
        )

    @property
    def index_status(self) -> IndexState | None:
        """A session with a closing job goes into session memory: pending until its messages and
        its ready summary are searchable (ready), an imported one's re-index included, however
        often it is retried; a summary made again is pending until its text is in memory too. A
        summary that failed for good leaves its turns to be indexed all the same (`reindex`): pending,
        then ready. Failed when the job had nothing to index (no messages), or when a log written
        before failed summaries were indexed says the job gave up. None for sessions never indexed."""
        if self.reindex:
            return "pending"
        if self.indexed_at is not None:
            return "ready"
        if self.job_unfinished:
            return "pending"
        return "failed" if self.summary_status is SummaryStatus.FAILED else None

    def fail_summary(self, error: str, *, final: bool, index: bool = False) -> None:
        """`index`: its turns go into session memory after it (`reindex`, ended by MarkIndexed),
        unless they are there already; a summary that fails for good leaves it searchable."""
        if self.summary_status is SummaryStatus.PENDING:
            # The attempt failed before its StartSummary (indexing its turns): it counts all the same.
            self.summary_attempts += 1
        self.summary_status = SummaryStatus.FAILED if final else SummaryStatus.PENDING
        self.summary_error = error
        if index and self.indexed_at is None:
            self.reindex = True

    def require_active(self) -> None:
        if self.status is not SessionStatus.ACTIVE:
            raise SessionNotActive(self.id, self.status.value)

    def append(self, new: list[NewMessage], *, now_ms: int) -> list[MessageView]:
        """All-or-nothing: the caller has validated every message before this runs."""
        self.require_active()
        first_seq = len(self.messages) + 1
        stored = [Message(shared_role(m.role), m.content, now_ms, m.tool_call_id, m.tool_name) for m in new]
        self.messages.extend(stored)
        self.updated_at = now_ms
        return [m.view(first_seq + i) for i, m in enumerate(stored)]

    def replace_context(self, context: dict[str, Any], *, if_match: int | None, now_ms: int) -> None:
        self.require_active()
        if if_match is not None and if_match != self.version:
            raise VersionMismatch(self.id, if_match, self.version)
        self.context = context
        self.version += 1
        self.updated_at = now_ms

    def update(self, *, name: str | None, ttl_s: int | None, now_ms: int) -> None:
        self.require_active()
        if name is not None:
            self.name = name
        if ttl_s is not None:
            self.ttl_s = ttl_s
            self.expires_at = now_ms + ttl_s * 1000
        self.updated_at = now_ms

    def view(self) -> SessionView:
        """The session as the API shows it (engine.sessions.views), without its messages."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "ttl_seconds": self.ttl_s,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "ended_at": self.ended_at,
            "message_count": len(self.messages),
            "context": self.context,
            "version": self.version,
            "summary_status": self.summary_status.value if self.summary_status else None,
            "summary": self.summary,
            "summary_error": self.summary_error,
            "summary_attempts": self.summary_attempts,
            "summary_provenance": self._provenance(),
            "index_status": self.index_status,
            "indexed_at": self.indexed_at,
            "forked_from": self._forked_from(),
        }

    def view_with_messages(self, after_seq: int = 0, limit: int | None = None) -> SessionWithMessages:
        """The view and the messages after `after_seq`, at most `limit` of them, in seq order."""
        end = len(self.messages) if limit is None else min(len(self.messages), after_seq + limit)
        out = cast(SessionWithMessages, self.view())  # filled in below, not copied
        out["messages"] = [self.messages[i].view(i + 1) for i in range(after_seq, end)]
        return out

    def _forked_from(self) -> ForkedFrom | None:
        if self.forked_from is None:
            return None
        return {"session_id": self.forked_from[0], "seq": self.forked_from[1]}

    def _provenance(self) -> SummaryProvenance | None:
        if self.summary_model is None:
            return None
        provenance: SummaryProvenance = {
            "model": self.summary_model,
            "messages_covered": self.summary_covered,
            "messages_total": self.summary_total,
            "created_at": self.summarized_at,
            "method": "extractive" if self.summary_method == "extractive" else "model",
        }
        if self.summary_reason:
            provenance["reason"] = self.summary_reason
        if self.summary_rejected:
            provenance["model_rejected"] = self.summary_rejected
        if self.summary_upgrade:
            provenance["upgrade"] = "pending"
        return provenance
