"""On-disk encoding of logged ops and of sessions in snapshots, as JSON via orjson.

Ops are JSON objects by field name, derived from their declarations (engine.sessions.ops,
engine.oplog); log records written before that hold positional arrays, which are still read.
Sessions in snapshots are explicit arrays. Not pickle, so files stay readable by a newer engine
and by a human with `jq`. A change to an existing shape bumps FORMAT_VERSION
(engine.storage.layout); a new op tag is additive: this engine still reads older files, an older
one cannot read the new tag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.idempotency import Idempotent
from engine.sessions.ops import (
    SESSION_OPS,
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    FailSummary,
    FinishSummary,
    PurgeSessions,
    ReplaceContext,
    RequestSummary,
    SessionOp,
    StartSummary,
    UpdateSession,
)
from engine.sessions.session import Message, NewMessage, Session, SessionStatus, SummaryStatus, shared_role


def encode_op(op: SessionOp | Idempotent) -> bytes:
    """The op's exact log bytes; raises UnencodableOp (a VALIDATION_ERROR) if the log cannot hold it."""
    return SESSION_OPS.encode_bytes(op)


def decode_op(encoded: dict[str, Any] | list[Any]) -> SessionOp | Idempotent:
    if isinstance(encoded, dict):
        op: SessionOp | Idempotent = SESSION_OPS.decode(encoded)
        return op
    tag, *args = encoded
    return _POSITIONAL[tag](*args)


# Log records written before ops were encoded by field name: positional arrays.
_POSITIONAL: dict[str, Callable[..., SessionOp | Idempotent]] = {
    "once": lambda key, fingerprint, inner: Idempotent(key, fingerprint, decode_op(inner)),
    "purge": lambda keys: PurgeSessions(tuple((org, sid) for org, sid in keys)),
    "create": lambda org, sid, name, ttl_s, context: CreateSession(org, sid, name, ttl_s, context),
    "append": lambda org, sid, messages: AppendMessages(org, sid, tuple(NewMessage(*m) for m in messages)),
    "context": lambda org, sid, context, if_match: ReplaceContext(org, sid, context, if_match),
    "update": lambda org, sid, name, ttl_s: UpdateSession(org, sid, name, ttl_s),
    "end": lambda org, sid, status: EndSession(org, sid, SessionStatus(status)),
    "delete": lambda org, sid: DeleteSession(org, sid),
    "expire": lambda: ExpireDue(),
    "summary_request": lambda org, sid: RequestSummary(org, sid),
    "summary_start": lambda org, sid: StartSummary(org, sid),
    "summary_done": lambda org, sid, text, model, covered, total: FinishSummary(
        org, sid, text, model, covered, total
    ),
    "summary_fail": lambda org, sid, error, final: FailSummary(org, sid, error, final),
}


def encode_session(s: Session) -> list[Any]:
    return [
        s.org, s.id, s.name, s.ttl_s, s.created_at, s.updated_at, s.expires_at, s.status.value, s.version,
        s.ended_at, s.summary_status.value if s.summary_status else None, s.summary, s.context,
        [[m.role, m.content, m.created_at, m.tool_call_id, m.tool_name] for m in s.messages],
        s.summary_error, s.summary_model, s.summary_covered, s.summary_total, s.summarized_at,
        s.summary_attempts, s.summary_method, s.summary_reason, s.indexed_at, s.indexed_entries,
        list(s.forked_from) if s.forked_from is not None else None, s.reindex,
        s.summary_upgrade, s.summary_rejected, s.live_through, s.live_ended,
    ]  # fmt: skip


def decode_session(e: list[Any]) -> Session:
    org, sid, name, ttl_s, created_at, updated_at, expires_at, status, version = e[:9]
    ended_at, summary_status, summary, context, messages = e[9:14]
    # Fields added after the first release follow; older snapshots simply lack them.
    error, model, covered, total, summarized_at, attempts = e[14:20] or [None, None, 0, 0, None, 0]
    method, reason, indexed_at, indexed_entries = e[20:24] or [None, None, None, 0]
    forked_from = e[24] if len(e) > 24 else None
    reindex = e[25] if len(e) > 25 else False
    upgrade, rejected = e[26:28] or [False, None]
    if len(e) > 28:
        live_through, live_ended = e[28:30]
    elif status != SessionStatus.ACTIVE.value:
        # Ended before live memory existed: marked done, so an upgrade does not index every old
        # session (closed ones were indexed at close, as before; completed and expired ones are not).
        live_through, live_ended = len(messages), True
    else:
        live_through, live_ended = 0, False
    return Session(
        org=org,
        id=sid,
        name=name,
        ttl_s=ttl_s,
        created_at=created_at,
        updated_at=updated_at,
        expires_at=expires_at,
        context=context,
        status=SessionStatus(status),
        version=version,
        ended_at=ended_at,
        summary_status=SummaryStatus(summary_status) if summary_status else None,
        summary=summary,
        summary_error=error,
        summary_model=model,
        summary_covered=covered,
        summary_total=total,
        summarized_at=summarized_at,
        summary_attempts=attempts,
        summary_method=method,
        summary_reason=reason,
        indexed_at=indexed_at,
        indexed_entries=indexed_entries,
        messages=[Message(shared_role(m[0]), *m[1:]) for m in messages],
        forked_from=(forked_from[0], forked_from[1]) if forked_from is not None else None,
        reindex=reindex,
        summary_upgrade=upgrade,
        summary_rejected=rejected,
        live_through=live_through,
        live_ended=live_ended,
    )
