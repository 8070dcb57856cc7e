"""The log archive: with `durability.archive_dir` set, every sealed log segment of every shard is
copied there, synced, before the shard may delete it. It is PostgreSQL's `archive_command`, built
in: a backup plus the archive restores to any moment since the backup (engine.backup.restore).

The archive is laid out like a data directory, under the cluster's id, so that two clusters (or a
cluster restored from a backup, which gets a new id) never write to the same files:

    <archive_dir>/<cluster_id>/shards/shard-0000/wal-<first lsn>.log        the segment's records
    <archive_dir>/<cluster_id>/shards/shard-0000/wal-<first lsn>.log.sum    what it holds (below)
    <archive_dir>/<cluster_id>/shards/shard-0000/current.json               the latest heartbeat

A segment is sealed once a newer one is opened after it: at each snapshot, at a start (the last
segment of the incarnation before), and every `durability.archive_timeout_s` while it holds
records. Only its records up to the next segment's first LSN are archived (a fenced incarnation's
tail past that was never acknowledged), and its `.sum` says which records those are (`first`,
`last`), their bytes and SHA-256, and `sealed_at`: every record logged before that moment is in
this segment or an earlier one. While the segment being written holds no record, the shard writes
`current.json` ({"next_lsn", "as_of"}) on the same timer instead: nothing was logged after
`next_lsn - 1` up to `as_of`. A restore uses both to know up to which moment each shard's log is
complete.

A segment is archived once: a shard remembers which of its segments (by name and inode) the
archive holds, checked by content, and an archive that holds different bytes under the same name
(a data directory rolled back, or copied) is never overwritten: the segment stays in the data
directory, counted in `unarchived_segments`, and the log says why. A segment the archive cannot
take (its disk full or gone) also stays, and is tried again at the next seal.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .frames import HEADER, frame_headers
from .identity import ShardIdentity
from .layout import memory_directory, shard_directory
from .lock import fsync_directory, write_atomically
from .private import make_directory, open_file
from .wal import WAL_MAGIC, segments

log = logging.getLogger(__name__)

SUM_SUFFIX = ".sum"
HEARTBEAT = "current.json"
_COPY_CHUNK = 8 * 1024 * 1024


def shard_path(identity: ShardIdentity) -> Path:
    """Where a shard's files are, relative to a data directory (and to a cluster's archive)."""
    place = shard_directory if identity.kind == "session" else memory_directory
    return place(Path(), identity.index)


@dataclass(slots=True, frozen=True)
class Archived:
    """One archived segment, as its `.sum` describes it."""

    path: Path
    first: int
    last: int
    bytes: int
    sha256: str
    sealed_at: int
    last_crc: int | None = None  # the checksum of its last record
    prev_crc: int | None = None  # of the record before its first, in the log it was sealed from

    def as_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "sealed_at": self.sealed_at,
            "last_crc": self.last_crc,
            "prev_crc": self.prev_crc,
        }


class ArchiveConflict(OSError):
    """The archive holds other bytes under a segment's name."""


class LogArchive:
    """One shard's folder in the archive."""

    def __init__(self, archive_dir: Path, identity: ShardIdentity) -> None:
        self.directory = archive_dir / identity.cluster_id / shard_path(identity)
        # The segments the archive holds, by name and what the file system says of the file (inode,
        # size, modification time): a file replaced or changed since is checked again by its content.
        self._held: set[tuple[str, int, int, int]] = set()
        self._refused: set[tuple[str, int, int, int]] = set()  # conflicts already logged
        self._lock = threading.Lock()  # a snapshot's thread and the timer's may archive at once

    def holds(self, segment: Path) -> bool:
        """Whether the archive holds `segment`'s records (as checked by `archive_sealed`): cheap,
        for the shard's loop."""
        try:
            return _key(segment) in self._held
        except OSError:
            return False

    def missing(self, directory: Path, sealed_before: int) -> int:
        """How many sealed segments with records the archive does not hold yet."""
        count = 0
        for first, path in segments(directory):
            try:
                has_records = path.stat().st_size > len(WAL_MAGIC)
            except OSError:
                continue
            if first < sealed_before and has_records and not self.holds(path):
                count += 1
        return count

    def archive_sealed(self, directory: Path, sealed_before: int, opened_at: Mapping[int, int]) -> int:
        """Copy the records of every segment of `directory` that starts before `sealed_before` (the
        segment being written) and is not archived yet; returns how many it copied. `opened_at`:
        when the log opened each segment (WriteAheadLog.opened_at), the moment the one before it
        was sealed. Raises OSError when the archive cannot take one: it and later ones stay."""
        with self._lock:
            found = segments(directory)
            names = {path.name for _, path in found}
            self._held = {key for key in self._held if key[0] in names}  # of segments still here
            copied = 0
            for i, (first, path) in enumerate(found):
                if first >= sealed_before:
                    break
                key = _key(path)
                if key in self._held or path.stat().st_size <= len(WAL_MAGIC):
                    continue
                boundary = found[i + 1][0] if i + 1 < len(found) else sealed_before
                before = found[i - 1] if i > 0 and found[i - 1][0] < first else None
                try:
                    prev_crc = self._last_crc(before[1], before[0], first) if before is not None else None
                    if self._archive_one(path, first, boundary, opened_at.get(boundary), prev_crc):
                        copied += 1
                except ArchiveConflict as exc:
                    if key not in self._refused:
                        self._refused.add(key)
                        log.error(
                            "the archive holds other records under this segment's name (was the data "
                            "directory rolled back or copied?); the segment stays in the data directory",
                            extra={"segment": str(path), "archive": str(self.directory), "error": str(exc)},
                        )
                    continue
                self._held.add(key)
            return copied

    def _last_crc(self, path: Path, first: int, boundary: int) -> int | None:
        """The checksum of a segment's last record before `boundary`: from its `.sum` when the
        archive holds the segment (checked by content), else from its record headers."""
        if _key(path) in self._held:
            recorded = read_sum(self.directory / (path.name + SUM_SUFFIX))
            if recorded is not None and recorded.last == boundary - 1:
                return recorded.last_crc
        return _records_before(path, first, boundary)[1]

    def _archive_one(
        self, path: Path, first: int, boundary: int, sealed_at: int | None, prev_crc: int | None
    ) -> bool:
        """Archive one sealed segment's records before `boundary`; False when the archive held them."""
        end, last_crc, count = _records_before(path, first, boundary)
        digest = _sha256(path, end)
        target = self.directory / path.name
        summary = self.directory / (path.name + SUM_SUFFIX)
        recorded = read_sum(summary)
        if recorded is not None or target.exists():
            if recorded is not None and (recorded.sha256, recorded.bytes) == (digest, end):
                return False
            if recorded is None and target.stat().st_size == end and _sha256(target, end) == digest:
                pass  # copied, but the process stopped before its .sum: write the .sum below
            else:
                raise ArchiveConflict(f"{target} holds other records than {path}")
        else:
            self._make_folder()
            _copy_synced(path, target, end)
        when = sealed_at if sealed_at is not None else int(path.stat().st_mtime * 1000)
        entry = Archived(target, first, first + count - 1, end, digest, when, last_crc, prev_crc)
        write_atomically(summary, orjson.dumps(entry.as_dict()))
        fsync_directory(self.directory)
        return True

    def _make_folder(self) -> None:
        """The shard's folder, and its parents' entries synced: a segment synced into a folder
        whose own name a crash loses is lost with it."""
        if self.directory.is_dir():
            return
        make_directory(self.directory)
        for folder in list(self.directory.parents)[:3]:  # shards/, <cluster_id>/, the archive
            fsync_directory(folder)

    def heartbeat(self, next_lsn: int, as_of: int) -> None:
        """The segment being written held no record at `as_of`: nothing was logged after
        `next_lsn - 1` up to then."""
        with self._lock:
            self._make_folder()
            write_atomically(self.directory / HEARTBEAT, orjson.dumps({"next_lsn": next_lsn, "as_of": as_of}))


def _key(path: Path) -> tuple[str, int, int, int]:
    # Not the inode's change time: a backup's hard link changes it, not the file's bytes.
    found = path.stat()
    return path.name, found.st_ino, found.st_size, found.st_mtime_ns


def _records_before(path: Path, first: int, boundary: int) -> tuple[int, int | None, int]:
    """Where a segment's records before `boundary` end, the checksum of the last of them, and how
    many there are (a fenced incarnation's tail past `boundary` was never acknowledged)."""
    end, crc, count = len(WAL_MAGIC), None, 0
    for offset, length, record_crc in frame_headers(path, len(WAL_MAGIC), path.stat().st_size):
        if first + count >= boundary:
            break
        end, crc, count = offset + HEADER.size + length, record_crc, count + 1
    return end, crc, count


def _sha256(path: Path, end: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        left = end
        while left > 0 and (chunk := f.read(min(_COPY_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _copy_synced(source: Path, target: Path, end: int) -> None:
    """The first `end` bytes of `source` to `target`, whole: written to a temporary file of its
    own, synced, renamed, the folder synced, so a crash never leaves part of a segment under a
    segment's name."""
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            left = end
            while left > 0 and (chunk := src.read(min(_COPY_CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        fsync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_sum(path: Path) -> Archived | None:
    try:
        found = orjson.loads(path.read_bytes())
        return Archived(
            path.with_name(path.name.removesuffix(SUM_SUFFIX)),
            int(found["first"]),
            int(found["last"]),
            int(found["bytes"]),
            str(found["sha256"]),
            int(found["sealed_at"]),
            found.get("last_crc"),
            found.get("prev_crc"),
        )
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # a damaged .sum: the segment is checked again and the .sum written again


def archived_segments(archive_dir: Path, cluster_id: str, relative: Path) -> list[Archived]:
    """A shard's archived segments with their `.sum`, oldest first (one without it, a copy whose
    process stopped before its .sum, is left out: the shard archives it again)."""
    folder = archive_dir / cluster_id / relative
    if not folder.is_dir():
        return []
    found = (read_sum(path.with_name(path.name + SUM_SUFFIX)) for _, path in segments(folder))
    return [entry for entry in found if entry is not None]


def heartbeat_of(archive_dir: Path, cluster_id: str, relative: Path) -> dict[str, int] | None:
    try:
        found = orjson.loads((archive_dir / cluster_id / relative / HEARTBEAT).read_bytes())
        return {"next_lsn": int(found["next_lsn"]), "as_of": int(found["as_of"])}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
