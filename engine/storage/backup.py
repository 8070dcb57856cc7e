"""A shard's side of an online backup: which of its files hold its state at one log record (the
watermark), pinned so that nothing the shard does meanwhile changes or deletes them, and read out a
piece at a time by the process writing the backup (engine.backup.take).

Files of a shard are immutable once written, except the log segment being written, which only
grows (and a sealed segment a fenced incarnation appends to, past where the next one begins: those
records were never acknowledged). So a backup cuts a shard at its last record without pausing it,
in one step of the shard's loop: it notes where the current segment's last whole record ends and
hard-links the newest snapshot and every segment into a staging folder inside the shard's
directory (the same file system, so a link is a metadata change). The shard goes on writing: a
snapshot that deletes an older file after that removes its name, not the staged link.

Then, in a thread (`StagedBackup.resolve`), it chooses the pieces by reading only record headers:
- an incremental backup (the previous backup's watermark and that record's checksum given) takes
  the records after the watermark, when the shard still holds them and its record at the
  watermark has the same checksum (else it is not the history that backup saw: a disk rolled
  back, or records lost under fsync everysec), and otherwise the snapshot and log again;
- a full one takes the newest snapshot and the log after it.
Each log piece holds whole records from `first_lsn` to `last_lsn` and nothing past the watermark.

A staging folder is removed when its backup ends, when it lies unread past BACKUP_IDLE_S (the
process copying it went, or stopped asking), and at the shard's next start.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ValidationFailed

from .frames import HEADER, frame_headers
from .snapshot import snapshots
from .wal import WAL_MAGIC, segment_path, segments

STAGING_PREFIX = "backup-"
BACKUP_IDLE_S = 600.0  # a staged backup unread this long is dropped
MAX_STAGED = 4  # backups staged on one shard at once


@dataclass(slots=True)
class Piece:
    """One file of the backup: bytes [start, end) of a staged file, after WAL_MAGIC when a log piece
    begins mid-segment. A log piece holds records first_lsn..last_lsn."""

    name: str
    kind: str  # "snapshot" or "log"
    staged: Path
    start: int
    end: int
    first_lsn: int | None = None
    last_lsn: int | None = None

    @property
    def prefix(self) -> bytes:
        return WAL_MAGIC if self.kind == "log" and self.start > 0 else b""

    @property
    def size(self) -> int:
        return len(self.prefix) + self.end - self.start

    def read(self, offset: int, size: int) -> bytes:
        """Blocking: `size` bytes (fewer at its end) of the piece from `offset`."""
        prefix = self.prefix
        head = prefix[offset : offset + size]
        body_from = self.start + max(0, offset - len(prefix))
        want = min(size - len(head), self.end - body_from)
        if want <= 0:
            return head
        with self.staged.open("rb") as f:
            f.seek(body_from)
            return head + f.read(want)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bytes": self.size,
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
        }


@dataclass(slots=True)
class _Segment:
    first: int
    link: Path
    stop: int  # where its whole records end (the current segment: where the cut was taken)
    boundary: int  # the next segment's first record: its records from there on are a fenced tail
    last_record: int | None = None  # the current segment: where its record at the cut begins


@dataclass(slots=True)
class StagedBackup:
    backup_id: str
    folder: Path
    lsn: int  # the watermark: the last record the pieces hold
    cut_at: int  # when it was cut (ms): every record logged before is at or below the watermark
    since_lsn: int | None
    since_crc: int | None
    snapshot: tuple[int, Path] | None  # the newest snapshot (lsn, staged link)
    staged: list[_Segment] = field(default_factory=list)
    snapshot_lsn: int | None = None  # the snapshot the backup holds (None: records only)
    from_lsn: int = 0  # the first record it holds
    lsn_crc: int | None = None  # the watermark record's checksum (None: no record in the log)
    pieces: list[Piece] = field(default_factory=list)
    touched: float = field(default_factory=time.monotonic)

    def resolve(self) -> None:
        """Blocking: choose the pieces (the module's docstring), reading record headers only."""
        watermark = self._locate(self.lsn)
        self.lsn_crc = watermark[2] if watermark is not None else None
        if self.since_lsn is not None and self.since_crc is not None and self.since_lsn <= self.lsn:
            found = self._locate(self.since_lsn)
            if found is not None and found[2] == self.since_crc:
                self.snapshot_lsn, self.from_lsn = None, self.since_lsn + 1
                self._log_from(self.since_lsn + 1)
                return
        snapshot_lsn = self.snapshot[0] if self.snapshot is not None else 0
        self.snapshot_lsn, self.from_lsn = snapshot_lsn, snapshot_lsn + 1
        if self.snapshot is not None:
            link = self.snapshot[1]
            self.pieces.append(Piece(link.name, "snapshot", link, 0, link.stat().st_size))
        self._log_from(snapshot_lsn + 1)

    def _log_from(self, lsn: int) -> None:
        """Log pieces of every record from `lsn` to the watermark."""
        for segment in self.staged:
            last = min(self.lsn, segment.boundary - 1)
            if last < lsn or segment.first > last:
                continue
            first = max(lsn, segment.first)
            start, end = self._span(segment, first, last)
            name = segment.link.name if first == segment.first else segment_path(Path(), first).name
            self.pieces.append(Piece(name, "log", segment.link, start, end, first, last))

    def _span(self, segment: _Segment, first: int, last: int) -> tuple[int, int]:
        """Byte span of records first..last of a segment (start 0 when from its first record)."""
        start = 0 if first == segment.first else None
        if start == 0 and segment.last_record is not None and last == segment.boundary - 1:
            return 0, segment.stop  # the current segment whole up to the cut: nothing to walk
        for i, (offset, length, _) in enumerate(frame_headers(segment.link, len(WAL_MAGIC), segment.stop)):
            lsn = segment.first + i
            if lsn == first and start is None:
                start = offset
            if lsn == last:
                return start or 0, offset + HEADER.size + length
        raise ValidationFailed(f"{segment.link.name} holds no records {first} to {last}")

    def _locate(self, lsn: int) -> tuple[int, int, int] | None:
        """(offset, length, crc) of record `lsn` in the staged log, or None if it holds none."""
        for segment in reversed(self.staged):
            if segment.last_record is not None and lsn == segment.boundary - 1:
                return _header_at(segment.link, segment.last_record)  # the record at the cut
            if segment.first <= lsn < segment.boundary:
                for i, header in enumerate(frame_headers(segment.link, len(WAL_MAGIC), segment.stop)):
                    if segment.first + i == lsn:
                        return header
                return None
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "lsn": self.lsn,
            "lsn_crc": self.lsn_crc,
            "cut_at": self.cut_at,
            "snapshot_lsn": self.snapshot_lsn,
            "from_lsn": self.from_lsn,
            "pieces": [p.describe() for p in self.pieces],
        }


class ShardBackups:
    """The backups being copied from one shard directory."""

    def __init__(self, directory: Path, snapshot_prefix: str) -> None:
        self._directory = directory
        self._prefix = snapshot_prefix
        self._staged: dict[str, StagedBackup] = {}
        for stale in directory.glob(f"{STAGING_PREFIX}*"):  # of a backup the shard's last run served
            shutil.rmtree(stale, ignore_errors=True)

    def begin(
        self,
        backup_id: str,
        lsn: int,
        sealed_before: int,
        end: int,
        last_record: int | None,
        since_lsn: int | None,
        since_crc: int | None = None,
        now_ms: int | None = None,
    ) -> StagedBackup:
        """Pin the files that hold the shard's state at record `lsn` (the segment being written,
        which starts at `sealed_before`, up to `end`, its last record at `last_record`: what
        LoggedStore.backup_point says). Quick, for the shard's loop; `resolve`, in a thread,
        chooses the pieces."""
        self.sweep()
        if len(self._staged) >= MAX_STAGED:
            raise ValidationFailed(
                f"{MAX_STAGED} backups are being copied from {self._directory.name} already",
                {"staged": len(self._staged)},
                "Wait for them to finish (or for an abandoned one to lapse) and start the backup again.",
            )
        if not _is_backup_id(backup_id) or backup_id in self._staged:
            raise ValidationFailed(f"{backup_id[:64]!r} is not a new backup id")
        if since_lsn is not None and since_lsn > lsn:
            raise ValidationFailed(
                f"{self._directory.name} is at record {lsn}, before the previous backup's {since_lsn}: "
                "that backup is not of this data",
                {"lsn": lsn, "since_lsn": since_lsn},
                "Take a full backup (without --from).",
            )
        folder = self._directory / f"{STAGING_PREFIX}{backup_id}"
        folder.mkdir(mode=0o700)
        try:
            found = snapshots(self._directory, self._prefix)
            newest = [(s, p) for s, p in found if s <= lsn][-1:]
            snapshot = (newest[0][0], _link(newest[0][1], folder)) if newest else None
            staged = StagedBackup(
                backup_id,
                folder,
                lsn,
                now_ms if now_ms is not None else int(time.time() * 1000),
                since_lsn,
                since_crc,
                snapshot,
            )
            log = [(first, path) for first, path in segments(self._directory) if first <= lsn]
            for i, (first, path) in enumerate(log):
                boundary = log[i + 1][0] if i + 1 < len(log) else sealed_before
                link = _link(path, folder)
                stop = end if first == sealed_before else link.stat().st_size
                if first < sealed_before:
                    staged.staged.append(_Segment(first, link, stop, boundary))
                else:  # the segment being written: its records end at the cut, the last at last_record
                    staged.staged.append(_Segment(first, link, stop, lsn + 1, last_record))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._staged[backup_id] = staged
        return staged

    def get(self, backup_id: str) -> StagedBackup:
        staged = self._staged.get(backup_id)
        if staged is None:
            raise ValidationFailed(
                f"no backup {backup_id[:64]!r} is being copied from {self._directory.name}",
                {"backup_id": backup_id[:64]},
                "It ended, or lapsed unread; start the backup again.",
            )
        staged.touched = time.monotonic()
        return staged

    def end(self, backup_id: str) -> None:
        staged = self._staged.pop(backup_id, None)
        if staged is not None:
            shutil.rmtree(staged.folder, ignore_errors=True)

    def end_all(self) -> None:
        for backup_id in list(self._staged):
            self.end(backup_id)

    def sweep(self, idle_s: float = BACKUP_IDLE_S) -> None:
        now = time.monotonic()
        for backup_id in [b for b, s in self._staged.items() if now - s.touched > idle_s]:
            self.end(backup_id)


def _header_at(path: Path, offset: int) -> tuple[int, int, int]:
    with path.open("rb") as f:
        f.seek(offset)
        length, crc = HEADER.unpack(f.read(HEADER.size))
    return offset, length, crc


def _link(path: Path, folder: Path) -> Path:
    target = folder / path.name
    os.link(path, target)
    return target


def _is_backup_id(backup_id: str) -> bool:
    return 0 < len(backup_id) <= 64 and all(c.isalnum() or c in "_-" for c in backup_id)
