"""The gateway's side of the change feeds: one long-poll a session shard for all of this process's
consumers, fanned out to each consumer's bounded queue.

A consumer (`Feed`) wants one session's events, or its organization's. It resumes from a position
(per shard) by reading what it missed from the shard itself, then takes live events from the
shard's `Tail`. The tail reads only what its consumers want (their interests travel with each read)
and, when a consumer with a new interest arrives, drops the read in flight and reads again from the
same position, so no event is filtered out from under a consumer. The consumer starts its catch-up
only once the tail knows its position, so the two overlap and never leave a gap; the overlap is
removed by position. Ordering is per shard: an organization's feed interleaves its shards.

A consumer whose queue holds `events.max_queued` events (it reads slower than events come) is
dropped: its stream ends with a `feed.dropped` event carrying the position to resume from.

Each open feed holds one of this worker's connections for as long as it is read, so an organization
may hold at most `events.max_feeds_per_org` of them here; past it, opening one is refused
(TooManyFeeds, 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.config import EventsConfig
from engine.errors import FeedGone, TooManyFeeds, Unavailable, ValidationFailed
from engine.routing import shard_for
from engine.runtime.transports import SessionTransport
from engine.sessions.events import Event, Interest, Page, Position, parse_position

from . import metrics

log = logging.getLogger(__name__)

POLL_WAIT_S = 10.0  # how long one read waits on its shard for events
PAGE = 1000  # events one read returns at most
RETRY_S = 1.0  # after a read failed (the shard restarting)
REGROUP_S = 0.05  # how long a tail gathers arriving consumers before it reads for them


def parse_positions(text: str, shards: Sequence[int], total: int) -> dict[int, Position]:
    """A feed's Last-Event-ID: one position for a session's feed, one per session shard (in shard
    order, comma-separated) for an organization's."""
    parts = text.split(",")
    if len(parts) != len(shards):
        raise ValidationFailed(
            "Last-Event-ID does not fit this feed",
            {"field": "Last-Event-ID", "positions": len(parts), "expected": len(shards), "shards": total},
            "Send back the id of the last event this feed gave you, unchanged.",
        )
    return {shard: parse_position(part) for shard, part in zip(shards, parts, strict=True)}


def format_positions(positions: dict[int, Position]) -> str:
    return ",".join(str(positions[shard]) for shard in sorted(positions))


@dataclass(eq=False)
class Feed:
    """One consumer: what it wants, what it has been given, what waits for it."""

    interest: Interest
    positions: dict[int, Position]  # per shard: the position after the last event given
    max_queued: int
    queue: list[tuple[int, Position, Event]] = field(default_factory=list)
    dropped: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, shard: int, position: Position, event: Event) -> None:
        if self.dropped:
            return
        if len(self.queue) >= self.max_queued:
            self.dropped = True
            metrics.FEED_DROPPED.inc()
        else:
            self.queue.append((shard, position, event))
        self.arrived.set()

    def take(self) -> list[tuple[int, Position, Event]]:
        """What waits, less what this consumer was given already (the catch-up's overlap)."""
        taken, self.queue = self.queue, []
        self.arrived.clear()
        fresh = []
        for shard, position, event in taken:
            if position > self.positions[shard]:
                fresh.append((shard, position, event))
                self.positions[shard] = position
        return fresh


class Tail:
    """This process's reader of one shard's feed, running while any consumer wants it."""

    def __init__(self, shard: int, transport: SessionTransport) -> None:
        self.shard = shard
        self._transport = transport
        self.position: Position | None = None  # None until the first read says where the feed ends
        self.ready = asyncio.Event()
        self._feeds: dict[Interest, set[Feed]] = {}
        self._grew = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # as a reader
        self._reads = 0

    def add(self, feed: Feed) -> None:
        known = feed.interest in self._feeds
        self._feeds.setdefault(feed.interest, set()).add(feed)
        if not known:
            self._grew.set()  # the read in flight does not look for it: read again
        if self._task is None or self._task.done():
            self.position = None
            self.ready.clear()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, feed: Feed) -> None:
        feeds = self._feeds.get(feed.interest)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._feeds[feed.interest]

    async def _run(self) -> None:
        try:
            while self._feeds:
                self._grew.clear()
                interests = frozenset(self._feeds)
                self._reads += 1
                reader = (self._name, self._reads)
                read = asyncio.ensure_future(
                    self._transport.read_events(
                        self.shard, self.position, interests, PAGE, POLL_WAIT_S, reader
                    )
                )
                grew = asyncio.ensure_future(self._grew.wait())
                await asyncio.wait({read, grew}, return_when=asyncio.FIRST_COMPLETED)
                grew.cancel()
                if self._grew.is_set():
                    read.cancel()  # it may have left out the new consumer's events: read them again
                    # ...once the consumers arriving together have all arrived: a fleet that opens
                    # hundreds of feeds at once costs the shard a few reads, not hundreds.
                    await asyncio.sleep(REGROUP_S)
                    continue
                try:
                    page = read.result()
                except (FeedGone, ValidationFailed):
                    # Fell behind what the shard keeps for its consumers, or the shard's feed ends
                    # before this position (it lost its newest writes: fsync everysec or never).
                    # Each consumer resumes itself.
                    self._drop_all()
                    self.position = None
                    self.ready.clear()  # a consumer arriving now waits for the new position
                    continue
                except Exception as exc:  # noqa: BLE001 - the shard restarting, moving: read again soon
                    log.warning("feed read failed", extra={"shard": self.shard, "error": str(exc)})
                    await asyncio.sleep(RETRY_S)
                    continue
                for position, event in page.events:
                    self._deliver(position, event)
                self.position = page.position
                self.ready.set()
        finally:
            self._task = None

    def _deliver(self, position: Position, event: Event) -> None:
        if event.in_session_feed:
            for feed in self._feeds.get((event.org, event.session_id), ()):
                feed.offer(self.shard, position, event)
        if event.in_org_feed:
            for feed in self._feeds.get((event.org, None), ()):
                feed.offer(self.shard, position, event)

    def _drop_all(self) -> None:
        for feeds in self._feeds.values():
            for feed in feeds:
                feed.dropped = True
                feed.arrived.set()


class FeedHub:
    """This gateway process's feeds: a tail per session shard, started by the first consumer."""

    def __init__(self, transport: SessionTransport, config: EventsConfig) -> None:
        self._transport = transport
        self._config = config
        self._tails = [Tail(i, transport) for i in range(transport.shards)]
        self._open: dict[str, int] = {}  # per organization: its feeds open here, or opening

    @property
    def shards(self) -> int:
        return len(self._tails)

    def shards_of(self, org: str, session_id: str | None) -> list[int]:
        return list(range(self.shards)) if session_id is None else [shard_for(org, session_id, self.shards)]

    def open_feeds(self, org: str) -> int:
        return self._open.get(org, 0)

    async def open(self, org: str, session_id: str | None, after: dict[int, Position] | None) -> Stream:
        """A consumer's stream. With `after`, what it missed is read from the shards first (a
        position no longer kept raises FeedGone, before anything is sent); without, it starts now.
        TooManyFeeds if the organization has `events.max_feeds_per_org` open here already."""
        limit = self._config.max_feeds_per_org
        if self.open_feeds(org) >= limit:
            raise TooManyFeeds(limit)
        self._open[org] = self.open_feeds(org) + 1  # counted before the first wait: no race past it
        try:
            return await self._open_stream(org, session_id, after)
        except BaseException:
            self._release(org)
            raise

    def _release(self, org: str) -> None:
        left = self._open[org] - 1
        if left:
            self._open[org] = left
        else:
            del self._open[org]

    async def _open_stream(
        self, org: str, session_id: str | None, after: dict[int, Position] | None
    ) -> Stream:
        shards = self.shards_of(org, session_id)
        feed = Feed((org, session_id), {}, self._config.max_queued)
        tails = [self._tails[i] for i in shards]
        for tail in tails:
            tail.add(feed)
        try:
            async with asyncio.timeout(POLL_WAIT_S):
                # Until every tail knows its position at once (one may start over while we wait).
                while waiting := [tail for tail in tails if not tail.ready.is_set()]:
                    await waiting[0].ready.wait()
        except TimeoutError:
            self._close(feed, tails)
            raise Unavailable("the feed's shards did not answer", {"shards": shards}) from None
        for tail in tails:
            assert tail.position is not None
            feed.positions[tail.shard] = after[tail.shard] if after is not None else tail.position
        stream = Stream(self, feed, tails)
        if after is not None:
            try:
                await stream.catch_up_first()
            except BaseException:
                self._close(feed, tails)
                raise
        metrics.FEEDS_OPEN.inc()
        return stream

    def _close(self, feed: Feed, tails: Sequence[Tail]) -> None:
        for tail in tails:
            tail.remove(feed)

    async def read(self, shard: int, after: Position, interest: Interest) -> Page:
        return await self._transport.read_events(shard, after, frozenset([interest]), PAGE, 0)


class Stream:
    """What one consumer is sent: first what it missed, then live events, as (shard, position,
    event); `positions` is where it would resume."""

    def __init__(self, hub: FeedHub, feed: Feed, tails: Sequence[Tail]) -> None:
        self._hub = hub
        self.feed = feed
        self._tails = tails
        self._missed: list[tuple[int, Position, Event]] = []
        self._behind: dict[int, Position] = {}  # shards whose catch-up is not finished: from where
        self._closed = False

    @property
    def positions(self) -> dict[int, Position]:
        return dict(self.feed.positions)

    async def catch_up_first(self) -> None:
        """The first page of each shard's catch-up: raises (FeedGone, 404) before the stream starts."""
        for tail in self._tails:
            await self._catch_up(tail.shard, self.feed.positions[tail.shard])

    async def _catch_up(self, shard: int, after: Position) -> None:
        page = await self._hub.read(shard, after, self.feed.interest)
        self._missed += [(shard, p, e) for p, e in page.events]
        if page.more:
            self._behind[shard] = page.position
        else:
            self._behind.pop(shard, None)

    async def events(self, heartbeat_s: float) -> AsyncIterator[list[tuple[int, Position, Event]] | None]:
        """Batches of events in order; None when nothing came for `heartbeat_s`. Ends once dropped."""
        feed = self.feed
        while True:
            while self._missed or self._behind:
                missed, self._missed = self._missed, []
                given = [(s, p, e) for s, p, e in missed if p > feed.positions[s]]
                for shard, position, _ in given:
                    feed.positions[shard] = position
                if given:
                    yield given
                for shard, after in list(self._behind.items()):
                    await self._catch_up(shard, after)
            if feed.dropped:
                return
            if not feed.queue:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.arrived.wait(), heartbeat_s)
            if feed.dropped:
                return
            fresh = feed.take()
            yield fresh or None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub._close(self.feed, self._tails)
        self._hub._release(self.feed.interest[0])
        metrics.FEEDS_OPEN.dec()
