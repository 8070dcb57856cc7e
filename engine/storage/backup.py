"""A shard's side of an online backup: which of its files hold its state at one log record (the
watermark), pinned so that nothing the shard does meanwhile changes or deletes them, and read out a
piece at a time by the process writing the backup (engine.backup.take).

Files of a shard are immutable once written, except the log segment being written, which only
grows. So a backup cuts a shard at its last record without pausing it: the newest snapshot, every
sealed segment after it, and the current segment up to where its last whole record ends. Each is
hard-linked into a staging folder inside the shard's directory (the same file system, so a link is
a metadata change) in one step of the shard's loop, and the shard goes on writing: a snapshot that
deletes an older file after that removes its name, not the staged link. An incremental backup takes
only the records after the previous backup's watermark, while the shard's segments still hold
them, and otherwise the snapshot and log again (a shard keeps one previous snapshot's segments).

A staging folder is removed when its backup ends, when it lies unused past BACKUP_IDLE_S (its
backup process died), and at the shard's next start.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ValidationFailed

from .frames import HEADER
from .snapshot import snapshots
from .wal import WAL_MAGIC, record_head, segment_path, segments

STAGING_PREFIX = "backup-"
BACKUP_IDLE_S = 600.0  # a staged backup unread this long is dropped: the process copying it went
MAX_STAGED = 4  # backups staged on one shard at once


@dataclass(slots=True)
class Piece:
    """One file of the backup: bytes [start, end) of a staged file, after WAL_MAGIC when a log piece
    begins mid-segment (an incremental's first piece: records from `from_lsn` on)."""

    name: str
    kind: str  # "snapshot" or "log"
    staged: Path
    start: int
    end: int
    from_lsn: int | None = None  # its first record, when it is not the staged segment's first

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
        return {"name": self.name, "kind": self.kind, "bytes": self.size}


@dataclass(slots=True)
class StagedBackup:
    backup_id: str
    folder: Path
    lsn: int  # the watermark: the last record the pieces hold
    snapshot_lsn: int | None  # the snapshot it holds (None: an incremental of log records only)
    from_lsn: int  # the first record its log pieces hold that a restore needs
    pieces: list[Piece] = field(default_factory=list)
    touched: float = field(default_factory=time.monotonic)

    def resolve(self) -> None:
        """Blocking: find where a piece that begins mid-segment begins (its first record's offset)."""
        for piece in self.pieces:
            if piece.from_lsn is not None and piece.start == 0:
                piece.start = _offset_of(piece.staged, piece.from_lsn, piece.end)

    def describe(self) -> dict[str, Any]:
        return {
            "lsn": self.lsn,
            "snapshot_lsn": self.snapshot_lsn,
            "from_lsn": self.from_lsn,
            "pieces": [p.describe() for p in self.pieces],
        }


def _offset_of(path: Path, lsn: int, end: int) -> int:
    """Where record `lsn` begins in a segment, reading only whole records before `end`."""
    with path.open("rb") as f:
        offset = len(WAL_MAGIC)
        f.seek(offset)
        while offset < end:
            length, _ = HEADER.unpack(f.read(HEADER.size))
            payload = f.read(length)
            if record_head(payload)[0] >= lsn:
                return offset
            offset += HEADER.size + length
    raise ValidationFailed(f"{path.name} holds no record {lsn} before offset {end}")


class ShardBackups:
    """The backups being copied from one shard directory."""

    def __init__(self, directory: Path, snapshot_prefix: str) -> None:
        self._directory = directory
        self._prefix = snapshot_prefix
        self._staged: dict[str, StagedBackup] = {}
        for stale in directory.glob(f"{STAGING_PREFIX}*"):  # of a backup the shard's last run served
            shutil.rmtree(stale, ignore_errors=True)

    def begin(
        self, backup_id: str, lsn: int, sealed_before: int, end: int, since_lsn: int | None
    ) -> StagedBackup:
        """Stage the files that hold the shard's state at record `lsn` (the segment being written,
        which starts at `sealed_before`, up to `end`): everything after `since_lsn` when its records
        are all still here, else the newest snapshot and the log after it. Quick, for the shard's loop;
        `StagedBackup.resolve` does the reading, in a thread."""
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
        found = [(first, path) for first, path in segments(self._directory) if first <= lsn]
        staged = StagedBackup(backup_id, self._directory / f"{STAGING_PREFIX}{backup_id}", lsn, None, lsn + 1)
        folder_made = False
        try:
            if since_lsn is not None and (since_lsn == lsn or (found and found[0][0] <= since_lsn + 1)):
                staged.from_lsn = since_lsn + 1
                if since_lsn < lsn:
                    start = max(i for i, (first, _) in enumerate(found) if first <= since_lsn + 1)
                    staged.folder.mkdir(mode=0o700)
                    folder_made = True
                    self._stage_log(staged, found[start:], sealed_before, end, since_lsn + 1)
            else:
                snapshot = [(s, p) for s, p in snapshots(self._directory, self._prefix) if s <= lsn][-1:]
                staged.snapshot_lsn = snapshot[0][0] if snapshot else 0
                staged.from_lsn = staged.snapshot_lsn + 1
                staged.folder.mkdir(mode=0o700)
                folder_made = True
                for _, path in snapshot:
                    link = _link(path, staged.folder)
                    staged.pieces.append(Piece(path.name, "snapshot", link, 0, link.stat().st_size))
                needed = [
                    (first, path)
                    for i, (first, path) in enumerate(found)
                    if i + 1 == len(found) or found[i + 1][0] > staged.from_lsn
                ]
                self._stage_log(staged, needed, sealed_before, end, None)
        except BaseException:
            if folder_made:
                shutil.rmtree(staged.folder, ignore_errors=True)
            raise
        self._staged[backup_id] = staged
        return staged

    def _stage_log(
        self,
        staged: StagedBackup,
        found: list[tuple[int, Path]],
        sealed_before: int,
        end: int,
        from_lsn: int | None,
    ) -> None:
        for i, (first, path) in enumerate(found):
            link = _link(path, staged.folder)
            stop = end if first == sealed_before else link.stat().st_size
            cut = from_lsn if i == 0 and from_lsn is not None and from_lsn > first else None
            name = segment_path(Path(), cut).name if cut is not None else path.name
            staged.pieces.append(Piece(name, "log", link, 0, stop, cut))

    def get(self, backup_id: str) -> StagedBackup:
        staged = self._staged.get(backup_id)
        if staged is None:
            raise ValidationFailed(
                f"no backup {backup_id[:64]!r} is being copied from {self._directory.name}",
                {"backup_id": backup_id[:64]},
                "It ended, or lapsed unused; start the backup again.",
            )
        staged.touched = time.monotonic()
        return staged

    def end(self, backup_id: str) -> None:
        staged = self._staged.pop(backup_id, None)
        if staged is not None:
            shutil.rmtree(staged.folder, ignore_errors=True)

    def sweep(self, idle_s: float = BACKUP_IDLE_S) -> None:
        now = time.monotonic()
        for backup_id in [b for b, s in self._staged.items() if now - s.touched > idle_s]:
            self.end(backup_id)

    def __len__(self) -> int:
        return len(self._staged)


def _link(path: Path, folder: Path) -> Path:
    target = folder / path.name
    os.link(path, target)
    return target


def _is_backup_id(backup_id: str) -> bool:
    return 0 < len(backup_id) <= 64 and all(c.isalnum() or c in "_-" for c in backup_id)
