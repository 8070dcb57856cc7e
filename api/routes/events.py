"""Change feeds as Server-Sent Events: a session's (`GET /sessions/{id}/events`) and an
organization's (`GET /events`). Each event's `id:` is the position after it; a client that
reconnects with `Last-Event-ID` (browsers' EventSource does so by itself) gets exactly what
followed, for as long as the shards keep it (events.retention_s). See engine.sessions.events for
the events and api/feeds.py for how a gateway serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import Header, Query
from starlette.responses import Response, StreamingResponse

from engine.sessions.events import Position
from engine.sessions.ops import GetSession

from ..deps import CurrentCaller
from ..feeds import Stream, format_positions, parse_positions
from ..http import json_router
from .sessions import SessionId, _session_id

router = json_router("", "events")

_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of events (text/event-stream): `feed.ready` first, then events as they "
        "happen; `feed.dropped` ends a stream that fell too far behind.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    410: {"description": "Last-Event-ID is older than the events the engine keeps."},
}
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
    stream = await hub.open(caller.org, sid, resume)
    return _respond(stream, caller, ends_on_delete=True)


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
    stream = await hub.open(caller.org, None, resume)
    return _respond(stream, caller, ends_on_delete=False)


def _respond(stream: Stream, caller: Any, *, ends_on_delete: bool) -> Response:
    heartbeat_s = caller.request.app.state.config.events.heartbeat_s
    return StreamingResponse(
        _sse(stream, heartbeat_s, ends_on_delete), media_type="text/event-stream", headers=HEADERS
    )


def _frame(positions: dict[int, Position], kind: str, data: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        format_positions(positions).encode(),
        kind.encode(),
        orjson.dumps(data),
    )


async def _sse(stream: Stream, heartbeat_s: float, ends_on_delete: bool) -> AsyncIterator[bytes]:
    positions = stream.positions
    try:
        yield _frame(positions, "feed.ready", {"position": format_positions(positions)})
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
