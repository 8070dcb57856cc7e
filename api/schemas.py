"""Wire models: the OpenAPI contract at /docs. Requests are strict (no type coercion, no unknown
fields), so a typo or a wrong type is a clear 422 instead of a silently ignored field.

Limits that come from the config (TTL maximum, batch size, byte sizes) are checked in
`api/limits.py`, since a static schema cannot know them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.memory.index import Scalar

Role = Literal["user", "assistant", "system", "tool"]
Status = Literal["active", "closed", "completed", "expired"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _non_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value.strip() if value is not None else None


class CreateSessionIn(_Request):
    name: str = Field(description="A label for the session; not unique.")
    ttl_seconds: int | None = Field(
        None, ge=1, description="Seconds until the session expires (default 3600)."
    )
    context: dict[str, Any] | None = Field(None, description="Initial JSON object context (default {}).")

    _check_name = field_validator("name")(_non_blank)


class MessageIn(_Request):
    role: Role
    content: str
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)
    tool_name: str | None = Field(None, min_length=1, max_length=256)


class AppendMessagesIn(_Request):
    """One message (`role`, `content`, ...) or a batch (`messages: [...]`), applied all-or-nothing."""

    role: Role | None = None
    content: str | None = None
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)
    tool_name: str | None = Field(None, min_length=1, max_length=256)
    messages: list[MessageIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> AppendMessagesIn:
        single = any(v is not None for v in (self.role, self.content, self.tool_call_id, self.tool_name))
        if self.messages is not None and single:
            raise ValueError("send either one message (role, content) or a batch {messages: [...]}, not both")
        if self.messages is None and (self.role is None or self.content is None):
            raise ValueError("a message needs 'role' and 'content' (or send a batch as {messages: [...]})")
        return self

    def as_messages(self) -> list[MessageIn]:
        if self.messages is not None:
            return self.messages
        assert self.role is not None and self.content is not None
        return [
            MessageIn(
                role=self.role, content=self.content, tool_call_id=self.tool_call_id, tool_name=self.tool_name
            )
        ]


class UpdateSessionIn(_Request):
    name: str | None = None
    ttl_seconds: int | None = Field(None, ge=1, description="New TTL; expires_at becomes now + ttl_seconds.")

    _check_name = field_validator("name")(_non_blank)

    @model_validator(mode="after")
    def _something(self) -> UpdateSessionIn:
        if self.name is None and self.ttl_seconds is None:
            raise ValueError("send 'name', 'ttl_seconds' or both")
        return self


class MessageOut(BaseModel):
    seq: int = Field(description="Position in the session, from 1, gap-free.")
    role: Role
    content: str
    created_at: int = Field(description="Epoch milliseconds.")
    tool_call_id: str | None = None
    tool_name: str | None = None


class SummaryProvenanceOut(BaseModel):
    model: str
    messages_covered: int = Field(description="Messages the summary was made from (long sessions are cut).")
    messages_total: int
    created_at: int | None


class SessionOut(BaseModel):
    id: str = Field(examples=["sess_3f9c2a7e0b1d4c5a8e6f7a9b0c1d2e3f"])
    name: str
    status: Status
    ttl_seconds: int
    created_at: int
    updated_at: int
    expires_at: int
    ended_at: int | None = Field(description="When the session left 'active'; for expired, its deadline.")
    message_count: int
    context: dict[str, Any]
    version: int = Field(description="Context version; + 1 on every PUT /context. Use with If-Match.")
    summary_status: Literal["pending", "running", "ready", "failed"] | None = Field(
        description="Set on close: pending -> running -> ready, or failed (see summary_error)."
    )
    summary: str | None
    summary_error: str | None = Field(description="Why the last summary attempt failed, if it did.")
    summary_attempts: int
    summary_provenance: SummaryProvenanceOut | None


class SessionWithMessagesOut(SessionOut):
    messages: list[MessageOut]


class MessageBatchOut(BaseModel):
    messages: list[MessageOut]


class SessionListOut(BaseModel):
    sessions: list[SessionOut]
    count: int
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )


# -- vectors ----------------------------------------------------------------------------------------

Namespace = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="Letters, digits, and _ . : - ; default 'default'.",
    ),
]


class VectorIn(_Request):
    id: str = Field(min_length=1, description="Your id; upserting an existing id replaces it.")
    text: str | None = Field(None, description="Embedded by the server's embedder.")
    values: list[float] | None = Field(None, min_length=1, description="A vector of your own.")
    metadata: dict[str, Any] | None = Field(None, description="Returned with matches; filterable.")

    _check_text = field_validator("text")(_non_blank)

    @model_validator(mode="after")
    def _one_source(self) -> VectorIn:
        if (self.text is None) == (self.values is None):
            raise ValueError("send exactly one of 'text' or 'values'")
        return self


class UpsertIn(_Request):
    namespace: Namespace = "default"
    vectors: list[VectorIn] = Field(min_length=1)


class QueryIn(_Request):
    namespace: Namespace = "default"
    query_text: str | None = None
    vector: list[float] | None = Field(None, min_length=1)
    top_k: int | None = Field(None, ge=1, description="How many matches (default 10).")
    filter: dict[str, Scalar] | None = Field(
        None, description="Metadata equality on top-level keys; every pair must match."
    )

    _check_text = field_validator("query_text")(_non_blank)

    @model_validator(mode="after")
    def _one_query(self) -> QueryIn:
        if (self.query_text is None) == (self.vector is None):
            raise ValueError("send exactly one of 'query_text' or 'vector'")
        return self


class DeleteIn(_Request):
    namespace: Namespace = "default"
    ids: list[str] = Field(min_length=1)


class UpsertOut(BaseModel):
    namespace: str
    upserted: int


class MatchOut(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity, -1 to 1.")
    metadata: dict[str, Any]


class QueryOut(BaseModel):
    namespace: str
    matches: list[MatchOut]
    count: int


class DeleteOut(BaseModel):
    namespace: str
    deleted: int


class ErrorOut(BaseModel):
    error: str
    code: str
    details: dict[str, Any]
    hint: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 412, 413, 422, 503)
}
