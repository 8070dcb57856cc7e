"""The write path that both kinds of durable shard (sessions, vector memory) share.

A batch of ops is applied in this order, so that nothing is visible that the log does not hold
(PostgreSQL's rule: no change before its WAL insert):

1. Every op that changes state is encoded into the exact bytes its log record will hold. An op
   that cannot be encoded (engine.oplog.UnencodableOp) fails alone, with a VALIDATION_ERROR, and
   is never applied; the batch's other ops go on.
2. The rest are applied in order; an op that fails (not found, conflict, quota) changes nothing.
3. The ops that changed state, with the bytes of step 1, become one log record, written (and with
   fsync=always synced) before any result is handed back.

Only the disk can fail step 3. Then memory has run ahead of the disk, so the shard rebuilds its
state from its files up to the last acknowledged record (nothing of the failed batch stays, its
idempotency records neither), refuses changes as UNAVAILABLE while answering reads, and takes
changes again once a probe write to the log succeeds. A shard that starts on a disk that refuses
writes (full, read-only) starts the same way: recovered without changing its files, read-only,
until the disk takes writes.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.clock import Clock
from engine.config import DurabilityConfig
from engine.errors import CorruptFile, EngineError, LogWriteFailed, Unavailable
from engine.oplog import OpRegistry

from .archive import LogArchive
from .identity import Epoch, Fenced, ShardIdentity, verify_identity
from .lock import DirectoryLock
from .wal import WAL_MAGIC, WriteAheadLog, disk_reason, encode_record, unwritable_log

log = logging.getLogger(__name__)


class LoggedStore:
    """The base of DurableSessions and DurableMemory, which set these attributes and `_read_files`;
    `store` has `apply_batch(ops, now_ms)` and `take_journal()` (the ops that changed state)."""

    OPS: OpRegistry  # the store's declared ops: what is logged, and how it is encoded
    SNAPSHOT_PREFIX: str  # its snapshot files' names begin with it (engine.storage.snapshot)
    directory: Path
    lsn: int
    store: Any
    recovery: Any  # with `notes`, what recovery found (engine.storage.recovery)
    _wal: WriteAheadLog | None  # None: started on a disk that refused writes, not opened yet
    _clock: Clock
    _lock: DirectoryLock
    _refusal: Unavailable | None  # set while the log cannot be written, or for good once fenced
    _fsync: str
    _config: DurabilityConfig
    _identity: ShardIdentity | None  # None: a store used on its own (tests, tools), not a cluster's shard
    _epoch: Epoch | None = None  # this incarnation's claim on the directory (engine.storage.identity)
    _fenced = False
    _draining: Unavailable | None = None  # set by `drain`: changes refused, reads answered
    _archive: LogArchive | None = None  # where sealed segments are copied (durability.archive_dir)
    # Told each log write's seconds (write, and sync under fsync=always) and bytes: the shard's metrics.
    observe_commit: Callable[[float, int], None] | None = None

    def _read_files(self, *, repair: bool, until_lsn: int | None) -> tuple[Any, int, Any]:
        """(store, last record, recovery) from the files, dropping the current state first; with
        `repair=False` or `until_lsn` nothing on disk changes (see engine.storage.recovery)."""
        raise NotImplementedError

    def _open(self, lock_wait_s: float) -> None:
        """Check the directory is this shard's (before creating anything in it), take it, recover
        and open the log (read-only if the disk refuses writes)."""
        if self._identity is not None:
            verify_identity(self.directory, self._identity)  # raises NotThisShardsData
            if self._config.archive_dir is not None:
                self._archive = LogArchive(self._config.archive_dir, self._identity)
        self._lock = DirectoryLock(self.directory, lock_wait_s)
        try:
            self._start()
        except BaseException:
            self._lock.release()
            raise

    def _close_files(self) -> None:
        try:
            if self._wal is not None:
                self._wal.close()
                # A graceful stop leaves the archive complete up to now: what its final snapshot
                # sealed, and that nothing was logged after (a stop with records in the current
                # segment leaves it to the next start, which seals it).
                self.archive_sealed()
                if self._refusal is None and self._wal.end <= len(WAL_MAGIC):
                    self.archive_heartbeat(self._wal.segment_start, self._clock.now_ms())
        finally:
            self._lock.release()

    def _recover(self, *, repair: bool) -> None:
        self.store, self.lsn, self.recovery = self._read_files(repair=repair, until_lsn=None)

    def _rebuild(self) -> int:
        """The state in the files up to record `lsn` (never further: later ones were not
        acknowledged), changing nothing on disk; returns the last record read."""
        self.store, lsn, _ = self._read_files(repair=False, until_lsn=self.lsn)
        return int(lsn)

    def _start(self) -> None:
        """Recover and open the log. If the disk refuses a write on the way (a torn tail to cut, a
        new log segment), recover again without changing anything and start read-only."""
        self._refusal = None
        try:
            # The next epoch first: an old incarnation still running checks it before acknowledging,
            # so no write it acknowledges can land after the log is read below.
            self._epoch = Epoch(self.directory)
            self._recover(repair=True)
            self._wal = WriteAheadLog(self.directory, self.lsn + 1, self._clock.now_ms)
        except OSError as exc:
            failure = LogWriteFailed(f"cannot write to {self.directory} at start: {exc}", disk_reason(exc))
            self._recover(repair=False)
            self._wal, self._epoch = None, None
            self._refusal = unwritable_log(self.directory, failure)
            log.error(
                "the disk refuses writes; starting read-only",
                extra={"directory": str(self.directory), "error": str(exc)},
            )
        self._publish_condition()

    def archive_sealed(self) -> None:
        """Copy the sealed log segments the archive lacks (blocking I/O: a snapshot runs it in its
        thread, after its rotation sealed a segment). An archive that refuses them is logged, and
        the segments stay until a later call copies them (`drop_segments` keeps them)."""
        if self._archive is None or self._wal is None:
            return
        try:
            self._archive.archive_sealed(self.directory, self._wal.segment_start, self._wal.opened_at)
        except OSError as exc:
            log.error(
                "cannot copy sealed log segments to the archive; they stay in the data directory "
                "and are copied at the next snapshot",
                extra={"directory": str(self.directory), "error": str(exc)},
            )

    def backup_point(self) -> tuple[int, int, int, int | None]:
        """Where a backup cuts this shard now: (its last record, the first record of the segment
        being written, where that segment's last whole record ends and where it begins: None when
        the segment holds none), synced first. Unavailable
        while the log cannot be written (what is on disk past the last acknowledged record is not
        known whole), and Fenced once a newer incarnation took the directory."""
        if self._refusal is None and not self.holds_epoch():
            self._fence()
        self.sync()  # under fsync everysec: the watermark must be on disk, or a crash could reuse it
        if self._refusal is not None or self._wal is None:
            raise self._refusal or unwritable_log(
                self.directory, LogWriteFailed("the log is not open", "not open")
            )
        return self.lsn, self._wal.segment_start, self._wal.end, self._wal.last_record

    @property
    def archiving(self) -> bool:
        return self._archive is not None

    def seal_for_archive(self) -> tuple[int, int] | None:
        """On the archive's timer (durability.archive_timeout_s), on the shard's loop: seal the
        segment being written if it holds records, so the archive is never further behind than
        the timer; else (next_lsn, now) for `archive_heartbeat`, since nothing was logged since."""
        wal = self._wal
        if self._archive is None or wal is None or self._refusal is not None:
            return None
        if wal.end <= len(WAL_MAGIC):
            return wal.segment_start, self._clock.now_ms()
        self.sync()
        try:
            wal.rotate(self.lsn + 1, for_snapshot=False)
        except OSError as exc:  # the log is failed now: the next change finds it so and goes read-only
            where = {"directory": str(self.directory), "error": str(exc)}
            log.error("cannot seal the log segment", extra=where)
        return None

    def archive_heartbeat(self, next_lsn: int, as_of: int) -> None:
        """Blocking: record in the archive that nothing was logged after `next_lsn - 1` up to
        `as_of` (seal_for_archive's answer)."""
        if self._archive is None:
            return
        try:
            self._archive.heartbeat(next_lsn, as_of)
        except OSError as exc:
            where = {"directory": str(self.directory), "error": str(exc)}
            log.error("cannot write the archive's heartbeat", extra=where)

    def unarchived_segments(self) -> int | None:
        """Sealed segments the archive lacks (None: no archive): above zero for longer than a
        snapshot interval, the archive refuses them."""
        if self._archive is None or self._wal is None:
            return None
        return self._archive.missing(self.directory, self._wal.segment_start)

    def drop_segments(self, lsn: int) -> int:
        """Delete the segments that hold only records below `lsn`, but none the archive lacks."""
        archive = self._archive
        return self.writable_log().drop_segments_before(
            lsn, None if archive is None else (lambda path: not archive.holds(path))
        )

    def writable_log(self) -> WriteAheadLog:
        if self._wal is None:
            raise OSError(errno.EROFS, f"{self.directory}: the log is not open (the disk refused writes)")
        return self._wal

    @property
    def read_only(self) -> bool:
        return self._refusal is not None

    @property
    def takes_changes(self) -> bool:
        """Neither read-only nor drained: a change now would be logged."""
        return self._refusal is None and self._draining is None

    def _publish_condition(self) -> None:
        # The store answers pings (and so /readyz) with it; see SessionStore and MemoryStore.
        self.store.condition = self.condition
        # An export's cut names the last record written (SessionStore.log_position).
        self.store.log_position = lambda: self.lsn

    @property
    def condition(self) -> dict[str, Any]:
        """What /readyz shows of this shard beyond its size: read-only, drained, and what recovery
        found."""
        found: dict[str, Any] = {}
        if self._fenced:
            found["fenced"] = True
        elif self._refusal is not None:
            found["read_only"] = self._refusal.details.get("reason", True)
        if self._draining is not None:
            found["draining"] = True
        notes = self.recovery.notes
        if notes["damaged_snapshots"] or notes["cut_tails"]:
            found["recovery"] = notes
        return found

    def commit(self, ops: Sequence[Any]) -> list[Any]:
        """One result per op (an EngineError for one that failed). While the log cannot be written,
        every change is refused with Unavailable and reads are answered; the batch whose write
        failed is refused whole (its reads may have seen its changes). Raises LogWriteFailed only
        if the shard cannot rebuild itself."""
        now_ms = self._clock.now_ms()
        if self._refusal is not None:
            if self._fenced:
                return [self._refusal] * len(ops)  # its state may be behind the current incarnation's
            return self._answer_reads(ops, now_ms, self._refusal)
        if self._draining is not None:
            return self._answer_reads(ops, now_ms, self._draining)
        encoded: dict[int, bytes] = {}
        refused: dict[int, EngineError] = {}
        for i, op in enumerate(ops):
            if self.OPS.is_logged(op):
                try:
                    encoded[id(op)] = self.OPS.encode_bytes(op)
                except EngineError as exc:
                    refused[i] = exc
        applied = [op for i, op in enumerate(ops) if i not in refused] if refused else ops
        results: list[Any] = self.store.apply_batch(applied, now_ms)
        journal = self.store.take_journal()
        if journal:
            # The journal holds the batch's own op objects, each encoded above, or the part of one
            # that a store applied (SessionStore's MarkLive), encoded here.
            record = encode_record(
                self.lsn + 1, now_ms, [encoded.get(id(op)) or self.OPS.encode_bytes(op) for op in journal]
            )
            started = time.perf_counter()
            try:
                self.writable_log().commit(record, self._fsync)
            except LogWriteFailed as exc:
                return [self._go_read_only(exc)] * len(ops)
            if self.observe_commit is not None:
                self.observe_commit(time.perf_counter() - started, len(record))
            if not self.holds_epoch():
                return [self._fence()] * len(ops)  # written, never acknowledged; recovery cuts it
            self.lsn += 1
            self._logged(now_ms)
        if refused:
            answers = iter(results)
            results = [refused[i] if i in refused else next(answers) for i in range(len(ops))]
        return results

    def _logged(self, now_ms: int) -> None:
        """Record `lsn` is written: what waited for it may be seen now (a session shard's events)."""

    def sync(self) -> None:
        """For fsync=everysec: called about once a second."""
        if self._refusal is not None or self._wal is None:
            return
        try:
            self._wal.sync_pending()
        except LogWriteFailed as exc:
            self._go_read_only(exc)

    def drain(self, refusal: Unavailable | None) -> None:
        """Refuse every change with `refusal` (None: take changes again); reads are still answered."""
        self._draining = refusal
        self._publish_condition()

    def holds_epoch(self) -> bool:
        """Whether this incarnation may still write: no newer one has started on the directory."""
        return self._epoch is None or self._epoch.held()

    def check_epoch(self) -> None:
        """Before a snapshot deletes what it covers: OSError (the snapshot is abandoned, the log
        kept) if a newer incarnation has taken the directory over."""
        if not self.holds_epoch():
            self._fence()
            raise OSError(errno.ESTALE, f"{self.directory}: a newer incarnation of this shard took it over")

    def disk_status(self) -> dict[str, Any]:
        """For `session-engine status`: the epoch, the log's size, and how old the newest snapshot is."""
        log_bytes, newest = 0, None
        for entry in os.scandir(self.directory):
            if entry.name.startswith("wal-") and entry.name.endswith(".log"):
                log_bytes += entry.stat().st_size
            elif entry.name.endswith(".snap"):
                mtime = entry.stat().st_mtime
                newest = mtime if newest is None else max(newest, mtime)
        return {
            "directory": str(self.directory),
            "epoch": self.epoch,
            "lsn": self.lsn,
            "log_bytes": log_bytes,
            "unarchived_segments": self.unarchived_segments(),
            "snapshot_age_s": None if newest is None else round(time.time() - newest, 1),
            "state": "fenced"
            if self._fenced
            else "read-only"
            if self._refusal is not None
            else "draining"
            if self._draining is not None
            else "serving",
        }

    @property
    def epoch(self) -> int | None:
        return self._epoch.value if self._epoch is not None else None

    def _fence(self) -> Fenced:
        self._fenced = True
        self._refusal = Fenced(str(self.directory), self.epoch or 0)
        self._publish_condition()
        log.error(
            "a newer incarnation of this shard took over its directory; answering nothing more",
            extra={"directory": str(self.directory), "epoch": self.epoch},
        )
        return self._refusal

    def resume_writes(self) -> bool:
        """While read-only: try the disk again with an empty log record (the segment reopened and
        cut back to its last whole record, the record written and synced); True once it took it.
        A fenced incarnation never resumes."""
        if self._fenced:
            return False
        if self._refusal is None:
            return True
        if not self.holds_epoch():
            self._fence()
            return False
        if self._wal is None:
            self._start()  # a whole start, as at first: the state it recovers is the one it serves
            return self._refusal is None
        try:
            self._wal.reopen()
            self._wal.commit(encode_record(self.lsn + 1, self._clock.now_ms(), []), "always")
        except (OSError, LogWriteFailed):
            return False
        self.lsn += 1
        self._logged(self._clock.now_ms())
        self._refusal = None
        self._publish_condition()
        log.warning("the log is writable again; taking changes", extra={"directory": str(self.directory)})
        return True

    def _answer_reads(self, ops: Sequence[Any], now_ms: int, refusal: Unavailable) -> list[Any]:
        """While read-only: every change refused, the reads among `ops` answered."""
        results: list[Any] = [refusal] * len(ops)
        reads = [i for i, op in enumerate(ops) if isinstance(op, self.OPS.read_types)]
        if reads:
            answers = self.store.apply_batch([ops[i] for i in reads], now_ms)
            for i, answer in zip(reads, answers, strict=True):
                results[i] = answer
        return results

    def _go_read_only(self, failure: LogWriteFailed) -> Unavailable:
        """Rebuild the state from the files as they are up to the last acknowledged record, without
        changing them (the disk may refuse that too), and refuse changes from now on. Raises
        LogWriteFailed if the shard cannot rebuild itself."""
        log.error(
            "cannot write the log; rebuilding from disk and taking no changes until it can",
            extra={"directory": str(self.directory), "error": str(failure)},
        )
        self._refusal = unwritable_log(self.directory, failure)
        try:
            lsn = self._rebuild()
        except (OSError, CorruptFile) as exc:
            raise LogWriteFailed(
                f"cannot rebuild {self.directory} after a failed write: {exc}", str(exc)
            ) from exc
        if lsn != self.lsn:
            raise LogWriteFailed(
                f"{self.directory}: the log holds records up to {lsn} but {self.lsn} were written",
                "lost records",
            )
        self._publish_condition()
        return self._refusal
