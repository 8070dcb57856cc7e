"""The write-ahead log of one shard: segment files `wal-<first lsn>.log` of framed records.

A record is one applied batch: `{"lsn": n, "ts": now_ms, "ops": [...]}`; LSNs are consecutive.
Segments rotate when a snapshot begins, so once the snapshot is durable every older segment can go.

A write or sync that fails leaves the log closed and failed (see LogWriteFailed): the bytes of the
record that failed are cut off again where the disk allows, and `reopen` (which cuts them for sure)
is how a shard tries the disk again. A record with no ops is valid: it is how a shard proves the
disk takes writes again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile, LogWriteFailed, Unavailable

from .frames import TornTail, frame, quarantine, read_frames
from .lock import fsync_directory
from .private import open_file

log = logging.getLogger(__name__)

WAL_MAGIC = b"SEWAL01\n"
_SEGMENT_PREFIX, _SEGMENT_SUFFIX = "wal-", ".log"


@dataclass(slots=True, frozen=True)
class LogRecord:
    lsn: int
    now_ms: int
    ops: list[Any]  # encoded ops; see engine.sessions.codec


def segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"{_SEGMENT_PREFIX}{first_lsn:020d}{_SEGMENT_SUFFIX}"


def segments(directory: Path) -> list[tuple[int, Path]]:
    found = [
        (int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), p)
        for p in directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
    ]
    return sorted(found)


_RECORD_HEAD = re.compile(rb'\{"lsn":(\d+),"ts":(\d+),')


def record_head(payload: bytes) -> tuple[int, int]:
    """(lsn, ts) of a record's payload without decoding its ops: encode_record writes them first."""
    found = _RECORD_HEAD.match(payload)
    if found is not None:
        return int(found[1]), int(found[2])
    record = orjson.loads(payload)
    return int(record["lsn"]), int(record["ts"])


def encode_record(lsn: int, now_ms: int, ops: Sequence[bytes]) -> bytes:
    """A record of ops already encoded as JSON (each alone, so nothing here can fail to encode)."""
    return b'{"lsn":%d,"ts":%d,"ops":[%b]}' % (lsn, now_ms, b",".join(ops))


def read_log(
    directory: Path,
    after_lsn: int,
    until_lsn: int | None = None,
    *,
    repair: bool = True,
    notes: list[dict[str, Any]] | None = None,
) -> Iterator[LogRecord]:
    """Records with lsn > after_lsn, in order. A damaged tail of the last segment (a record cut
    short by a crash, or a whole one with a bad checksum) is cut off, its bytes first copied to a
    quarantine file beside the log (engine.storage.recovery), with a warning (an error if the record
    was whole: it may have been acknowledged), and reported in `notes`; damage anywhere else, or a
    gap in the LSNs, raises CorruptFile. Records of a segment at or past the next segment's first
    LSN, which only a fenced incarnation writes, are cut the same way.
    A segment whose records all come at or before `after_lsn` is not read at all: the snapshot
    recovery started from holds what they did, so damage in it cannot change what a start serves.

    `until_lsn` is for a shard rebuilding itself after a failed write: records after it were never
    acknowledged, so reading stops there, and nothing on disk is changed (the disk may refuse it).
    `repair=False` changes nothing on disk either, and only reports what it would cut."""
    found = segments(directory)
    expected = None
    for i, (_, path) in enumerate(found):
        last = i == len(found) - 1
        torn: list[TornTail] = []
        # A segment ends where the next one begins. Records past that were written by a stale
        # incarnation after a newer one had started (engine.storage.identity), never acknowledged.
        ends_before = None if last else found[i + 1][0]
        if ends_before is not None and ends_before <= after_lsn + 1:
            continue  # every record it holds is older than the snapshot's state: kept as a fallback only
        for offset, payload in read_frames(path, WAL_MAGIC, torn if last else None):
            try:
                record = orjson.loads(payload)
                lsn = record["lsn"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise CorruptFile(path, offset, "record is not a log entry") from None
            if ends_before is not None and lsn >= ends_before:
                torn.append(TornTail(offset, f"record {lsn} of a fenced (stale) incarnation"))
                break
            if expected is not None and lsn != expected:
                raise CorruptFile(path, offset, f"log sequence jumps from {expected - 1} to {lsn}")
            if until_lsn is not None and lsn > until_lsn:
                return
            expected = lsn + 1
            if lsn > after_lsn:
                yield LogRecord(lsn, record["ts"], record["ops"])
        if until_lsn is not None:
            continue
        for tail in torn:
            size = path.stat().st_size
            kept = quarantine(path, tail.offset) if repair else None
            note = {
                "file": path.name,
                "offset": tail.offset,
                "bytes": size - tail.offset,
                "reason": tail.reason,
                "quarantine": kept.name if kept is not None else None,
                # Cut short or a stale incarnation's: never acknowledged under fsync always. Whole but
                # not reading back: written whole, then changed on disk, perhaps after its 2xx.
                "may_have_been_acknowledged": tail.whole,
            }
            if notes is not None:
                notes.append(note)
            if not repair:
                continue
            if tail.whole:
                log.error(
                    "cut off a whole log record that does not read back (damage on disk?): it may have "
                    "been acknowledged, so a change a client was told is stored may be lost; its bytes "
                    "are in the quarantine file",
                    extra=note,
                )
            else:
                log.warning(
                    "cut off an unfinished log tail (a write a crash cut short, or a stale "
                    "incarnation's record); its bytes are in the quarantine file",
                    extra=note,
                )
            if tail.offset <= len(WAL_MAGIC):
                path.unlink()  # nothing intact in it; an empty segment would read as damage later
            else:
                os.truncate(path, tail.offset)


def unwritable_log(directory: Path, failure: LogWriteFailed) -> Unavailable:
    """What a shard that cannot write its log answers every change with, until the disk is back."""
    return Unavailable(
        f"{directory.name} cannot write to its disk ({failure.reason}), so it takes no changes for now; "
        "reads still work",
        {"shard_directory": directory.name, "reason": failure.reason, "read_only": True},
        "The disk under the data directory is full, read-only or failing: free space there (or fix "
        "the disk); the shard retries every second and takes changes again without a restart. Then "
        "retry with the same Idempotency-Key, which applies the change exactly once.",
    )


def disk_reason(exc: OSError) -> str:
    """What the disk said, e.g. 'No space left on device'."""
    return exc.strerror or str(exc)


def _write_all(fd: int, data: bytes) -> None:
    # A write cut short (the disk filled up, a file size limit) is finished or fails with the real
    # error, so the reason names the disk's problem, not "short write".
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the log write made no progress")
        view = view[written:]


class WriteAheadLog:
    def __init__(self, directory: Path, next_lsn: int, now_ms: Callable[[], int] | None = None) -> None:
        self._directory = directory
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        # When each segment this log opened was opened (by its first LSN): the one before it was
        # sealed then, so every record logged earlier is in it or before it (engine.storage.archive).
        self.opened_at: dict[int, int] = {}
        self._fd = -1
        self._unsynced = False
        self._segment_start = next_lsn
        self._end = 0  # where the last whole record written to the current segment ends
        self.failed = False  # a write or sync failed; nothing more is written until `reopen`
        self._failure = "the log is not open"  # what the disk said when it last failed
        self.bytes_since_rotation = 0
        self.last_record: int | None = None  # where the current segment's last whole record begins
        self._open_segment(next_lsn, at_start=True)

    def commit(self, payload: bytes, fsync: str) -> None:
        """One record under an fsync policy: `always` syncs before returning; `everysec` and
        `never` leave it to `sync_pending` (called once a second) or to the OS."""
        if self.failed or self._fd < 0:
            raise LogWriteFailed(f"the log in {self._directory} is not open for writing", self._failure)
        start = self._end
        try:
            self.append(payload)
            if fsync == "always":
                self.sync()
            else:
                self._unsynced = True
        except OSError as exc:
            self._fail(disk_reason(exc), keep=start)  # this record was never acknowledged: cut it off
            raise LogWriteFailed(
                f"cannot write the log in {self._directory}: {exc}", disk_reason(exc)
            ) from exc
        self.last_record = start

    def sync_pending(self) -> None:
        if self._unsynced and not self.failed:
            try:
                self.sync()
            except OSError as exc:
                self._fail(disk_reason(exc), keep=self._end)  # acknowledged (fsync everysec or never): kept
                raise LogWriteFailed(
                    f"cannot sync the log in {self._directory}: {exc}", disk_reason(exc)
                ) from exc
            self._unsynced = False

    def _fail(self, reason: str, keep: int) -> None:
        """Close the log after a failed write. What was written after `keep` is cut off now if the
        disk allows it, and by `reopen` before anything else is written."""
        self.failed, self._failure = True, reason
        self._end = keep
        try:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
        except OSError as exc:
            log.warning("cannot cut off a failed log write yet", extra={"error": str(exc)})
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        self._unsynced = False

    def reopen(self) -> None:
        """After a failure: open the segment that was being written again and cut it back to its
        last whole record; raises OSError while the disk still refuses."""
        if not self.failed:
            return
        fd = os.open(segment_path(self._directory, self._segment_start), os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size < self._end:
                raise OSError(errno.EIO, f"the log segment lost data: {size} bytes, {self._end} written")
            if size > self._end:
                os.ftruncate(fd, self._end)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self.failed = False

    def _open_segment(self, first_lsn: int, *, at_start: bool = False) -> None:
        """A new segment file, put in place whole. At a start it replaces an empty segment of the
        same name: a stale incarnation of this shard that still holds that file open (see
        engine.storage.identity) then writes into a file no one reads. At a rotation it never
        replaces anything, so a stale incarnation cannot swap out the current one's segment."""
        path = segment_path(self._directory, first_lsn)
        if at_start and path.exists() and path.stat().st_size > len(WAL_MAGIC):
            raise OSError(errno.EEXIST, f"{path} already holds records; recovery should have read them")
        fresh = path.with_name(path.name + ".new")
        fd = open_file(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC)
        linked = False
        try:
            _write_all(fd, WAL_MAGIC)
            os.fsync(fd)
            if at_start:
                fresh.replace(path)
            else:
                os.link(fresh, path)  # EEXIST if the segment is there already
                linked = True
                fresh.unlink()
            fsync_directory(self._directory)  # the new segment's name must survive a crash too
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                fresh.unlink()  # a stray segment would read as damage later
            if linked:
                # The log goes on in the old segment (`reopen`): a new one left beside it would make
                # recovery cut those records as a fenced incarnation's.
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        self._fd, self._segment_start = fd, first_lsn
        self.last_record = None
        self.opened_at[first_lsn] = self._now_ms()
        self._end = len(WAL_MAGIC)
        self.bytes_since_rotation = 0

    def append(self, payload: bytes) -> None:
        data = frame(payload)
        _write_all(self._fd, data)
        self._end += len(data)
        self.bytes_since_rotation += len(data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def rotate(self, next_lsn: int, *, for_snapshot: bool = True) -> None:
        """Start a new segment at next_lsn; the old one is complete and synced. If that fails, the
        log is failed (OSError raised) and `reopen` goes back to the old segment. A rotation that is
        not a snapshot's (the archive's timer) keeps counting the bytes since the last snapshot's."""
        if self.failed or self._fd < 0:
            raise OSError(errno.EIO, f"the log in {self._directory} is not open for writing")
        if next_lsn == self._segment_start:
            return  # the current segment holds no record yet: it already starts there
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(disk_reason(exc), keep=self._end)
            raise
        os.close(self._fd)
        self._fd = -1
        written = self.bytes_since_rotation
        try:
            self._open_segment(next_lsn)
            if not for_snapshot:
                self.bytes_since_rotation = written
        except OSError as exc:
            # _segment_start and _end still name the old segment, which `reopen` goes back to.
            self.failed, self._failure = True, disk_reason(exc)
            raise
        self._unsynced = False

    def drop_segments_before(self, lsn: int, keep: Callable[[Path], bool] | None = None) -> int:
        """Delete segments that hold only records below lsn (never the one being written, nor one
        `keep` holds on to: a segment not yet archived)."""
        dropped = 0
        for first, path in segments(self._directory):
            if first < lsn and first != self._segment_start and not (keep is not None and keep(path)):
                path.unlink()
                dropped += 1
        kept = {first for first, _ in segments(self._directory)}
        self.opened_at = {first: at for first, at in self.opened_at.items() if first in kept}
        return dropped

    @property
    def segment_start(self) -> int:
        """The first LSN of the segment being written: every segment before it is sealed."""
        return self._segment_start

    @property
    def end(self) -> int:
        """Where the last whole record of the segment being written ends: a copy taken up to here
        holds whole records only, however many are written after."""
        return self._end

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
