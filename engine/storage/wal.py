"""The write-ahead log of one shard: segment files `wal-<first lsn>.log` of framed records.

A record is one applied batch: `{"lsn": n, "ts": now_ms, "ops": [...]}`; LSNs are consecutive.
Segments rotate when a snapshot begins, so once the snapshot is durable every older segment can go.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .frames import CorruptFile, TornTail, frame, read_frames
from .lock import fsync_directory

log = logging.getLogger(__name__)

WAL_MAGIC = b"SEWAL01\n"
_SEGMENT_PREFIX, _SEGMENT_SUFFIX = "wal-", ".log"


@dataclass(slots=True, frozen=True)
class LogRecord:
    lsn: int
    now_ms: int
    ops: list[Any]  # encoded ops; see engine.storage.codec


def segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"{_SEGMENT_PREFIX}{first_lsn:020d}{_SEGMENT_SUFFIX}"


def segments(directory: Path) -> list[tuple[int, Path]]:
    found = [
        (int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), p)
        for p in directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
    ]
    return sorted(found)


def encode_record(lsn: int, now_ms: int, ops: list[Any]) -> bytes:
    return orjson.dumps({"lsn": lsn, "ts": now_ms, "ops": ops})


def read_log(directory: Path, after_lsn: int) -> Iterator[LogRecord]:
    """Records with lsn > after_lsn, in order. A torn tail of the last segment is cut off (with a
    warning); damage anywhere else, or a gap in the LSNs, raises CorruptFile."""
    found = segments(directory)
    expected = None
    for i, (_, path) in enumerate(found):
        last = i == len(found) - 1
        torn: list[TornTail] = []
        for offset, payload in read_frames(path, WAL_MAGIC, torn if last else None):
            try:
                record = orjson.loads(payload)
                lsn = record["lsn"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise CorruptFile(path, offset, "record is not a log entry") from None
            if expected is not None and lsn != expected:
                raise CorruptFile(path, offset, f"log sequence jumps from {expected - 1} to {lsn}")
            expected = lsn + 1
            if lsn > after_lsn:
                yield LogRecord(lsn, record["ts"], record["ops"])
        for tail in torn:
            log.warning(
                "cutting off a torn log tail",
                extra={"file": str(path), "offset": tail.offset, "reason": tail.reason},
            )
            if tail.offset <= len(WAL_MAGIC):
                path.unlink()  # nothing intact in it; an empty segment would read as damage later
            else:
                os.truncate(path, tail.offset)


class LogWriteFailed(Exception):
    """The log could not be written or synced. The batch was not acknowledged; the shard must exit
    and be rebuilt from disk, since its memory now holds changes the disk does not."""


class WriteAheadLog:
    def __init__(self, directory: Path, next_lsn: int) -> None:
        self._directory = directory
        self._fd = -1
        self._unsynced = False
        self.bytes_since_rotation = 0
        self._open_segment(next_lsn)

    def commit(self, payload: bytes, fsync: str) -> None:
        """One record under an fsync policy: `always` syncs before returning; `everysec` and
        `never` leave it to `sync_pending` (called once a second) or to the OS."""
        try:
            self.append(payload)
            if fsync == "always":
                self.sync()
            else:
                self._unsynced = True
        except OSError as exc:
            raise LogWriteFailed(f"cannot write the log in {self._directory}: {exc}") from exc

    def sync_pending(self) -> None:
        if self._unsynced:
            try:
                self.sync()
            except OSError as exc:
                raise LogWriteFailed(f"cannot sync the log in {self._directory}: {exc}") from exc
            self._unsynced = False

    def _open_segment(self, first_lsn: int) -> None:
        path = segment_path(self._directory, first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segment_start = first_lsn
        if os.fstat(self._fd).st_size == 0:
            os.write(self._fd, WAL_MAGIC)
            os.fsync(self._fd)
            fsync_directory(self._directory)  # the new segment's name must survive a crash too
        self.bytes_since_rotation = 0

    def append(self, payload: bytes) -> None:
        data = frame(payload)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to the log: {written} of {len(data)} bytes")
        self.bytes_since_rotation += written

    def sync(self) -> None:
        os.fsync(self._fd)

    def rotate(self, next_lsn: int) -> None:
        """Start a new segment at next_lsn; the old one is complete and synced."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._open_segment(next_lsn)

    def drop_segments_before(self, lsn: int) -> int:
        """Delete segments that hold only records below lsn (never the one being written)."""
        dropped = 0
        for first, path in segments(self._directory):
            if first < lsn and first != self._segment_start:
                path.unlink()
                dropped += 1
        return dropped

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
