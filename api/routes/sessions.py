"""Session routes: validate, build the op, send it to the session's shard, shape the answer."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Body, Header, Path, Query
from starlette.responses import Response

from engine.errors import QuotaExceeded, SessionNotFound, ValidationFailed
from engine.idempotency import Idempotent
from engine.memory.ops import ForgetSessions
from engine.routing import shard_share
from engine.sessions.answers import EncodedJSON, encoded, json_array, json_object, only_element, page_items
from engine.sessions.ops import (
    AppendMessages,
    CheckKey,
    CreateSession,
    DeleteSession,
    EndSession,
    ForkSession,
    GetSession,
    ListSessions,
    ReplaceContext,
    RequestSummary,
    UpdateSession,
)
from engine.sessions.session import (
    SessionStatus,
    fork_session_id,
    is_session_id,
    new_session_id,
    session_id_for_key,
)
from engine.sessions.views import MessageView, SessionView, SessionWithMessages, Status

from ..cursor import decode_cursor, encode_cursor
from ..deps import CurrentCaller
from ..http import json_response, json_router
from ..idempotency import REPLAYED_HEADERS, answered
from ..limits import check_context, check_messages, check_name, check_ttl
from ..schemas import (
    AppendMessagesIn,
    CreateSessionIn,
    ForkSessionIn,
    MessageBatchOut,
    SessionListOut,
    UpdateSessionIn,
)

router = json_router("/sessions", "sessions")

SessionId = Annotated[str, Path(description="A session id, 'sess_' and 32 hex digits.")]


def _session_id(session_id: str) -> str:
    # A malformed id can name no session; answer without a trip to a shard.
    if not is_session_id(session_id):
        raise SessionNotFound(session_id[:64])
    return session_id


def _etag(view: Sequence[Any]) -> dict[str, str]:
    """A session's view comes as its shard encoded it (engine.sessions.answers): (version, body)."""
    return {"ETag": f'"{view[0]}"'}


def _parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # "²" is a digit to isdigit
        raise ValidationFailed(
            "If-Match must be a context version number",
            {"field": "If-Match"},
            "Send the session's 'version' or ETag.",
        )
    return int(text)


@router.post("", status_code=201, response_model=SessionView, summary="Create a session")
async def create_session(body: CreateSessionIn, caller: CurrentCaller) -> Response:
    key = caller.idempotency_key()
    session_id = new_session_id() if key is None else session_id_for_key(caller.org, key)
    op = CreateSession(
        org=caller.org,
        session_id=session_id,
        name=check_name(body.name, caller.limits),
        ttl_s=check_ttl(body.ttl_seconds or caller.limits.default_ttl_s, caller.limits),
        context=check_context(body.context or {}, caller.limits),
        max_active=shard_share(caller.limits.max_active_sessions, caller.shards.shards),
    )
    for attempt in itertools.count(1):
        try:
            view, headers = await caller.write(op.session_id, op)
            break
        except QuotaExceeded:
            # The id's shard holds its share; another id may land on a shard that does not. A
            # keyed create's id is its key's, so it has one shard only.
            if key is not None or attempt >= min(caller.shards.shards, _QUOTA_TRIES):
                raise
            op = dataclasses.replace(op, session_id=new_session_id())
    location = f"/sessions/{op.session_id}"
    return json_response(view[1], 201, {"Location": location, **_etag(view), **headers})


_QUOTA_TRIES = 4  # shards a create tries before max_active_sessions refuses it


@router.post(
    "/{session_id}/fork",
    status_code=201,
    response_model=SessionView,
    summary="Fork a session: a new active session with its messages 1..at_seq",
)
async def fork_session(session_id: SessionId, body: ForkSessionIn, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    # The fork's id lands on the source's shard: one op there reads the source and makes the fork.
    fork_id = fork_session_id(caller.org, sid, caller.shards.shards, caller.idempotency_key())
    op = ForkSession(
        caller.org,
        fork_id,
        sid,
        body.at_seq,
        name=check_name(body.name, caller.limits) if body.name is not None else None,
        ttl_s=check_ttl(body.ttl_seconds, caller.limits) if body.ttl_seconds is not None else None,
        context=check_context(body.context, caller.limits) if body.context is not None else None,
        max_active=shard_share(caller.limits.max_active_sessions, caller.shards.shards),
        max_messages=caller.limits.max_messages_per_session,
    )
    view, headers = await caller.write(fork_id, op)
    return json_response(view[1], 201, {"Location": f"/sessions/{fork_id}", **_etag(view), **headers})


@router.post(
    "/{session_id}/messages",
    status_code=201,
    response_model=MessageView | MessageBatchOut,
    summary="Append one message, or a batch all-or-nothing",
)
async def append_messages(session_id: SessionId, body: AppendMessagesIn, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    messages = check_messages(body.as_messages(), caller.limits)
    op = AppendMessages(caller.org, sid, messages, caller.limits.max_messages_per_session)
    stored: EncodedJSON
    stored, headers = await caller.write(sid, op)  # the stored messages, a JSON array
    # A batch as {"messages": [...]}; one message as the array's one object.
    answer = json_object(messages=stored) if body.messages is not None else only_element(stored)
    return json_response(answer, 201, headers)


@router.get("/{session_id}", response_model=SessionWithMessages, summary="Get a session and its messages")
async def get_session(
    session_id: SessionId,
    caller: CurrentCaller,
    after_seq: Annotated[int, Query(ge=0, description="Only messages with seq greater than this.")] = 0,
    limit: Annotated[
        int | None, Query(ge=1, description="At most this many messages (default: all).")
    ] = None,
) -> Response:
    sid = _session_id(session_id)
    view = await caller.shards.submit(caller.org, sid, GetSession(caller.org, sid, after_seq, limit))
    return json_response(view[1], headers=_etag(view))


@router.put("/{session_id}/context", response_model=SessionView, summary="Replace the whole context")
async def replace_context(
    session_id: SessionId,
    context: Annotated[dict[str, Any], Body(description="The new context: a JSON object.")],
    caller: CurrentCaller,
    if_match: Annotated[
        str | None, Header(description="Apply only at this context version, else 412.")
    ] = None,
) -> Response:
    sid = _session_id(session_id)
    op = ReplaceContext(caller.org, sid, check_context(context, caller.limits), _parse_if_match(if_match))
    view, headers = await caller.write(sid, op)
    return json_response(view[1], headers={**_etag(view), **headers})


@router.patch("/{session_id}", response_model=SessionView, summary="Rename or extend the TTL")
async def update_session(session_id: SessionId, body: UpdateSessionIn, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    op = UpdateSession(
        caller.org,
        sid,
        name=check_name(body.name, caller.limits) if body.name is not None else None,
        ttl_s=check_ttl(body.ttl_seconds, caller.limits) if body.ttl_seconds is not None else None,
    )
    view, headers = await caller.write(sid, op)
    return json_response(view[1], headers=headers)


@router.get("", response_model=SessionListOut, summary="List this organization's sessions, newest first")
async def list_sessions(
    caller: CurrentCaller,
    status: Annotated[Status | None, Query(description="Only sessions in this state.")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default 50).")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    page_size = limit or caller.limits.default_list_limit
    if page_size > caller.limits.max_list_limit:
        raise ValidationFailed(
            f"limit: at most {caller.limits.max_list_limit}",
            {"field": "limit", "limit": caller.limits.max_list_limit},
        )
    op = ListSessions(
        caller.org,
        page_size,
        SessionStatus(status) if status else None,
        decode_cursor(cursor) if cursor else None,
    )
    pages = await caller.shards.broadcast(op)
    # Each shard's page is newest first, each session as its JSON (engine.sessions.answers); merge
    # them and keep the newest page_size.
    items = [page_items(p) for p in pages]
    merged = list(heapq.merge(*items, key=lambda item: item[0], reverse=True))
    page = merged[:page_size]
    more = len(merged) > page_size or any(p["has_more"] for p in pages)
    next_cursor = encode_cursor(page[-1][0]) if more and page else None
    sessions = json_array(view for _, view in page)
    return json_response(
        json_object(sessions=sessions, count=encoded(len(page)), next_cursor=encoded(next_cursor))
    )


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a session and everything session memory holds of it",
)
async def delete_session(session_id: SessionId, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    op = DeleteSession(caller.org, sid)
    once = await caller.once(op)
    if isinstance(once, Idempotent):
        # A retry is answered before anything is deleted; a key reused for another request is
        # refused before the vector goes.
        check = CheckKey(caller.org, sid, once.key, once.fingerprint, op)
        if await caller.shards.submit(caller.org, sid, check) is not None:
            return Response(status_code=204, headers=REPLAYED_HEADERS)
    # Its memory first: if the session delete then fails, a retry finds the session and finishes.
    # A summary still being made when the session goes deletes its own vector (see engine.closing.job).
    await caller.memory.submit(caller.org, ForgetSessions(caller.org, (sid,)))
    _, headers = answered(await caller.shards.submit(caller.org, sid, once))
    return Response(status_code=204, headers=headers)


@router.post(
    "/{session_id}/summarize",
    status_code=202,
    response_model=SessionView,
    summary="Summarize an ended session again; the summary is made in the background",
)
async def summarize_session(session_id: SessionId, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    view, headers = await caller.write(sid, RequestSummary(caller.org, sid))
    return json_response(view[1], 202, headers)


@router.post("/{session_id}/close", response_model=SessionView, summary="Close; a summary follows")
async def close_session(session_id: SessionId, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    view, headers = await caller.write(sid, EndSession(caller.org, sid, SessionStatus.CLOSED))
    return json_response(view[1], headers=headers)


@router.post("/{session_id}/complete", response_model=SessionView, summary="Complete; no summary")
async def complete_session(session_id: SessionId, caller: CurrentCaller) -> Response:
    sid = _session_id(session_id)
    view, headers = await caller.write(sid, EndSession(caller.org, sid, SessionStatus.COMPLETED))
    return json_response(view[1], headers=headers)
