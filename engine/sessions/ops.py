"""Operations a shard applies. Every state change is one of these, applied by `SessionStore.apply`,
so the write-ahead log can record exactly the ops (with the time they ran at) and replay them.

They are plain frozen dataclasses: cheap to pickle across Ray and safe to share. Each is declared
once in SESSION_OPS (engine.oplog): its log tag, or that it is a read, and the SessionStore method
that applies it. A new op needs only its class here and its handler in SessionStore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.oplog import FieldCodec, Op, OpRegistry, coded, unlogged
from engine.sessions.session import NewMessage, SessionStatus

SESSION_OPS = OpRegistry("session")


class SessionOp(Op):
    """What every session op derives from (for type checkers; SESSION_OPS is what the shard goes by)."""

    __slots__ = ()


def _encode_messages(messages: tuple[NewMessage, ...]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        encoded = {"role": m.role, "content": m.content}
        if m.tool_call_id is not None:
            encoded["tool_call_id"] = m.tool_call_id
        if m.tool_name is not None:
            encoded["tool_name"] = m.tool_name
        out.append(encoded)
    return out


MESSAGES = FieldCodec(_encode_messages, lambda encoded: tuple(NewMessage(**m) for m in encoded))
STATUS = FieldCodec(str, SessionStatus)
SESSION_KEYS = FieldCodec(
    lambda keys: [list(key) for key in keys], lambda keys: tuple((org, sid) for org, sid in keys)
)
LIVE_MARKS = FieldCodec(
    lambda marks: [list(mark) for mark in marks],
    # A mark logged before marks named the session's name has none: applied as it was then.
    lambda marks: tuple((*mark[:4], mark[4] if len(mark) > 4 else None) for mark in marks),
)


@SESSION_OPS.logged("create", "_create")
@dataclass(slots=True, frozen=True)
class CreateSession(SessionOp):
    org: str
    session_id: str
    name: str
    ttl_s: int
    context: dict[str, Any]
    # Quota checked when the op first runs; not logged, so replay never refuses what was accepted.
    max_active: int | None = unlogged()  # this organization's active sessions on this shard


@SESSION_OPS.logged("fork", "_fork")
@dataclass(slots=True, frozen=True)
class ForkSession(SessionOp):
    """Make session `session_id` from `source_id`'s messages 1..at_seq, on the source's shard (the
    gateway picks such an id: engine.sessions.session.fork_session_id). The log holds this op, not
    the messages: replay applies it to the source as it was then, and finds the same messages.
    None for name, ttl_s or context: the source's."""

    org: str
    session_id: str  # the fork's: what an idempotency record, an event and an error name
    source_id: str
    at_seq: int
    name: str | None = None
    ttl_s: int | None = None
    context: dict[str, Any] | None = None
    # Quotas as create's, checked when the op first runs only.
    max_active: int | None = unlogged()
    max_messages: int | None = unlogged()


@SESSION_OPS.logged("append", "_append")
@dataclass(slots=True, frozen=True)
class AppendMessages(SessionOp):
    org: str
    session_id: str
    messages: tuple[NewMessage, ...] = coded(MESSAGES)
    max_messages: int | None = unlogged()  # quota on the session's messages, like max_active

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Its messages as plain tuples: pickle handles those in C, not one Python call each.
        plain = tuple([(m.role, m.content, m.tool_call_id, m.tool_name) for m in self.messages])
        return (_append_messages, (self.org, self.session_id, plain, self.max_messages))


def _append_messages(
    org: str, session_id: str, messages: tuple[tuple[str, str, str | None, str | None], ...], most: int | None
) -> AppendMessages:
    return AppendMessages(org, session_id, tuple([NewMessage(*m) for m in messages]), most)


@SESSION_OPS.logged("context", "_replace_context")
@dataclass(slots=True, frozen=True)
class ReplaceContext(SessionOp):
    org: str
    session_id: str
    context: dict[str, Any]
    if_match: int | None = None


@SESSION_OPS.logged("update", "_update")
@dataclass(slots=True, frozen=True)
class UpdateSession(SessionOp):
    org: str
    session_id: str
    name: str | None = None
    ttl_s: int | None = None


@SESSION_OPS.logged("end", "_end")
@dataclass(slots=True, frozen=True)
class EndSession(SessionOp):
    """close (summary follows) or complete (no summary)."""

    org: str
    session_id: str
    status: SessionStatus = coded(STATUS)


@SESSION_OPS.logged("delete", "_delete")
@dataclass(slots=True, frozen=True)
class DeleteSession(SessionOp):
    org: str
    session_id: str


@SESSION_OPS.logged("summary_request", "_request_summary")
@dataclass(slots=True, frozen=True)
class RequestSummary(SessionOp):
    """Queue a summary of an ended session (again). Closing a session queues one by itself."""

    org: str
    session_id: str


@dataclass(slots=True, frozen=True)
class SummaryInput:
    """What SummaryJob answers: what a closing job indexes and summarizes."""

    name: str
    messages: Sequence[Any]  # the session's Messages, in order (seq = position + 1)
    created_at: int
    ended_at: int | None
    indexed: bool  # its messages are in session memory already (an earlier attempt put them there)
    # Only put into session memory, with no new summary (Session.reindex): a summary made and not yet
    # indexed, or an imported session; and (text, method, made at) of its ready summary to put in
    # with its turns.
    reindex: bool = False
    summary: tuple[str, str, int | None] | None = None
    status: SessionStatus = SessionStatus.CLOSED  # what session memory records of it
    # Its messages through this seq went into session memory while it was open (engine.closing.live).
    live_through: int = 0
    # The session object's stamp (Session.incarnation): what MarkIndexed names, so it marks only
    # the session the job read.
    incarnation: int = 0


@SESSION_OPS.read("_summary_job")
@dataclass(slots=True, frozen=True)
class SummaryJob(SessionOp):
    """A read: the input of a session's queued closing job (a SummaryInput), or None when there is
    nothing to do (the session is gone, or no summary or re-index is queued or running)."""

    org: str
    session_id: str


@SESSION_OPS.logged("summary_start", "_start_summary", log_without_result=False)
@dataclass(slots=True, frozen=True)
class StartSummary(SessionOp):
    """A closing job starts an attempt: pending -> running, attempt + 1; with `indexed_entries`,
    the session's messages went into session memory just before (searchable from here on).
    Answers the session's view, or None when there is nothing to start (the session is gone, or
    its job is not pending), and is then not logged."""

    org: str
    session_id: str
    indexed_entries: int | None = None


@SESSION_OPS.logged("summary_done", "_finish_summary")
@dataclass(slots=True, frozen=True)
class FinishSummary(SessionOp):
    org: str
    session_id: str
    text: str
    model: str
    messages_covered: int
    messages_total: int
    method: str | None = None  # "extractive" (a closing job's), or "model" (logged before upgrades)
    reason: str | None = None  # why the summary is extractive
    upgrade: bool = False  # the model's pass over it is queued (UpgradeSummary ends it)
    # Its closing job puts it into session memory after this (Session.reindex, ended by MarkIndexed);
    # None in logs written while a job indexed before it finished.
    index: bool | None = None


@SESSION_OPS.read("_summary_upgrade_job")
@dataclass(slots=True, frozen=True)
class SummaryUpgradeJob(SessionOp):
    """A read: the input of a session's queued upgrade (a SummaryInput), or None when there is none
    (the session is gone, its summary is not ready, or no upgrade is queued)."""

    org: str
    session_id: str


@SESSION_OPS.logged("summary_upgrade", "_upgrade_summary", log_without_result=False)
@dataclass(slots=True, frozen=True)
class UpgradeSummary(SessionOp):
    """The model pass's verdict on a session's ready extract (engine.closing.model_pass): `outcome`
    kept (`text` replaces the summary), rejected (`reason` says why; the extract stays) or skipped.
    Answers the session's view, or None (not logged) when the upgrade is no longer the session's:
    its summary was asked for again meanwhile. A deleted session raises SessionNotFound."""

    org: str
    session_id: str
    outcome: str
    model: str = ""
    text: str | None = None
    reason: str | None = None
    messages_covered: int = 0
    messages_total: int = 0


# A closing job marks the session indexed with this op once its turns and its ready summary are in
# session memory (Session.reindex); logs written while a job indexed before its summary was made
# marked it by StartSummary.
@SESSION_OPS.logged("indexed", "_mark_indexed", log_without_result=False)
@dataclass(slots=True, frozen=True)
class MarkIndexed(SessionOp):
    """The session's messages, and its ready summary, are in its organization's session memory
    (searchable); the index it was queued for is done. `entries` None: only its summary went in
    (its turns were in already), and the count stays. Answers the session's view, or None (not
    logged) when the session under this id is not the `incarnation` the job read (it was deleted
    and made again under its id while the job indexed, or the store was rebuilt meanwhile)."""

    org: str
    session_id: str
    entries: int | None
    # SummaryInput.incarnation of the session the job read; checked when the op first runs, as
    # quotas are (replay applies a logged mark to the session it was made for).
    incarnation: int | None = unlogged()


@dataclass(slots=True, frozen=True)
class LiveInput:
    """What LiveTurns answers: what live memory indexes of an open session."""

    name: str
    created_at: int
    status: SessionStatus
    live_through: int
    message_count: int
    messages: Sequence[Any]  # its Messages after live_through (seq = live_through + position + 1)
    owned: bool  # a closing job puts it into session memory (closed, or a summary asked for): not live
    ended_written: bool  # the entry standing for it in memory carries its final status already
    ended_at: int | None = None  # when it ended, for its stand-in's closed_at
    # The session object's stamp (Session.incarnation): what MarkLive names, so it marks only this one.
    incarnation: int = 0


@SESSION_OPS.read("_live_turns")
@dataclass(slots=True, frozen=True)
class LiveTurns(SessionOp):
    """A read: what live memory indexes next of a session (a LiveInput), at most `limit` of its
    messages after live_through; None when the session is gone."""

    org: str
    session_id: str
    limit: int


@SESSION_OPS.logged("live", "_mark_live")
@dataclass(slots=True, frozen=True)
class MarkLive(SessionOp):
    """Live memory indexed these sessions' messages: (session id, after, through, ended, name),
    the messages after seq `after` (the live_through it read) through seq `through`, under the
    session's `name` as it read it; ended when the entry standing for the session carries a status
    other than active (it need not be written again). A mark whose `after` is not the session's
    live_through any more, or whose name is not the session's (renamed meanwhile: every turn goes in
    again under the new name), is not applied. One record per tick of a shard's indexer (one op per
    organization, in one batch). Answers the ids of the sessions whose memory under the id must be
    taken out: those gone (deleted since they were read), and those whose session is not the
    incarnation the tick read (deleted and made again under the id, or reset by ResetLive) and
    have no turns marked: what went in may be another session's turns. Such a mark is not
    applied, and the log leaves it out, so replay never applies it to the session that came after."""

    org: str
    marks: tuple[tuple[str, int, int, bool, str | None], ...] = coded(LIVE_MARKS)
    # LiveInput.incarnation of each mark's session as the tick read it, in the marks' order; checked
    # when the op first runs, as MarkIndexed's is. None: not checked.
    incarnations: tuple[int, ...] | None = unlogged()


@SESSION_OPS.logged("live_reset", "_reset_live", log_without_result=False)
@dataclass(slots=True, frozen=True)
class ResetLive(SessionOp):
    """Live memory holds none of this session now (a closing job forgot its id after the session it
    indexed was replaced by this one): every turn goes in again, as after a rename. The session
    gets a new incarnation, so a tick that read it before is not marked (MarkLive). Answers the
    session's view, or None (not logged) when no session has the id."""

    org: str
    session_id: str


@SESSION_OPS.logged("summary_fail", "_fail_summary")
@dataclass(slots=True, frozen=True)
class FailSummary(SessionOp):
    """An attempt failed: back to pending (a retry follows) or, when `final`, failed; with `index`,
    the session's turns go into session memory after it (Session.reindex, ended by MarkIndexed)
    unless they are there already, so one record says both."""

    org: str
    session_id: str
    error: str
    final: bool
    # None in logs written before a failed summary's session was indexed through its re-index.
    index: bool | None = None


@SESSION_OPS.logged("purge", "_purge", log_without_result=False)
@dataclass(slots=True, frozen=True)
class PurgeSessions(SessionOp):
    """Retention: delete these ended sessions (and their idempotency records). Chosen by the shard
    from the organization's policy and logged as the list, so replay removes exactly these."""

    keys: tuple[tuple[str, str], ...] = coded(SESSION_KEYS)  # (org, session id); one gone is skipped


@SESSION_OPS.logged("expire", "_expire_due", log_without_result=False)
@dataclass(slots=True, frozen=True)
class ExpireDue(SessionOp):
    """Issued by the shard's timer: every active session whose deadline has passed becomes expired."""


@SESSION_OPS.read("_get_view")
@dataclass(slots=True, frozen=True)
class GetSession(SessionOp):
    org: str
    session_id: str
    after_seq: int = 0
    limit: int | None = None


@SESSION_OPS.read("_list")
@dataclass(slots=True, frozen=True)
class ListSessions(SessionOp):
    """Newest first. `before` is the (created_at, id) of the last session of the previous page."""

    org: str
    limit: int
    status: SessionStatus | None = None
    before: tuple[int, str] | None = None


@SESSION_OPS.read("_check_key")
@dataclass(slots=True, frozen=True)
class CheckKey(SessionOp):
    """A read: the earlier answer under this idempotency key (Replayed), or None if there is none;
    a different request under the key raises. For a route that must know before it does anything
    else (DELETE deletes the session's vector first)."""

    org: str
    session_id: str
    key: str
    fingerprint: str
    op: Any  # the op the key would be sent with


@SESSION_OPS.read("_ping")
@dataclass(slots=True, frozen=True)
class Ping(SessionOp):
    pass


@SESSION_OPS.logged("import", "_import", log_without_result=False)
@dataclass(slots=True, frozen=True)
class ImportSession(SessionOp):
    """Store a session read from an export, whole (engine.sessions.export): all of it or, when the
    organization holds a session of that id already, nothing (None: skipped, and not logged)."""

    org: str
    session_id: str
    session: list[Any]  # the session as a snapshot encodes it (engine.sessions.codec.encode_session)
    # Quota checked when the op first runs, for an active session; not logged, as CreateSession's.
    max_active: int | None = unlogged()  # this organization's active sessions on this shard


@SESSION_OPS.read("_open_export")
@dataclass(slots=True, frozen=True)
class OpenExport(SessionOp):
    """A read that opens an export cursor over the organization's sessions as they are now; answers
    {"watermark": the log record the cut follows, "sessions": how many}. Cursors unused for
    `idle_ms` lapse; past `max_open` open ones, or `max_per_org` of this organization's,
    Unavailable."""

    org: str
    export_id: str
    max_open: int
    idle_ms: int
    max_per_org: int


@SESSION_OPS.read("_export_page")
@dataclass(slots=True, frozen=True)
class ExportPage(SessionOp):
    """The next lines of an open export: {"lines": [...], "done": bool}; the cursor closes when done.
    `max_lines` 0 only keeps the cursor from lapsing (a shard whose turn has not come)."""

    org: str
    export_id: str
    max_lines: int


@SESSION_OPS.read("_close_export")
@dataclass(slots=True, frozen=True)
class CloseExport(SessionOp):
    org: str
    export_id: str


@SESSION_OPS.read("_open_exports")
@dataclass(slots=True, frozen=True)
class OpenExports(SessionOp):
    """How many export cursors the shard holds open: {"exports": n}."""
