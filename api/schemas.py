"""Wire models: the OpenAPI contract at /docs. A session and a message are shown as
engine.sessions.views defines them, the shape the shards answer with; the rest is here. Requests
are strict (no type coercion, no unknown fields), so a typo or a wrong type is a clear 422
instead of a silently ignored field.

Limits that come from the config (TTL maximum, batch size, byte sizes) are checked in
`api/limits.py`, since a static schema cannot know them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.limits import NAMESPACE_MAX_CHARS, NAMESPACE_PATTERN, reserved_namespace
from engine.memory.index import Scalar
from engine.memory.sessions import SESSION_MEMORY
from engine.sessions.views import MessageView, Role, SessionView


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    # Documented as `additionalProperties: false`: the gateway sends no key the document leaves out
    # (tests/integration/test_schema_fuzz.py holds it to that).
    model_config = ConfigDict(extra="forbid")


def _non_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value.strip() if value is not None else None


def _no_nul(value: str | None) -> str | None:
    # A NUL ends a string in C and in many logs and terminals: names and ids never carry one.
    if value is not None and "\0" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


# Roles whose messages may carry a tool call's id and the tool's name: the assistant's call and the
# tool's answer. A user or system message naming a tool is a client bug, refused.
TOOL_ROLES = frozenset({"assistant", "tool"})


def _check_tool_fields(role: str | None, tool_call_id: str | None, tool_name: str | None) -> None:
    if role is not None and role not in TOOL_ROLES and (tool_call_id is not None or tool_name is not None):
        raise ValueError(
            f"a {role} message has no tool_call_id or tool_name; only {sorted(TOOL_ROLES)} messages do"
        )


ToolField = Annotated[str | None, Field(None, min_length=1, max_length=256), AfterValidator(_no_nul)]


class CreateSessionIn(_Request):
    name: str = Field(description="A label for the session; not unique.")
    ttl_seconds: int | None = Field(
        None, ge=1, description="Seconds until the session expires (default 3600)."
    )
    context: dict[str, Any] | None = Field(None, description="Initial JSON object context (default {}).")

    _check_name = field_validator("name")(_non_blank)
    _name_no_nul = field_validator("name")(_no_nul)


class ForkSessionIn(_Request):
    at_seq: int = Field(
        ge=0,
        description="The fork holds the session's messages 1..at_seq (0: none of them); at most its "
        "message_count.",
    )
    name: str | None = Field(None, description="Its name (default: the session's).")
    ttl_seconds: int | None = Field(
        None, ge=1, description="Seconds until it expires (default: the session's)."
    )
    context: dict[str, Any] | None = Field(
        None, description="Its context (default: the session's, as it is now)."
    )

    _check_name = field_validator("name")(_non_blank)
    _name_no_nul = field_validator("name")(_no_nul)


class MessageIn(_Request):
    role: Role
    content: str
    tool_call_id: ToolField = Field(None, description="Only on assistant and tool messages.")
    tool_name: ToolField = Field(None, description="Only on assistant and tool messages.")

    @model_validator(mode="after")
    def _tool_fields(self) -> MessageIn:
        _check_tool_fields(self.role, self.tool_call_id, self.tool_name)
        return self


class AppendMessagesIn(_Request):
    """One message (`role`, `content`, ...) or a batch (`messages: [...]`), applied all-or-nothing."""

    role: Role | None = None
    content: str | None = None
    tool_call_id: ToolField = Field(None, description="Only on assistant and tool messages.")
    tool_name: ToolField = Field(None, description="Only on assistant and tool messages.")
    messages: list[MessageIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> AppendMessagesIn:
        single = any(v is not None for v in (self.role, self.content, self.tool_call_id, self.tool_name))
        if self.messages is not None and single:
            raise ValueError("send either one message (role, content) or a batch {messages: [...]}, not both")
        if self.messages is None and (self.role is None or self.content is None):
            raise ValueError("a message needs 'role' and 'content' (or send a batch as {messages: [...]})")
        _check_tool_fields(self.role, self.tool_call_id, self.tool_name)
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
    _name_no_nul = field_validator("name")(_no_nul)

    @model_validator(mode="after")
    def _something(self) -> UpdateSessionIn:
        if self.name is None and self.ttl_seconds is None:
            raise ValueError("send 'name', 'ttl_seconds' or both")
        return self


class MessageBatchOut(_Response):
    messages: list[MessageView]


class SessionListOut(_Response):
    sessions: list[SessionView]
    count: int
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )


# -- vectors ----------------------------------------------------------------------------------------


def _not_reserved(namespace: str) -> str:
    if reserved_namespace(namespace):
        raise ValueError(f"{namespace!r} is reserved: it differs from {SESSION_MEMORY!r} only by case or _")
    return namespace


Namespace = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAMESPACE_MAX_CHARS,
        pattern=NAMESPACE_PATTERN,
        description="Letters, digits, and _ . : - ; default 'default'. Names that differ from "
        "'session-memory' only by case or _ are reserved.",
    ),
    AfterValidator(_not_reserved),
]


class VectorIn(_Request):
    id: Annotated[str, AfterValidator(_no_nul)] = Field(
        min_length=1, description="Your id; upserting an existing id replaces it."
    )
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


Condition = dict[str, Scalar | list[Scalar]]  # {"$gte": 5}, {"$in": ["a", "b"]}


class QueryIn(_Request):
    namespace: Namespace = "default"
    query_text: str | None = None
    vector: list[float] | None = Field(None, min_length=1)
    top_k: int | None = Field(None, ge=1, description="How many matches (default 10).")
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None,
        description="dense: by meaning (cosine); lexical: by words (BM25 over the texts vectors were "
        "upserted with); hybrid: both, their scores scaled and summed. Default: hybrid in "
        "session-memory, dense elsewhere.",
    )
    filter: dict[str, Scalar | Condition] | None = Field(
        None,
        description="On top-level metadata keys, every one must hold: a value means equality; an "
        "object holds operators $eq, $ne, $gt, $gte, $lt, $lte, $in. In session-memory the keys are "
        "session_id, name, created_at, closed_at, message_count and status (active, closed, "
        "completed, expired; $eq, $ne or $in; default: every status).",
    )
    min_relevance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="session-memory only: leave out the matches whose relevance is below this "
        "(0.3 is the recommended threshold); the others keep their order. An answer may then have "
        "fewer than top_k matches, or none: nothing in memory is that relevant.",
    )
    as_of: int | None = Field(
        None,
        description="session-memory only: epoch milliseconds, at most a minute past now; answer as "
        "memory stood then: only messages said by then, whole sessions closed by then, summaries "
        "made by then. A match's metadata (name, closed_at, message_count) is the session's now.",
    )

    _check_text = field_validator("query_text")(_non_blank)

    @field_validator("as_of", mode="before")
    @classmethod
    def _whole_milliseconds(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"epoch milliseconds as an integer, such as 1767225600000; got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_query(self) -> QueryIn:
        if (self.query_text is None) == (self.vector is None):
            raise ValueError("send exactly one of 'query_text' or 'vector'")
        if self.mode in ("lexical", "hybrid") and self.query_text is None:
            raise ValueError(f"mode {self.mode!r} searches words: send 'query_text'")
        if self.min_relevance is not None and self.namespace != SESSION_MEMORY:
            raise ValueError(
                f"min_relevance applies to {SESSION_MEMORY!r} only; in your own namespaces a dense "
                "score is already the cosine similarity"
            )
        if self.as_of is not None and self.namespace != SESSION_MEMORY:
            raise ValueError(f"as_of applies to {SESSION_MEMORY!r} only: your own namespaces keep no history")
        return self


class SearchMemoryIn(QueryIn):
    """A query of session memory: QueryIn with its namespace fixed (the MCP tool search_memory)."""

    namespace: Literal["session-memory"] = "session-memory"


class DeleteIn(_Request):
    namespace: Namespace = "default"
    ids: list[Annotated[str, AfterValidator(_no_nul)]] = Field(min_length=1)


class UpsertOut(_Response):
    namespace: str
    upserted: int


class ImportedCounts(_Response):
    sessions: int
    messages: int
    vectors: int


class ImportLineError(_Response):
    line: int = Field(description="The line of the import the error is about (a session's, or a vector's).")
    error: str
    session_id: str | None = None


class ImportOut(_Response):
    imported: ImportedCounts
    skipped: Annotated[int, Field(description="Sessions and vectors whose id the organization already held.")]
    errors: Annotated[
        list[ImportLineError], Field(description="The first 1,000 refused sessions and vectors, by line.")
    ]
    errors_omitted: Annotated[int, Field(description="Refused sessions and vectors past those in errors.")]


class MatchOut(_Response):
    id: str
    score: float = Field(
        description="dense: cosine similarity, -1 to 1; lexical: BM25; hybrid: the fused score, 0 to 1 "
        "(1: best by every signal); session-memory: the fused score, 0 or more with no upper bound "
        "(its lexical signals are scaled by their spread). It ranks the matches of one answer "
        "against each other: the best match scores high even when nothing is relevant."
    )
    relevance: float | None = Field(
        None,
        description="session-memory: how relevant the session is, 0 to 1, from its own evidence "
        "alone (the cosine similarity of the query to the session's closest indexed message), so "
        "it compares across queries; 0.3 is the recommended threshold. null in other namespaces.",
    )
    metadata: dict[str, Any]


class QueryOut(_Response):
    namespace: str
    matches: list[MatchOut]
    count: int


class DeleteOut(_Response):
    namespace: str
    deleted: int


ErrorCode = Literal[
    "AUTH_REQUIRED",
    "AUTH_INVALID",
    "FORBIDDEN",
    "NOT_FOUND",
    "GONE",
    "CONFLICT",
    "PRECONDITION_FAILED",
    "PAYLOAD_TOO_LARGE",
    "VALIDATION_ERROR",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
]


class ErrorOut(_Response):
    error: str = Field(description="What went wrong.")
    code: ErrorCode = Field(description="Stable, for programs; the HTTP status follows from it.")
    details: dict[str, Any] = Field(
        description="The field and limit involved, when there is one; a VALIDATION_ERROR's always "
        "has `field` and `errors` (each {field, message})."
    )
    hint: str = Field(description="What to do about it.")


_HEADERS = {
    "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
}


def _error(description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {"model": ErrorOut, "description": description}
    if headers:
        response["headers"] = {name: {**_HEADERS[name], "required": True} for name in headers}
    return response


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not JSON (details.field: 'body', or where it holds NaN or Infinity)."),
    401: _error("No API key, or an unknown one.", "WWW-Authenticate"),
    403: _error("Not allowed with any key, such as writing the engine's own namespace."),
    404: _error("No such session in this organization (or a malformed id)."),
    409: _error("The session is not active (details.status), or a quota or key conflicts."),
    412: _error("If-Match is not the current context version (details.current_version)."),
    413: _error("A body, context, message or vector over its configured limit."),
    415: _error("A compressed body (a Content-Encoding other than identity)."),
    422: _error(
        "A field is missing, unknown, of the wrong type or out of range, or a value the engine cannot "
        "store: nested too deep, an integer past 64 bits, a number past a double's range. "
        "details.field names the first problem's field, details.errors each {field, message}."
    ),
    429: _error("Over the organization's rate limit.", "Retry-After"),
    503: _error(
        "A shard is down, did not answer in time, or cannot write its disk (details.read_only).",
        "Retry-After",
    ),
}
"""Every error a JSON route can answer, declared once on the router (api/http.py: json_router)."""
