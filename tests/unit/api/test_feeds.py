"""The gateway's feed hub (api/feeds.py) over in-process shards: a consumer that falls behind is
dropped with a position it resumes from exactly, and catch-up and live events meet with no gap
and no duplicate while writes keep coming."""

from __future__ import annotations

import asyncio

import pytest

from api import feeds
from api.feeds import FeedHub, Stream
from engine.config import EventsConfig
from engine.errors import TooManyFeeds, ValidationFailed
from engine.sessions.events import Position
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.sessions.store import SessionStore
from tests.support.local_shards import LocalTransport


async def make_session(transport: LocalTransport, hub: FeedHub, org: str = "acme") -> tuple[str, int]:
    sid = new_session_id()
    shard = hub.shards_of(org, sid)[0]
    await transport.call(shard, [CreateSession(org, sid, "s", 3600, {})])
    return sid, shard


async def say(transport: LocalTransport, shard: int, sid: str, text: str, org: str = "acme") -> None:
    (result,) = await transport.call(shard, [AppendMessages(org, sid, (NewMessage("user", text),))])
    assert isinstance(result, bytes), result  # a transport answers an append as its JSON


async def take(stream: Stream, count: int, timeout_s: float = 5.0) -> list[str]:
    """The contents of the next `count` messages the stream gives."""
    got: list[str] = []

    async def read() -> None:
        async for batch in stream.events(heartbeat_s=0.05):
            for _, _, event in batch or ():
                if event.type == "message.appended":
                    got.append(event.data["message"]["content"])
            if len(got) >= count:
                return

    await asyncio.wait_for(read(), timeout_s)
    return got


async def test_a_consumer_that_falls_behind_is_dropped_and_resumes_exactly() -> None:
    transport = LocalTransport(2)
    hub = FeedHub(transport, EventsConfig(max_queued=5))
    sid, shard = await make_session(transport, hub)
    stream = await hub.open("acme", sid, None)
    for i in range(20):  # nothing reads the stream meanwhile
        await say(transport, shard, sid, f"m{i}")
    for _ in range(100):
        if stream.feed.dropped:
            break
        await asyncio.sleep(0.01)
    assert stream.feed.dropped
    assert [batch async for batch in stream.events(heartbeat_s=0.05)] == []  # it ends at once
    resume_at = stream.positions
    stream.close()
    resumed = await hub.open("acme", sid, resume_at)
    assert await take(resumed, 20) == [f"m{i}" for i in range(20)]
    resumed.close()


async def test_catch_up_and_live_events_meet_with_no_gap_and_no_duplicate() -> None:
    transport = LocalTransport(2)
    hub = FeedHub(transport, EventsConfig())
    sid, shard = await make_session(transport, hub)
    watcher = await hub.open("acme", sid, None)  # keeps the shard's tail running ahead
    start = watcher.positions
    for i in range(10):
        await say(transport, shard, sid, f"m{i}")

    async def keep_writing() -> None:
        for i in range(10, 60):
            await say(transport, shard, sid, f"m{i}")
            await asyncio.sleep(0)

    writer = asyncio.create_task(keep_writing())
    resumed = await hub.open("acme", sid, start)  # catches up while the writes go on
    got = await take(resumed, 60)
    await writer
    assert got == [f"m{i}" for i in range(60)]
    assert await take(watcher, 60) == [f"m{i}" for i in range(60)]
    resumed.close()
    watcher.close()


async def test_an_organization_feed_sees_only_its_organization() -> None:
    transport = LocalTransport(2)
    hub = FeedHub(transport, EventsConfig())
    org_feed = await hub.open("acme", None, None)
    mine = [await make_session(transport, hub, "acme") for _ in range(4)]
    theirs = [await make_session(transport, hub, "evil") for _ in range(4)]
    created: list[str] = []

    async def read() -> None:
        async for batch in org_feed.events(heartbeat_s=0.05):
            created.extend(e.session_id for _, _, e in batch or () if e.type == "session.created")
            if len(created) >= 4:
                return

    await asyncio.wait_for(read(), 5)
    assert sorted(created) == sorted(sid for sid, _ in mine)
    assert not set(created) & {sid for sid, _ in theirs}
    assert set(org_feed.positions) == {0, 1} and all(p > Position(0, 0) for p in org_feed.positions.values())
    org_feed.close()


async def test_consumers_are_dropped_when_their_shards_feed_ends_before_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeds, "POLL_WAIT_S", 0.1)  # the read in flight holds the shard's old store
    transport = LocalTransport(1)
    hub = FeedHub(transport, EventsConfig())
    sid, shard = await make_session(transport, hub)
    stream = await hub.open("acme", sid, None)
    for i in range(3):
        await say(transport, shard, sid, f"m{i}")
    assert await take(stream, 3) == ["m0", "m1", "m2"]
    # The shard comes back without its newest writes (fsync everysec or never, then a crash): the
    # tail's position is past its feed's end, so its consumers resume themselves.
    transport.stores[shard] = SessionStore()
    sid, _ = await make_session(transport, hub)
    for _ in range(200):
        if stream.feed.dropped:
            break
        await asyncio.sleep(0.01)
    assert stream.feed.dropped
    stream.close()
    fresh = await hub.open("acme", sid, None)
    await say(transport, shard, sid, "after")
    assert await take(fresh, 1) == ["after"]
    fresh.close()


async def test_an_organization_may_hold_only_max_feeds_per_org_open() -> None:
    transport = LocalTransport(2)
    hub = FeedHub(transport, EventsConfig(max_feeds_per_org=2))
    sid, shard = await make_session(transport, hub)
    first, second = await hub.open("acme", sid, None), await hub.open("acme", None, None)
    with pytest.raises(TooManyFeeds) as refused:
        await hub.open("acme", None, None)
    assert refused.value.details["limit"] == 2 and "GET /events" in refused.value.hint
    other = await hub.open("evil", None, None)  # another organization has its own
    first.close()
    first.close()  # once is counted once
    third = await hub.open("acme", sid, None)
    with pytest.raises(TooManyFeeds):
        await hub.open("acme", sid, None)
    third.close()
    # A feed refused on the way (a position past the feed's end) does not stay counted.
    with pytest.raises(ValidationFailed):
        await hub.open("acme", sid, {shard: Position(10**6, 0)})
    assert hub.open_feeds("acme") == 1
    fourth = await hub.open("acme", sid, None)
    await say(transport, shard, sid, "still served")
    assert await take(fourth, 1) == ["still served"]
    for stream in (second, other, fourth):
        stream.close()
    assert hub.open_feeds("acme") == hub.open_feeds("evil") == 0
