"""Operations a shard applies. Every state change is one of these, applied by `ShardStore.apply`,
so the write-ahead log can record exactly the ops (with the time they ran at) and replay them.

They are plain frozen dataclasses: cheap to pickle across Ray and safe to share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.sessions.session import NewMessage, SessionStatus


@dataclass(slots=True, frozen=True)
class CreateSession:
    org: str
    session_id: str
    name: str
    ttl_s: int
    context: dict[str, Any]
    # Quota checked when the op first runs; not logged, so replay never refuses what was accepted.
    max_active: int | None = None  # this organization's active sessions on this shard


@dataclass(slots=True, frozen=True)
class AppendMessages:
    org: str
    session_id: str
    messages: tuple[NewMessage, ...]
    max_messages: int | None = None  # quota on the session's messages; not logged, like max_active


@dataclass(slots=True, frozen=True)
class ReplaceContext:
    org: str
    session_id: str
    context: dict[str, Any]
    if_match: int | None = None


@dataclass(slots=True, frozen=True)
class UpdateSession:
    org: str
    session_id: str
    name: str | None = None
    ttl_s: int | None = None


@dataclass(slots=True, frozen=True)
class EndSession:
    """close (summary follows) or complete (no summary)."""

    org: str
    session_id: str
    status: SessionStatus


@dataclass(slots=True, frozen=True)
class DeleteSession:
    org: str
    session_id: str


@dataclass(slots=True, frozen=True)
class RequestSummary:
    """Queue a summary of an ended session (again). Closing a session queues one by itself."""

    org: str
    session_id: str


@dataclass(slots=True, frozen=True)
class StartSummary:
    """The shard's summary runner takes a queued job: pending -> running. Returns the job's input,
    or None when there is nothing to do (the session is gone, or its job is not pending)."""

    org: str
    session_id: str


@dataclass(slots=True, frozen=True)
class FinishSummary:
    org: str
    session_id: str
    text: str
    model: str
    messages_covered: int
    messages_total: int


@dataclass(slots=True, frozen=True)
class FailSummary:
    """An attempt failed: back to pending (a retry follows) or, when `final`, failed."""

    org: str
    session_id: str
    error: str
    final: bool


@dataclass(slots=True, frozen=True)
class PurgeSessions:
    """Retention: delete these ended sessions (and their idempotency records). Chosen by the shard
    from the organization's policy and logged as the list, so replay removes exactly these."""

    keys: tuple[tuple[str, str], ...]  # (org, session id); one already gone is skipped


@dataclass(slots=True, frozen=True)
class ExpireDue:
    """Issued by the shard's timer: every active session whose deadline has passed becomes expired."""


@dataclass(slots=True, frozen=True)
class GetSession:
    org: str
    session_id: str
    after_seq: int = 0
    limit: int | None = None


@dataclass(slots=True, frozen=True)
class ListSessions:
    """Newest first. `before` is the (created_at, id) of the last session of the previous page."""

    org: str
    limit: int
    status: SessionStatus | None = None
    before: tuple[int, str] | None = None


@dataclass(slots=True, frozen=True)
class CheckKey:
    """A read: the earlier answer under this idempotency key (Replayed), or None if there is none;
    a different request under the key raises. For a route that must know before it does anything
    else (DELETE deletes the session's vector first)."""

    org: str
    session_id: str
    key: str
    fingerprint: str
    op: Any  # the op the key would be sent with


@dataclass(slots=True, frozen=True)
class Ping:
    pass


MUTATING_OPS = (
    CreateSession,
    AppendMessages,
    ReplaceContext,
    UpdateSession,
    EndSession,
    DeleteSession,
    PurgeSessions,
    ExpireDue,
    RequestSummary,
    StartSummary,
    FinishSummary,
    FailSummary,
)
Op = (
    CreateSession
    | AppendMessages
    | ReplaceContext
    | UpdateSession
    | EndSession
    | DeleteSession
    | PurgeSessions
    | ExpireDue
    | RequestSummary
    | StartSummary
    | FinishSummary
    | FailSummary
    | GetSession
    | CheckKey
    | ListSessions
    | Ping
)
