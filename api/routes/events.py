"""Change feeds as Server-Sent Events: a session's (`GET /sessions/{id}/events`) and an
organization's (`GET /events`). Each event's `id:` is the position after it; a client that
reconnects with `Last-Event-ID` (browsers' EventSource does so by itself) gets exactly what
followed, for as long as the shards keep it (events.retention_s). A session's feed starts with the
session's state, read once the feed's position is fixed, so a consumer waiting for a change (its
summary) sees it in the state or in an event after it, never in neither. See
engine.sessions.events for the events and api/feeds.py for how a gateway serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import Header, Query
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from engine.errors import TooManyFeeds
from engine.sessions.events import Position
from engine.sessions.ops import GetSession

from .. import metrics
from ..deps import CurrentCaller
from ..feeds import FeedHub, Stream, format_positions, parse_positions
from ..http import json_router
from .sessions import SessionId, _session_id

router = json_router("", "events")

_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of events (text/event-stream): `feed.ready` first (a session's carries "
        "the session's status, summary_status, index_status, summary and summary_error), then events "
        "as they happen; `feed.dropped` ends a stream that fell too far behind.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    410: {"description": "An event this feed wants after Last-Event-ID is no longer kept."},
    429: {"description": "The organization has events.max_feeds_per_org feeds open on this gateway worker."},
}
# What a session feed's feed.ready tells of the session: enough to know whether what one waits for
# (its end, its summary) has already happened.
READY_FIELDS = ("status", "summary_status", "index_status", "summary", "summary_error")
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="The id of the last event received: the feed resumes right after it.",
    ),
]
After = Annotated[
    str | None,
    Query(description="Same as Last-Event-ID, for clients that cannot set headers (it wins if both)."),
]
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get(
    "/sessions/{session_id}/events",
    response_class=StreamingResponse,
    responses=_DOCUMENTED,
    summary="Follow a session: messages, context, status and summary as they happen",
)
async def session_events(
    session_id: SessionId, caller: CurrentCaller, last_event_id: LastEventId = None, after: After = None
) -> Response:
    sid = _session_id(session_id)
    hub = caller.request.app.state.feeds
    position = after or last_event_id
    resume = parse_positions(position, hub.shards_of(caller.org, sid), hub.shards) if position else None
    # 404 for a session that is not there (or is another organization's), before the stream opens.
    await caller.shards.submit(caller.org, sid, GetSession(caller.org, sid, 0, 0))
    stream = await _open(hub, caller, sid, resume)
    try:
        # Read again now that the stream's position is fixed: what changes after this read comes
        # as an event, so the state and the events together miss nothing.
        view = await caller.shards.submit(caller.org, sid, GetSession(caller.org, sid, 0, 0))
    except BaseException:
        stream.close()
        raise
    body = orjson.loads(view[1])
    return _respond(stream, caller, ends_on_delete=True, session={k: body.get(k) for k in READY_FIELDS})


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses=_DOCUMENTED,
    summary="Follow the organization: sessions created, ended and deleted, and their summaries",
)
async def organization_events(
    caller: CurrentCaller, last_event_id: LastEventId = None, after: After = None
) -> Response:
    hub = caller.request.app.state.feeds
    position = after or last_event_id
    resume = parse_positions(position, hub.shards_of(caller.org, None), hub.shards) if position else None
    stream = await _open(hub, caller, None, resume)
    return _respond(stream, caller, ends_on_delete=False)


async def _open(hub: FeedHub, caller: Any, sid: str | None, resume: dict[int, Position] | None) -> Stream:
    try:
        return await hub.open(caller.org, sid, resume)
    except TooManyFeeds:
        org = caller.request.app.state.org_labels(caller.org)
        metrics.FEEDS_REFUSED.labels("max_feeds_per_org", org).inc()
        raise


def _respond(
    stream: Stream, caller: Any, *, ends_on_delete: bool, session: dict[str, Any] | None = None
) -> Response:
    heartbeat_s = caller.request.app.state.config.events.heartbeat_s
    return FeedResponse(stream, _sse(stream, heartbeat_s, ends_on_delete, session))


class FeedResponse(StreamingResponse):
    """Closes its stream however the response ends. A client gone before the first byte cancels the
    body before it starts, and then the body's own `finally` never runs: its feed would stay
    counted against its organization's events.max_feeds_per_org."""

    def __init__(self, stream: Stream, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=HEADERS)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.close()


def _frame(positions: dict[int, Position], kind: str, data: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        format_positions(positions).encode(),
        kind.encode(),
        orjson.dumps(data),
    )


async def _sse(
    stream: Stream, heartbeat_s: float, ends_on_delete: bool, session: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    positions = stream.positions
    try:
        ready: dict[str, Any] = {"position": format_positions(positions)}
        if session is not None:
            ready["session"] = session
        yield _frame(positions, "feed.ready", ready)
        async for batch in stream.events(heartbeat_s):
            if batch is None:
                yield b": keep-alive\n\n"
                continue
            frames = []
            for shard, position, event in batch:
                positions[shard] = position
                frames.append(_frame(positions, event.type, event.body()))
            yield b"".join(frames)
            if ends_on_delete and any(event.type == "session.deleted" for _, _, event in batch):
                return
        yield _frame(
            positions,
            "feed.dropped",
            {
                "position": format_positions(positions),
                "hint": "This consumer fell too far behind and was dropped. Reconnect with this "
                "position as Last-Event-ID to resume.",
            },
        )
    finally:
        stream.close()
