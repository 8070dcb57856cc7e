"""The log archive: with `durability.archive_dir` set, every sealed log segment of every shard is
copied there, synced, before the shard may delete it. It is PostgreSQL's `archive_command`, built
in: a backup plus the archive restores to any moment since the backup (engine.backup.restore).

The archive is laid out like a data directory, under the cluster's id, so that two clusters (or a
cluster restored from a backup, which gets a new id) never write to the same files:

    <archive_dir>/<cluster_id>/shards/shard-0000/wal-<first lsn>.log
    <archive_dir>/<cluster_id>/memory/memory-0000/wal-<first lsn>.log

A segment is sealed once a newer one is written after it: at each snapshot, and at a start (the
last segment of the incarnation before). The one being written reaches the archive when it seals,
so the archive is as recent as the shard's last snapshot; `snapshot_interval_s` bounds how old
that can be. A segment already in the archive at its full size is not copied again. A segment that
cannot be archived (the archive's disk full or gone) stays in the data directory, and is retried at
the next seal: the archive never has a hole that the data directory could have filled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from .identity import ShardIdentity
from .layout import memory_directory, shard_directory
from .lock import fsync_directory
from .private import make_directory, open_file
from .wal import WAL_MAGIC, segments

log = logging.getLogger(__name__)

_COPY_CHUNK = 8 * 1024 * 1024


def shard_path(identity: ShardIdentity) -> Path:
    """Where a shard's files are, relative to a data directory (and to a cluster's archive)."""
    place = shard_directory if identity.kind == "session" else memory_directory
    return place(Path(), identity.index)


class LogArchive:
    """One shard's folder in the archive."""

    def __init__(self, archive_dir: Path, identity: ShardIdentity) -> None:
        self.directory = archive_dir / identity.cluster_id / shard_path(identity)

    def holds(self, segment: Path) -> bool:
        """Whether `segment` is in the archive whole (same name, same size: a sealed segment never
        changes). An archive that cannot be read holds nothing: the segment is kept."""
        try:
            return (self.directory / segment.name).stat().st_size == segment.stat().st_size
        except OSError:
            return False

    def missing(self, directory: Path, sealed_before: int) -> int:
        """How many sealed segments with records are not in the archive yet."""
        return sum(
            1
            for first, path in segments(directory)
            if first < sealed_before and path.stat().st_size > len(WAL_MAGIC) and not self.holds(path)
        )

    def archive_sealed(self, directory: Path, sealed_before: int) -> int:
        """Copy every segment of `directory` that starts before `sealed_before` (the segment being
        written) and is not in the archive yet; returns how many it copied. Raises OSError when the
        archive cannot take one: the segments not copied stay where they are."""
        copied = 0
        for first, path in segments(directory):
            if first >= sealed_before or self.holds(path):
                continue
            if path.stat().st_size <= len(WAL_MAGIC):
                continue  # no record in it: nothing a restore could need
            if not self.directory.is_dir():
                make_directory(self.directory)
            _copy_synced(path, self.directory / path.name)
            copied += 1
        return copied


def _copy_synced(source: Path, target: Path) -> None:
    """`source` to `target`, whole: written to a temporary file, synced, renamed, the folder synced,
    so a crash never leaves part of a segment under a segment's name."""
    tmp = target.with_name(target.name + ".tmp")
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        fsync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def archived_segments(archive_dir: Path, cluster_id: str, relative: Path) -> list[tuple[int, Path]]:
    """(first lsn, path) of a shard's archived segments, oldest first."""
    folder = archive_dir / cluster_id / relative
    return segments(folder) if folder.is_dir() else []
