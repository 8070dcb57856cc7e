"""DurableShard: a ShardStore whose every change is in its write-ahead log before a batch returns.

Group commit: a batch of ops is encoded, applied in memory, and its changes become one log record;
with fsync=always one fsync covers the whole batch. Only then are the results handed back, so no
client ever sees a reply for a change that is not on disk. The write path, and what a shard does
when its disk refuses writes, is engine.storage.logged's, shared with the memory shards.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.config import DurabilityConfig
from engine.errors import EngineError
from engine.idempotency import IdempotencyRecords
from engine.sessions.ops import SESSION_OPS
from engine.sessions.shard import ShardStore, SnapshotCursor

from .codec import decode_op, decode_session, encode_session
from .frames import CorruptFile
from .lock import DirectoryLock
from .logged import LoggedStore
from .snapshot import SnapshotWriter, read_snapshot, snapshots
from .wal import WriteAheadLog, read_log

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Recovery:
    snapshot_lsn: int  # 0: no snapshot
    records_replayed: int
    sessions: int
    seconds: float


@dataclass(slots=True, frozen=True)
class SnapshotResult:
    lsn: int
    sessions: int
    bytes: int
    seconds: float
    longest_step_ms: float  # the longest the shard was held up by this snapshot


class DurableShard(LoggedStore):
    OPS = SESSION_OPS
    store: ShardStore

    def __init__(
        self,
        directory: Path,
        config: DurabilityConfig,
        clock: Clock | None = None,
        lock_wait_s: float = 10.0,
        own_process: bool = False,
    ) -> None:
        """`own_process`: this shard is the only large thing in its process (a Ray shard actor), so
        it may tune the process's garbage collector for a large, long-lived, acyclic heap."""
        self.directory = directory
        self._config = config
        self._fsync = config.fsync
        self._clock = clock or SystemClock()
        self._own_process = own_process
        self._lock = DirectoryLock(directory, lock_wait_s)
        try:
            if own_process:
                gc.disable()  # rebuilding allocates millions of objects; a full pass every so often is waste
            self.store, self.lsn, self.recovery = recover(directory, IdempotencyRecords.from_config(config))
            self._wal = WriteAheadLog(directory, self.lsn + 1)
        except BaseException:
            self._lock.release()
            raise
        finally:
            if own_process:
                gc.enable()
        self._settle_heap()
        self._snapshot_lsn = self.recovery.snapshot_lsn
        self._last_snapshot_s = time.monotonic()
        self._cursor: SnapshotCursor | None = None
        self._writer: SnapshotWriter | None = None
        self._snapshot_started = self._longest_step_s = 0.0
        self._snapshot_bytes = 0
        self._refusal = None

    def _rebuild(self) -> int:
        self.store = ShardStore()  # let the old state go first (a snapshot being written keeps its own)
        try:
            if self._own_process:
                gc.disable()
            self.store, lsn, _ = recover(
                self.directory, IdempotencyRecords.from_config(self._config), until_lsn=self.lsn
            )
        finally:
            if self._own_process:
                gc.enable()
        self._settle_heap()
        return lsn

    # -- snapshots ----------------------------------------------------------------------------------

    @property
    def snapshot_in_progress(self) -> bool:
        return self._cursor is not None

    def snapshot_due(self) -> bool:
        if self._cursor is not None or self.lsn == self._snapshot_lsn:
            return False
        return (
            time.monotonic() - self._last_snapshot_s >= self._config.snapshot_interval_s
            or self._wal.bytes_since_rotation >= self._config.snapshot_log_bytes
        )

    def begin_snapshot(self) -> None:
        self._snapshot_started = time.perf_counter()
        step_started = self._snapshot_started
        self.sync()
        self._wal.rotate(self.lsn + 1)  # every record of the snapshot's state is now in older segments
        self._writer = SnapshotWriter(self.directory, self.lsn, self._clock.now_ms())
        self._cursor = self.store.begin_snapshot(encode_session)
        self._longest_step_s = time.perf_counter() - step_started

    def snapshot_step(self) -> bool:
        """Write the next chunk; False once every session is written. Each call holds up the shard
        (it applies no ops meanwhile), so the longest one is recorded as the snapshot's pause."""
        assert self._cursor is not None and self._writer is not None
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
            more = bool(records)
        self._longest_step_s = max(self._longest_step_s, time.perf_counter() - step_started)
        return more

    def finish_snapshot_io(self) -> None:
        """Blocking: fsync and rename. Safe to run in a thread while ops go on."""
        assert self._writer is not None
        self._snapshot_bytes = self._writer.finish()

    def complete_snapshot(self) -> SnapshotResult:
        assert self._writer is not None
        lsn, sessions = self._writer.lsn, self._writer.sessions
        self._writer = self._cursor = None
        self._snapshot_lsn = lsn
        self._last_snapshot_s = time.monotonic()
        self._wal.drop_segments_before(lsn + 1)
        for older, path in snapshots(self.directory):
            if older < lsn:
                path.unlink()
        self._settle_heap()
        return SnapshotResult(
            lsn,
            sessions,
            self._snapshot_bytes,
            time.perf_counter() - self._snapshot_started,
            self._longest_step_s * 1000,
        )

    def abandon_snapshot(self) -> None:
        if self._writer is not None:
            self._writer.abandon()
        self.store.end_snapshot()
        self._writer = self._cursor = None

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
            self._wal.close()
        finally:
            self._lock.release()


def recover(
    directory: Path, records: IdempotencyRecords | None = None, until_lsn: int | None = None
) -> tuple[ShardStore, int, Recovery]:
    """Latest snapshot, then every log record after it. `until_lsn`: a running shard rebuilding
    itself after a failed log write; it reads no further and changes nothing on disk (see read_log)."""
    started = time.perf_counter()
    for leftover in directory.glob("*.tmp") if until_lsn is None else ():
        leftover.unlink()  # a snapshot that never finished; the log still has everything in it
    store, lsn = ShardStore(records), 0
    found = snapshots(directory)
    if found:
        lsn, chunks = read_snapshot(found[-1][1], store.idempotency.load)
        store.load(decode_session(encoded) for chunk in chunks for encoded in chunk)
    snapshot_lsn, replayed = lsn, 0
    store.replaying = True
    for record in read_log(directory, after_lsn=lsn, until_lsn=until_lsn):
        if record.lsn != lsn + 1:
            raise CorruptFile(directory, 0, f"log resumes at record {record.lsn}, but state ends at {lsn}")
        for encoded in record.ops:
            try:
                store.apply(decode_op(encoded), record.now_ms)
            except EngineError as exc:
                raise CorruptFile(directory, 0, f"record {record.lsn} does not replay: {exc}") from None
        lsn = record.lsn
        replayed += 1
    store.replaying = False
    store.take_journal()  # replayed ops are in the log already
    recovery = Recovery(snapshot_lsn, replayed, len(store), time.perf_counter() - started)
    log.info("shard recovered", extra={"directory": str(directory), **asdict(recovery)})
    return store, lsn, recovery
