"""DurableMemory: a MemoryStore whose every upsert and delete is in its write-ahead log before a
batch returns, with snapshots of whole FAISS indexes; the memory shard's durable wrapper, built
like the session shard's (engine.sessions.durable).

The log is the session shards' (engine.storage.wal): framed, checksummed records, group commit,
the same fsync policies, a torn tail cut off at recovery, and the same answer to a log that cannot
be written: rebuild from the files, refuse changes and answer queries until the disk is back. A
record's ops carry vectors as base64 float32 (engine.memory.store: MEMORY_OPS), so replay rebuilds
exactly the vectors that were acknowledged.

Snapshots (engine.memory.snapshot) are serialized on the shard's thread (a memory copy); writing
and fsyncing the file can run in another thread while the shard goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.config import DurabilityConfig
from engine.errors import EngineError
from engine.idempotency import IdempotencyRecords
from engine.storage.identity import ShardIdentity
from engine.storage.logged import LoggedStore
from engine.storage.recovery import Recovery, drop_covered, recover_state
from engine.storage.snapshot import SnapshotResult
from engine.storage.wal import LogRecord

from .codec import decode_op
from .index import IndexParams
from .ops import MEMORY_OPS
from .snapshot import SNAPSHOT_PREFIX, read_snapshot, write_snapshot
from .store import MemoryStore

log = logging.getLogger(__name__)


class DurableMemory(LoggedStore):
    OPS = MEMORY_OPS
    SNAPSHOT_PREFIX = SNAPSHOT_PREFIX
    store: MemoryStore

    def __init__(
        self,
        directory: Path,
        config: DurabilityConfig,
        params: IndexParams,
        clock: Clock | None = None,
        lock_wait_s: float = 10.0,
        identity: ShardIdentity | None = None,
    ) -> None:
        self.directory = directory
        self._identity = identity
        self._config = config
        self._fsync = config.fsync
        self._clock = clock or SystemClock()
        self._params = params
        self._open(lock_wait_s)
        self._snapshot_lsn = self.recovery.snapshot_lsn
        self._last_snapshot_s = time.monotonic()

    def _read_files(self, *, repair: bool, until_lsn: int | None) -> tuple[MemoryStore, int, Recovery]:
        self.store = MemoryStore(self._params)  # let the current indexes go first
        records = IdempotencyRecords.from_config(self._config)
        return recover(self.directory, self._params, until_lsn, records, repair=repair)

    def snapshot_due(self) -> bool:
        if self._wal is None or self.lsn == self._snapshot_lsn:
            return False
        return (
            time.monotonic() - self._last_snapshot_s >= self._config.snapshot_interval_s
            or self._wal.bytes_since_rotation >= self._config.snapshot_log_bytes
        )

    def begin_snapshot(self) -> Callable[[], SnapshotResult]:
        """Serialize every namespace now (the shard must not change meanwhile); returns the blocking
        rest, which writes the file and may run in another thread, after which `finish_snapshot`."""
        started = time.perf_counter()
        self.sync()
        lsn = self.lsn
        taken_at = self._clock.now_ms()  # the state's moment, not the file's: a restore compares it
        self.writable_log().rotate(lsn + 1)
        parts = [(org, namespace, *index.to_parts()) for (org, namespace), index in self.store.namespaces()]
        records = IdempotencyRecords.encode(self.store.idempotency.frozen())
        pause_ms = (time.perf_counter() - started) * 1000

        def write() -> SnapshotResult:
            size = write_snapshot(self.directory, lsn, taken_at, parts, records)
            self.archive_sealed()  # the rotation above sealed a segment
            return SnapshotResult(
                lsn, size, time.perf_counter() - started, pause_ms, {"namespaces": len(parts)}
            )

        return write

    def finish_snapshot(self, result: SnapshotResult) -> None:
        self.check_epoch()
        self._snapshot_lsn = result.lsn
        self._last_snapshot_s = time.monotonic()
        drop_covered(self.directory, SNAPSHOT_PREFIX, result.lsn, self.drop_segments)

    def snapshot_now(self) -> SnapshotResult:
        result = self.begin_snapshot()()
        self.finish_snapshot(result)
        return result

    def close(self, *, snapshot: bool = True) -> None:
        try:
            if snapshot and self.lsn != self._snapshot_lsn and self._refusal is None:
                self.snapshot_now()
        finally:
            self._close_files()


def recover(
    directory: Path,
    params: IndexParams,
    until_lsn: int | None = None,
    records: IdempotencyRecords | None = None,
    *,
    repair: bool = True,
) -> tuple[MemoryStore, int, Recovery]:
    """The newest snapshot that reads whole, then every log record after it (see
    engine.storage.recovery). `until_lsn`: a running shard rebuilding itself after a failed log
    write; it reads no further. With it, or with `repair=False`, nothing on disk changes."""
    started = time.perf_counter()
    template = records if records is not None else IdempotencyRecords()

    def fresh() -> MemoryStore:
        return MemoryStore(params, template.empty_like())

    def apply_record(store: MemoryStore, record: LogRecord) -> None:
        ops = [decode_op(encoded) for encoded in record.ops]
        for result in store.apply_batch(ops, record.now_ms):
            if isinstance(result, EngineError):
                raise result

    store, found = recover_state(
        directory, SNAPSHOT_PREFIX, fresh, read_snapshot, apply_record, until_lsn=until_lsn, repair=repair
    )
    store.drop_stored_windows()
    recovery = Recovery(
        found.snapshot_lsn,
        found.records_replayed,
        time.perf_counter() - started,
        found.notes.as_dict(),
        {"namespaces": sum(1 for _ in store.namespaces()), "vectors": len(store)},
    )
    log.info("memory shard recovered", extra={"directory": str(directory), **recovery.report()})
    return store, found.lsn, recovery
