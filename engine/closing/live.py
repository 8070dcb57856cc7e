"""LiveIndexer: live memory. A session shard's open sessions' turns go into their organizations'
session memory as they are appended, in the background, so a turn is found before its session
closes; the closing job then adds only what is left (engine.closing.job, step 4).

The append path only marks the session (SessionStore.live_dirty, one dict assignment); it never
waits for memory. The shard wakes the indexer after each batch it applies, and each tick takes
what arrived meanwhile, then rests `memory.live.interval_s` (or as long as the tick took, if
longer), so a burst of appends is one tick:

1. Take the marked sessions (the shard's `take`) into the waiting ones, in order.
2. Read them (LiveTurns, not logged), up to `memory.live.max_turns` messages in all; a session
   with more keeps waiting for the next tick. Skipped: gone, or owned by a closing job (its job
   unfinished, or indexed whole by one: its session entry must not be replaced); a skipped
   session leaves the tick at once, so a close need not wait for the tick to end.
3. Their new turns and a stand-in entry per session (engine.memory.sessions, live_session_entry:
   the filters' and matches' metadata, in no ranking) into memory: one embed (not urgent), then
   one upsert per organization (engine.closing.indexing.index_live). Turn entries are named by
   session and seq, so a tick done again replaces them: nothing doubles.
4. MarkLive, one record for the tick (an op per organization, one batch): each session's
   live_through moves to what went in, unless it was renamed since the read (the mark names the
   name it read: the turns go in again under the new one). A session it finds gone was deleted
   or purged while the tick ran: what went into memory of it is taken out (ForgetSessions); a
   forget that fails is tried again every tick until one succeeds, and a start forgets again the
   sessions its replay saw deleted or purged (forgets are idempotent), so a crash between a tick's
   upsert and its forget leaks nothing either. Each forget reads the sessions first and skips
   those made again under their id since (an import after the delete): their memory is theirs,
   unless MarkLive answered the session as another than the one the tick read (each mark names
   the incarnation read): then what the tick put in may be the one before's, so the id is
   forgotten, and the session there now (none of its turns marked) is held back until the forget
   is done and then put in whole.

A tick that fails (the embedder or the memory shard down) puts its sessions back and the indexer
tries again after a backoff that doubles, up to MAX_BACKOFF_S; appends go on meanwhile. A crash
before step 4 leaves live_through where it was, so the shard's next start (SessionStore.
live_backlog) indexes those turns again, replacing what went in.

Deletes (what makes memory end with nothing of a deleted session, however it interleaves with a
tick): the gateway forgets the session's memory before it deletes the session; the shard forgets
it again once its DeleteSession is logged; and MarkLive, written only after the tick's upsert was
answered, says which sessions were gone, which the tick then forgets. A tick's upsert that lands
after the shard's forget was sent after its own read found the session, so the delete came after
that read and before the tick's MarkLive: MarkLive finds it gone and the tick forgets it. A delete
after MarkLive has the shard's forget, sent after the upsert was answered.

A closing job reads its session only once the indexer has nothing of it in flight (`settled`), so
it sees the session's live_through and its upsert comes after the tick's.

Imports engine.sessions (its ops), engine.memory (through engine.closing.indexing), never Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from engine.config import LiveMemoryConfig
from engine.errors import EngineError
from engine.memory.sessions import ClosedSession
from engine.sessions.ops import LiveInput, LiveTurns, MarkLive
from engine.sessions.session import SessionStatus

from .indexing import forget_sessions, index_live, live_session
from .ports import ClosingPorts, Record

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (organization, session id)
MAX_BACKOFF_S = 30.0
READS_PER_CALL = 64  # sessions read in one batch of the shard: a restart may hand over thousands


@dataclass(slots=True)
class _Taken:
    """What a tick takes of one session: its new messages (as memory indexes them) and its mark."""

    org: str
    session_id: str
    session: ClosedSession
    message_count: int
    after: int
    through: int
    ended: bool
    name: str  # the session's name as read: a mark under another name is not applied
    said_at: Sequence[int]  # each new message's time, for the lag
    incarnation: int  # the session object read (Session.incarnation): a mark for another is not applied


class LiveIndexer:
    def __init__(
        self,
        record: Record,
        ports: ClosingPorts,
        config: LiveMemoryConfig,
        *,
        take: Callable[[], Iterable[Key]],
        writable: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        lag: Callable[[float], None] | None = None,
        now_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        """`take`: the sessions the shard marked since the last call. `lag`: told the seconds from
        each indexed message's append to its MarkLive (`now_ms`: the shard's clock)."""
        self._record = record
        self._ports = ports
        self._config = config
        self._take = take
        self._writable = writable
        self._sleep = sleep
        self._lag = lag or (lambda seconds: None)
        self._now_ms = now_ms
        self._waiting: dict[Key, None] = {}  # an ordered set
        self._in_flight: set[Key] = set()
        self._settled = asyncio.Condition()  # notified as sessions leave _in_flight
        self._wake = asyncio.Event()
        # Sessions gone whose memory a forget has not yet taken out (it failed): tried every tick.
        self._forgets: dict[str, set[str]] = {}
        # Of those, the ones a tick read as another session object than the one under the id now
        # (MarkLive did not mark them): forgotten even though a session exists, since what the tick
        # put in may be the one before's; the incarnation each was read as.
        self._replaced: dict[Key, int] = {}
        # Per session, the highest seq whose lag was observed: a re-index (a rename's, a restart's
        # backlog) is not lag since the message was said. Dropped when the session leaves.
        self._lagged: dict[Key, int] = {}
        self._started_ms = now_ms()
        self.failures = 0  # ticks failed in a row

    def wake(self) -> None:
        self._wake.set()

    def add(self, keys: Iterable[Key]) -> None:
        """Sessions to index besides those `take` gives (a start's backlog)."""
        self._waiting.update(dict.fromkeys(keys))

    def forget(self, keys: Iterable[Key]) -> None:
        """Sessions gone whose memory must be taken out: at the next tick, and every tick after
        until a forget succeeds (forgets are idempotent). A start hands over the sessions replay
        saw deleted or purged, in case a crash came between a tick's upsert and its forget."""
        for org, session_id in keys:
            self._forgets.setdefault(org, set()).add(session_id)
            self._lagged.pop((org, session_id), None)  # gone: its lag is never observed again
        if self._forgets:
            self._wake.set()

    @property
    def waiting(self) -> list[Key]:
        """The sessions waiting or in flight."""
        return [*self._waiting, *(key for key in self._in_flight if key not in self._waiting)]

    async def settled(self, org: str, session_id: str) -> None:
        """Returns once no tick has the session in flight."""
        async with self._settled:
            await self._settled.wait_for(lambda: (org, session_id) not in self._in_flight)

    async def _leave(self, keys: Iterable[Key]) -> None:
        """These sessions are no longer in flight: a closing job waiting on one goes on."""
        self._in_flight.difference_update(keys)
        async with self._settled:
            self._settled.notify_all()

    async def run(self) -> None:
        """Forever: a tick each time the shard wakes it, at most one a `interval_s`."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = time.monotonic()
            try:
                more = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever failed, the sessions wait for the next try
                self.failures += 1
                backoff = min(MAX_BACKOFF_S, self._config.interval_s * 2**self.failures)
                log.warning("live indexing failed", extra={"error": str(exc), "retry_in_s": backoff})
                await self._sleep(backoff)
                self._wake.set()
                continue
            self.failures = 0
            # What arrives meanwhile is the next tick's. Resting at least as long as the tick took
            # leaves the embedder and the memory shard to appends and queries half the time or more
            # when the turns come faster than they are indexed: the lag grows, appends do not slow.
            await self._sleep(max(self._config.interval_s, time.monotonic() - started))
            if more:
                self._wake.set()

    async def tick(self) -> bool:
        """One tick (the module's steps); whether sessions are left waiting."""
        self._waiting.update(dict.fromkeys(self._take()))  # 1
        if self._forgets:
            await self._forget_gone()
        if not self._waiting or not self._writable():
            return False  # a shard that takes no changes could not record the marks; woken again later
        try:
            taken = await self._read()  # 2
            if not taken:
                return bool(self._waiting)
            by_org: dict[str, list[_Taken]] = {}
            for t in taken:
                by_org.setdefault(t.org, []).append(t)
            await index_live(  # 3
                self._ports, {org: [(t.session, t.message_count) for t in ts] for org, ts in by_org.items()}
            )
            await self._mark(by_org)  # 4
        except BaseException:
            # Tried again from where live_through is: first in line, as they were.
            self._waiting = {**dict.fromkeys(self._in_flight), **self._waiting}
            raise
        finally:
            await self._leave(list(self._in_flight))
        return bool(self._waiting)

    async def _read(self) -> list[_Taken]:
        budget = self._config.max_turns
        taken: list[_Taken] = []
        keys = list(self._waiting)
        for start in range(0, len(keys), READS_PER_CALL):
            if budget <= 0:
                break
            chunk = keys[start : start + READS_PER_CALL]
            self._in_flight.update(chunk)  # from their read on: a closing job waits (`settled`)
            answers = await self._record([LiveTurns(org, sid, budget) for org, sid in chunk])
            skipped: list[Key] = []
            for (org, sid), live in zip(chunk, answers, strict=True):
                if isinstance(live, EngineError):
                    await self._leave(skipped)
                    return taken  # the shard takes no reads: left waiting
                if budget <= 0:
                    skipped.append((org, sid))  # not taken this tick: still waiting
                    continue
                if live is not None and (org, sid) in self._replaced:
                    skipped.append((org, sid))  # a forget of its id is pending: its turns go in after
                    continue
                if live is None or live.owned:
                    self._waiting.pop((org, sid), None)  # gone, or its closing job's
                    self._lagged.pop((org, sid), None)
                    skipped.append((org, sid))
                    continue
                found = self._taken(org, sid, live, budget)
                if found is None or found.through >= live.message_count:
                    self._waiting.pop((org, sid), None)
                if found is not None:
                    budget -= found.through - found.after
                    taken.append(found)
                else:
                    skipped.append((org, sid))
            await self._leave(skipped)  # nothing of them goes in: a close need not wait for the tick
        return taken

    @staticmethod
    def _taken(org: str, session_id: str, live: LiveInput, budget: int) -> _Taken | None:
        """What to index of a session now: None when nothing (no new message, and its entry in
        memory says what its status is)."""
        new = list(live.messages[:budget])
        ended = live.status is not SessionStatus.ACTIVE
        if not new and (live.live_through == 0 or not ended or live.ended_written):
            return None
        through = live.live_through + len(new)
        session = live_session(session_id, live, new)
        return _Taken(
            org,
            session_id,
            session,
            live.message_count,
            live.live_through,
            through,
            ended and through >= live.message_count,
            live.name,
            session.times,
            live.incarnation,
        )

    async def _mark(self, by_org: dict[str, list[_Taken]]) -> None:
        marks = [
            MarkLive(
                org,
                tuple((t.session_id, t.after, t.through, t.ended, t.name) for t in ts),
                incarnations=tuple(t.incarnation for t in ts),
            )
            for org, ts in by_org.items()
        ]
        answers = await self._record(marks)
        now_ms = self._now_ms()
        read = {(t.org, t.session_id): t.incarnation for ts in by_org.values() for t in ts}
        for mark, gone in zip(marks, answers, strict=True):
            if isinstance(gone, EngineError):
                raise gone  # not recorded: the sessions are indexed again from where they were
            if gone:
                for session_id in gone:
                    self._replaced[(mark.org, session_id)] = read[(mark.org, session_id)]
                self.forget((mark.org, session_id) for session_id in gone)
        if self._forgets:
            await self._forget_gone()
        for org, ts in by_org.items():
            for t in ts:
                self._observe_lag((org, t.session_id), t, now_ms)

    def _observe_lag(self, key: Key, t: _Taken, now_ms: float) -> None:
        """The lag of the messages indexed for the first time (seq past what was observed)."""
        seen = self._lagged.get(key, t.after)
        for seq, said_at in enumerate(t.said_at, start=t.after + 1):
            if seq > seen and said_at >= self._started_ms:  # before this start: a restart's backlog
                self._lag(max(0.0, (now_ms - said_at) / 1000))
        if t.ended:
            self._lagged.pop(key, None)
        else:
            self._lagged[key] = max(seen, t.through)

    async def _forget_gone(self) -> None:
        """Forget the sessions that are gone, organization by organization. One that fails is
        logged and kept for the next tick, and never fails the tick: its memory shard may be down
        while other organizations' are not, and their indexing goes on. A session made again under
        its id since (an import after the delete) is not forgotten: what memory holds under the id
        is its own now. Each is in flight from its read to the forget's answer, so a closing job of
        such a session writes after the forget."""
        for org, session_ids in list(self._forgets.items()):
            sent = sorted(session_ids)
            try:
                for start in range(0, len(sent), READS_PER_CALL):
                    await self._forget_absent(org, sent[start : start + READS_PER_CALL])
            except Exception as exc:  # noqa: BLE001 - kept, and tried again at the next tick
                log.warning("forgetting gone sessions failed", extra={"org": org, "error": str(exc)})
                continue
            session_ids.difference_update(sent)  # more may have come while it ran
            if not session_ids:
                self._forgets.pop(org, None)

    async def _forget_absent(self, org: str, session_ids: list[str]) -> None:
        """Forget those of these sessions that do not exist (again); raises when it cannot tell."""
        keys = [(org, session_id) for session_id in session_ids]
        fresh = [key for key in keys if key not in self._in_flight]
        self._in_flight.update(fresh)
        try:
            answers = await self._record([LiveTurns(org, session_id, 0) for session_id in session_ids])
            for answer in answers:
                if isinstance(answer, EngineError):
                    raise answer  # the shard takes no reads now: tried again at the next tick
            gone = [
                session_id
                for session_id, live in zip(session_ids, answers, strict=True)
                if live is None or self._replaced.get((org, session_id), live.incarnation) != live.incarnation
            ]
            if gone:
                await forget_sessions(self._ports, org, gone)
            for key in keys:
                self._replaced.pop(key, None)
        finally:
            await self._leave(fresh)
