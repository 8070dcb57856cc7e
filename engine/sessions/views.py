"""The session's JSON shape, defined once. A shard answers with these dicts (`Session.view()`,
`Message.view()`, checked against them by mypy), the gateway sends them as they are, and the
OpenAPI document is generated from the same classes (api/schemas.py), so the two cannot drift;
tests/integration/test_wire_shape.py checks real answers of every route against the document.

TypedDicts, not models: a view is a plain dict on the hot path, built and sent without a copy.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

Role = Literal["user", "assistant", "system", "tool"]
Status = Literal["active", "closed", "completed", "expired"]
SummaryState = Literal["pending", "running", "ready", "failed"]
IndexState = Literal["pending", "ready", "failed"]
Millis = Annotated[int, Field(description="Epoch milliseconds.")]

# Documented as `additionalProperties: false`: a view holds no key the document leaves out.
_CLOSED = ConfigDict(extra="forbid")


@with_config(_CLOSED)
class MessageView(TypedDict):
    seq: Annotated[int, Field(description="Position in the session, from 1, gap-free.")]
    role: Role
    content: str
    created_at: Millis
    tool_call_id: NotRequired[str]
    tool_name: NotRequired[str]


@with_config(_CLOSED)
class SummaryProvenance(TypedDict):
    model: str
    method: Annotated[
        Literal["model", "extractive"],
        Field(
            description="extractive: salient sentences of the session, made at close (reason: first "
            "pass); model: the summarizer's text, which replaced the extract once it was judged usable."
        ),
    ]
    reason: NotRequired[
        Annotated[
            str,
            Field(
                description="Why the summary is extractive: first pass (made at close; the model's "
                "pass may replace it), or why the model's text was set aside."
            ),
        ]
    ]
    model_rejected: NotRequired[
        Annotated[
            str,
            Field(
                description="The model's pass ran and its text was not kept: empty, boilerplate, "
                "dialogue, repetition, echo or ungrounded. The extract stays."
            ),
        ]
    ]
    upgrade: NotRequired[
        Annotated[
            Literal["pending"],
            Field(description="The model's pass over this extract is queued."),
        ]
    ]
    messages_covered: Annotated[
        int, Field(description="Messages the summary was made from (long sessions are cut).")
    ]
    messages_total: int
    created_at: Millis | None


@with_config(_CLOSED)
class ForkedFrom(TypedDict):
    session_id: Annotated[str, Field(description="The session this one was forked from.")]
    seq: Annotated[int, Field(description="The fork holds the source's messages 1..seq (0: none).")]


@with_config(_CLOSED)
class SessionView(TypedDict):
    id: Annotated[str, Field(examples=["sess_3f9c2a7e0b1d4c5a8e6f7a9b0c1d2e3f"])]
    name: str
    status: Status
    ttl_seconds: int
    created_at: Millis
    updated_at: Millis
    expires_at: Millis
    ended_at: Annotated[
        int | None, Field(description="When the session left 'active'; for expired, its deadline.")
    ]
    message_count: int
    context: dict[str, Any]
    version: Annotated[
        int, Field(description="Context version; + 1 on every PUT /context. Use with If-Match.")
    ]
    summary_status: Annotated[
        SummaryState | None,
        Field(description="Set on close: pending -> running -> ready, or failed (see summary_error)."),
    ]
    summary: str | None
    summary_error: Annotated[str | None, Field(description="Why the last summary attempt failed, if it did.")]
    summary_attempts: int
    summary_provenance: SummaryProvenance | None
    index_status: Annotated[
        IndexState | None,
        Field(
            description="Its messages and its ready summary in session memory: pending, then ready "
            "(searchable; a summary is ready before this is), or failed; null for a session that is "
            "not indexed (active, completed, expired)."
        ),
    ]
    indexed_at: Annotated[
        int | None, Field(description="When its messages became searchable in session memory.")
    ]
    forked_from: Annotated[
        ForkedFrom | None,
        Field(description="The session and message it was forked at (POST /sessions/{id}/fork), or null."),
    ]


@with_config(_CLOSED)
class SessionWithMessages(SessionView):
    messages: list[MessageView]
