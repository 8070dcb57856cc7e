"""Session routes: validate, build the op, send it to the session's shard, shape the answer."""

from __future__ import annotations

import heapq
from typing import Annotated, Any

from fastapi import Body, Header, Path, Query
from starlette.responses import Response

from engine.errors import SessionNotFound, ValidationFailed
from engine.memory.store import SESSION_MEMORY, DeleteVectors
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    GetSession,
    ListSessions,
    ReplaceContext,
    RequestSummary,
    UpdateSession,
)
from engine.sessions.session import SessionStatus, is_session_id, new_session_id

from ..auth import Org
from ..cursor import decode_cursor, encode_cursor
from ..deps import Limits, Memory, Router
from ..http import json_response, json_router
from ..limits import check_context, check_messages, check_name, check_ttl
from ..schemas import (
    AppendMessagesIn,
    CreateSessionIn,
    MessageBatchOut,
    MessageOut,
    SessionListOut,
    SessionOut,
    SessionWithMessagesOut,
    Status,
    UpdateSessionIn,
)

router = json_router("/sessions", "sessions")

SessionId = Annotated[str, Path(description="A session id, 'sess_' and 32 hex digits.")]


def _session_id(session_id: str) -> str:
    # A malformed id can name no session; answer without a trip to a shard.
    if not is_session_id(session_id):
        raise SessionNotFound(session_id[:64])
    return session_id


def _etag(view: dict[str, Any]) -> dict[str, str]:
    return {"ETag": f'"{view["version"]}"'}


def _parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise ValidationFailed(
            "If-Match must be a context version number",
            {"field": "If-Match"},
            "Send the session's 'version' or ETag.",
        )
    return int(text)


@router.post("", status_code=201, response_model=SessionOut, summary="Create a session")
async def create_session(body: CreateSessionIn, org: Org, shards: Router, limits: Limits) -> Response:
    session_id = new_session_id()
    op = CreateSession(
        org=org,
        session_id=session_id,
        name=check_name(body.name, limits),
        ttl_s=check_ttl(body.ttl_seconds or limits.default_ttl_s, limits),
        context=check_context(body.context or {}, limits),
    )
    view = await shards.submit(org, session_id, op)
    return json_response(view, 201, {"Location": f"/sessions/{session_id}", **_etag(view)})


@router.post(
    "/{session_id}/messages",
    status_code=201,
    response_model=MessageOut | MessageBatchOut,
    summary="Append one message, or a batch all-or-nothing",
)
async def append_messages(
    session_id: SessionId, body: AppendMessagesIn, org: Org, shards: Router, limits: Limits
) -> Response:
    sid = _session_id(session_id)
    messages = check_messages(body.as_messages(), limits)
    stored = await shards.submit(org, sid, AppendMessages(org, sid, messages))
    return json_response({"messages": stored} if body.messages is not None else stored[0], 201)


@router.get("/{session_id}", response_model=SessionWithMessagesOut, summary="Get a session and its messages")
async def get_session(
    session_id: SessionId,
    org: Org,
    shards: Router,
    after_seq: Annotated[int, Query(ge=0, description="Only messages with seq greater than this.")] = 0,
    limit: Annotated[
        int | None, Query(ge=1, description="At most this many messages (default: all).")
    ] = None,
) -> Response:
    sid = _session_id(session_id)
    view = await shards.submit(org, sid, GetSession(org, sid, after_seq, limit))
    return json_response(view, headers=_etag(view))


@router.put("/{session_id}/context", response_model=SessionOut, summary="Replace the whole context")
async def replace_context(
    session_id: SessionId,
    context: Annotated[dict[str, Any], Body(description="The new context: a JSON object.")],
    org: Org,
    shards: Router,
    limits: Limits,
    if_match: Annotated[
        str | None, Header(description="Apply only at this context version, else 412.")
    ] = None,
) -> Response:
    sid = _session_id(session_id)
    op = ReplaceContext(org, sid, check_context(context, limits), _parse_if_match(if_match))
    view = await shards.submit(org, sid, op)
    return json_response(view, headers=_etag(view))


@router.patch("/{session_id}", response_model=SessionOut, summary="Rename or extend the TTL")
async def update_session(
    session_id: SessionId, body: UpdateSessionIn, org: Org, shards: Router, limits: Limits
) -> Response:
    sid = _session_id(session_id)
    op = UpdateSession(
        org,
        sid,
        name=check_name(body.name, limits) if body.name is not None else None,
        ttl_s=check_ttl(body.ttl_seconds, limits) if body.ttl_seconds is not None else None,
    )
    return json_response(await shards.submit(org, sid, op))


@router.get("", response_model=SessionListOut, summary="List this organization's sessions, newest first")
async def list_sessions(
    org: Org,
    shards: Router,
    limits: Limits,
    status: Annotated[Status | None, Query(description="Only sessions in this state.")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default 50).")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    page_size = limit or limits.default_list_limit
    if page_size > limits.max_list_limit:
        raise ValidationFailed(
            f"limit: at most {limits.max_list_limit}", {"field": "limit", "limit": limits.max_list_limit}
        )
    op = ListSessions(
        org,
        page_size,
        SessionStatus(status) if status else None,
        decode_cursor(cursor) if cursor else None,
    )
    pages = await shards.broadcast(op)
    # Each shard's page is newest first; merge them and keep the newest page_size.
    merged = list(heapq.merge(*(p["items"] for p in pages), key=lambda item: item[0], reverse=True))
    page = merged[:page_size]
    more = len(merged) > page_size or any(p["has_more"] for p in pages)
    next_cursor = encode_cursor(page[-1][0]) if more and page else None
    sessions = [view for _, view in page]
    return json_response({"sessions": sessions, "count": len(sessions), "next_cursor": next_cursor})


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a session and its summary vector",
)
async def delete_session(session_id: SessionId, org: Org, shards: Router, memory: Memory) -> Response:
    sid = _session_id(session_id)
    # The vector first: if the session delete then fails, a retry finds the session and finishes.
    # A summary still being made when the session goes deletes its own vector (see SummaryRunner).
    await memory.submit(org, DeleteVectors(org, SESSION_MEMORY, (sid,)))
    await shards.submit(org, sid, DeleteSession(org, sid))
    return Response(status_code=204)


@router.post(
    "/{session_id}/summarize",
    status_code=202,
    response_model=SessionOut,
    summary="Summarize an ended session again; the summary is made in the background",
)
async def summarize_session(session_id: SessionId, org: Org, shards: Router) -> Response:
    sid = _session_id(session_id)
    return json_response(await shards.submit(org, sid, RequestSummary(org, sid)), 202)


@router.post("/{session_id}/close", response_model=SessionOut, summary="Close; a summary follows")
async def close_session(session_id: SessionId, org: Org, shards: Router) -> Response:
    sid = _session_id(session_id)
    return json_response(await shards.submit(org, sid, EndSession(org, sid, SessionStatus.CLOSED)))


@router.post("/{session_id}/complete", response_model=SessionOut, summary="Complete; no summary")
async def complete_session(session_id: SessionId, org: Org, shards: Router) -> Response:
    sid = _session_id(session_id)
    return json_response(await shards.submit(org, sid, EndSession(org, sid, SessionStatus.COMPLETED)))
