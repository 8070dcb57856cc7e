"""What the engine answers, as typed models. Fields the server adds later are kept, not refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant", "system", "tool"]
Status = Literal["active", "closed", "completed", "expired"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Message(_Model):
    seq: int
    role: Role
    content: str
    created_at: int
    tool_call_id: str | None = None
    tool_name: str | None = None


class NewMessage(_Model):
    """A message to append."""

    role: Role
    content: str
    tool_call_id: str | None = None
    tool_name: str | None = None


class SummaryProvenance(_Model):
    model: str
    method: str = "model"
    reason: str | None = None
    # Set when the model's text was judged and not kept (the extract stays), and while the model's
    # pass over the extract is still queued ("pending").
    model_rejected: str | None = None
    upgrade: str | None = None
    messages_covered: int
    messages_total: int
    created_at: int | None = None


class ForkedFrom(_Model):
    session_id: str
    seq: int


class Session(_Model):
    id: str
    name: str
    status: Status
    ttl_seconds: int
    created_at: int
    updated_at: int
    expires_at: int
    ended_at: int | None = None
    message_count: int
    context: dict[str, Any]
    version: int
    summary_status: Literal["pending", "running", "ready", "failed"] | None = None
    summary: str | None = None
    summary_error: str | None = None
    summary_attempts: int = 0
    summary_provenance: SummaryProvenance | None = None
    index_status: Literal["pending", "ready", "failed"] | None = None
    indexed_at: int | None = None
    forked_from: ForkedFrom | None = None  # the session and seq it was forked at


class SessionWithMessages(Session):
    messages: list[Message] = Field(default_factory=list)


class SessionPage(_Model):
    sessions: list[Session]
    count: int
    next_cursor: str | None = None


class Highlight(_Model):
    seq: int
    role: str | None = None
    content: str | None = None


class Match(_Model):
    """One match of a vector query. In `session-memory` the id is a prior session's, the metadata
    holds its summary and the messages that matched (`highlights`), and `relevance` (0 to 1) says
    how relevant it is whatever else matched: `score` only ranks the matches of one answer."""

    id: str
    score: float
    relevance: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def summary(self) -> str | None:
        value = self.metadata.get("summary")
        return value if isinstance(value, str) else None

    @property
    def highlights(self) -> list[Highlight]:
        return [Highlight.model_validate(h) for h in self.metadata.get("highlights") or []]


class QueryResult(_Model):
    namespace: str
    matches: list[Match]
    count: int


class UpsertResult(_Model):
    namespace: str
    upserted: int


class ImportedCounts(_Model):
    sessions: int
    messages: int
    vectors: int


class ImportLineError(_Model):
    line: int
    error: str
    session_id: str | None = None


class ImportResult(_Model):
    """What POST /import answers: what it stored, what it skipped (session and vector ids held
    already), and why the sessions and vectors it refused were refused, by line: the first 1,000 in
    `errors`, and how many more in `errors_omitted`."""

    imported: ImportedCounts
    skipped: int
    errors: list[ImportLineError]
    errors_omitted: int = 0


class DeleteResult(_Model):
    namespace: str
    deleted: int


class Event(_Model):
    """One event of a change feed. `id` is the position to resume from (Last-Event-ID)."""

    id: str
    type: str
    session_id: str | None = None
    at: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def message(self) -> Message | None:
        raw = self.data.get("message")
        return Message.model_validate(raw) if raw is not None else None
