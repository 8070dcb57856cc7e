"""DurableSessions: a SessionStore whose every change is in its write-ahead log before a batch returns;
the session shard's durable wrapper, built like the memory shard's (engine.memory.durable).

Group commit: a batch of ops is encoded, applied in memory, and its changes become one log record;
with fsync=always one fsync covers the whole batch. Only then are the results handed back, so no
client ever sees a reply for a change that is not on disk. The write path, and what a shard does
when its disk refuses writes, is engine.storage.logged's, shared with the memory shards.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.config import DurabilityConfig, EventsConfig
from engine.idempotency import IdempotencyRecords
from engine.storage.identity import ShardIdentity
from engine.storage.logged import LoggedStore
from engine.storage.recovery import Recovery, drop_covered, recover_state
from engine.storage.snapshot import SnapshotResult
from engine.storage.wal import LogRecord

from .codec import decode_op, decode_session, encode_session
from .events import Event, EventLog, FeedAtSnapshot, SavedFeed, decode_saved_feed
from .ops import SESSION_OPS
from .snapshot import SNAPSHOT_PREFIX, SnapshotCursor, SnapshotWriter, read_snapshot
from .store import SessionStore

log = logging.getLogger(__name__)


class DurableSessions(LoggedStore):
    OPS = SESSION_OPS
    SNAPSHOT_PREFIX = SNAPSHOT_PREFIX
    store: SessionStore
    observe_events: Callable[[list[Event]], None] | None = None  # told each record's events: metrics

    def __init__(
        self,
        directory: Path,
        config: DurabilityConfig,
        clock: Clock | None = None,
        lock_wait_s: float = 10.0,
        identity: ShardIdentity | None = None,
        own_process: bool = False,
        events: EventsConfig | None = None,
    ) -> None:
        """`own_process`: this shard is the only large thing in its process (a Ray shard actor), so
        it may tune the process's garbage collector for a large, long-lived, acyclic heap.
        `events`: how much of its change feed it keeps (engine.sessions.events)."""
        self.directory = directory
        self._events = EventLog.from_config(events or EventsConfig())
        self._identity = identity
        self._config = config
        self._fsync = config.fsync
        self._clock = clock or SystemClock()
        self._own_process = own_process
        self._open(lock_wait_s)
        self._snapshot_lsn = self.recovery.snapshot_lsn
        self._last_snapshot_s = time.monotonic()
        self._cursor: SnapshotCursor | None = None
        self._writer: SnapshotWriter | None = None
        self._feed: FeedAtSnapshot | None = None
        self._snapshot_started = self._longest_step_s = 0.0
        self._snapshot_bytes = 0

    def _read_files(self, *, repair: bool, until_lsn: int | None) -> tuple[SessionStore, int, Recovery]:
        self.store = SessionStore()  # let the current state go first (a snapshot being written keeps its own)
        try:
            if self._own_process:
                gc.disable()  # rebuilding allocates millions of objects; a full pass every so often is waste
            found = recover(
                self.directory,
                IdempotencyRecords.from_config(self._config),
                until_lsn,
                repair=repair,
                events=self._events,
            )
        finally:
            if self._own_process:
                gc.enable()
        self._settle_heap()
        return found

    def _logged(self, now_ms: int) -> None:
        events = self.store.events
        published = events.take_pending()
        events.publish(self.lsn, now_ms, published)
        if self.observe_events is not None:
            self.observe_events(published)

    # -- snapshots ----------------------------------------------------------------------------------

    @property
    def snapshot_in_progress(self) -> bool:
        return self._cursor is not None

    def snapshot_due(self) -> bool:
        if self._wal is None or self._cursor is not None or self.lsn == self._snapshot_lsn:
            return False
        return (
            time.monotonic() - self._last_snapshot_s >= self._config.snapshot_interval_s
            or self._wal.bytes_since_rotation >= self._config.snapshot_log_bytes
        )

    def begin_snapshot(self) -> None:
        self._snapshot_started = time.perf_counter()
        step_started = self._snapshot_started
        self.sync()
        # Every record of the snapshot's state is now in older segments.
        self.writable_log().rotate(self.lsn + 1)
        self._writer = SnapshotWriter(self.directory, self.lsn, self._clock.now_ms())
        self._cursor = self.store.begin_snapshot(encode_session)
        self._feed = self.store.events.at_snapshot()
        self._longest_step_s = time.perf_counter() - step_started

    def snapshot_step(self) -> bool:
        """Write the next chunk; False once every session is written. Each call holds up the shard
        (it applies no ops meanwhile), so the longest one is recorded as the snapshot's pause."""
        assert self._cursor is not None and self._writer is not None and self._feed is not None
        step_started = time.perf_counter()
        if not self._cursor.done:
            chunk = self._cursor.next_chunk(
                self._config.snapshot_chunk_sessions, self._config.snapshot_chunk_messages
            )
            self._writer.add(chunk)
            more = True
        else:
            self.store.end_snapshot()  # every session is written: later changes need no copies
            # Then the idempotency records as they were when the snapshot began.
            # A record may hold a session's view (its context too), so as many as sessions a step.
            records = self._cursor.next_records(self._config.snapshot_chunk_sessions)
            self._writer.add_records(records)
            # And the feed's positions as of its start, a chunk of retained events at a time.
            folded = self._feed.fold(self._config.snapshot_chunk_messages)
            more = bool(records) or not folded
        self._longest_step_s = max(self._longest_step_s, time.perf_counter() - step_started)
        return more

    def finish_snapshot_io(self) -> None:
        """Blocking: fsync and rename. Safe to run in a thread while ops go on."""
        assert self._writer is not None and self._feed is not None
        self._snapshot_bytes = self._writer.finish(self._feed.encode())
        self.archive_sealed()  # the rotation at its start sealed a segment

    def complete_snapshot(self) -> SnapshotResult:
        assert self._writer is not None
        self.check_epoch()
        lsn, sessions = self._writer.lsn, self._writer.sessions
        self._writer = self._cursor = self._feed = None
        self._snapshot_lsn = lsn
        self._last_snapshot_s = time.monotonic()
        drop_covered(self.directory, SNAPSHOT_PREFIX, lsn, self.drop_segments)
        self._settle_heap()
        return SnapshotResult(
            lsn,
            self._snapshot_bytes,
            time.perf_counter() - self._snapshot_started,
            self._longest_step_s * 1000,
            {"sessions": sessions},
        )

    def abandon_snapshot(self) -> None:
        if self._writer is not None:
            self._writer.abandon()
        self.store.end_snapshot()
        self._writer = self._cursor = self._feed = None

    def snapshot_now(self) -> SnapshotResult:
        """A whole snapshot, blocking: for shutdown, tests and benchmarks."""
        self.begin_snapshot()
        while self.snapshot_step():
            pass
        self.finish_snapshot_io()
        return self.complete_snapshot()

    def _settle_heap(self) -> None:
        # Sessions and messages hold no reference cycles, so reference counting frees them; moving
        # what exists now out of the collector's sight keeps its full passes (which stop the shard)
        # proportional to what arrived since, not to everything the shard holds.
        if self._own_process:
            gc.freeze()

    def close(self, *, snapshot: bool = True) -> None:
        try:
            if self._cursor is not None:
                self.abandon_snapshot()
            if snapshot and self.lsn != self._snapshot_lsn and self._refusal is None:
                self.snapshot_now()
        finally:
            self._close_files()


def recover(
    directory: Path,
    records: IdempotencyRecords | None = None,
    until_lsn: int | None = None,
    *,
    repair: bool = True,
    events: EventLog | None = None,
) -> tuple[SessionStore, int, Recovery]:
    """The newest snapshot that reads whole, then every log record after it (see
    engine.storage.recovery). `until_lsn`: a running shard rebuilding itself after a failed log
    write; it reads no further. With it, or with `repair=False`, nothing on disk changes."""
    started = time.perf_counter()
    template = records if records is not None else IdempotencyRecords()
    feed = events if events is not None else EventLog()

    def fresh() -> SessionStore:
        return SessionStore(template.empty_like(), feed.empty_like())

    def load_snapshot(path: Path, store: SessionStore) -> int:
        saved: list[SavedFeed | None] = []
        lsn, chunks = read_snapshot(
            path, store.idempotency.load, lambda feed: saved.append(decode_saved_feed(feed))
        )
        store.load(decode_session(encoded) for chunk in chunks for encoded in chunk)
        store.events.start_after(lsn, saved[0])  # the events before a snapshot are not known again
        return lsn

    def apply_record(store: SessionStore, record: LogRecord) -> None:
        for encoded in record.ops:
            store.apply(decode_op(encoded), record.now_ms)
        # The same events at the same positions as when the record was first written.
        store.events.publish(record.lsn, record.now_ms, store.events.take_pending())

    store, found = recover_state(
        directory, SNAPSHOT_PREFIX, fresh, load_snapshot, apply_record, until_lsn=until_lsn, repair=repair
    )
    recovery = Recovery(
        found.snapshot_lsn,
        found.records_replayed,
        time.perf_counter() - started,
        found.notes.as_dict(),
        {"sessions": len(store)},
    )
    log.info("shard recovered", extra={"directory": str(directory), **recovery.report()})
    return store, found.lsn, recovery
