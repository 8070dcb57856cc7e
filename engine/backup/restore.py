"""`session-engine restore BACKUP --data-dir NEW [--archive DIR] [--until EPOCH_MS]`: rebuild a data
directory from a backup (and the backups it is incremental from), replaying the log archive up to a
moment when one is given; and `session-engine check BACKUP`, which runs the same reading without
writing anything.

For each shard: the newest snapshot in the chain of backups, then its log records in order, taken
from the backups' log pieces and the archive's segments (engine.storage.archive), every file's
checksum verified on the way. Records are written into one new log segment after the snapshot, so
the restored directory starts as any other, by recovery, and memory comes back with its vectors: no
re-embedding at the start. With `--until`, each shard stops before its first record logged after
that moment (a record's `ts`, the shard's clock when it was written).

The restored directory is a new cluster (a new cluster id, recorded with where it came from in
engine.json): its log begins a new history that must never be archived over the old one's.

It refuses, in one line and with nothing written, a target that is not empty, a backup that is
damaged or incomplete, an archive of another cluster, and a gap in the log (records that neither
the backups nor the archive hold, with later ones after them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import CorruptFile
from engine.storage.archive import archived_segments
from engine.storage.frames import HEADER, frame, read_frames
from engine.storage.identity import ShardIdentity, write_identity
from engine.storage.layout import FORMAT_VERSION, LAYOUT_FILE
from engine.storage.lock import fsync_directory, write_atomically
from engine.storage.private import make_directory, open_file
from engine.storage.wal import WAL_MAGIC, record_head, segment_path

from .manifest import BackupRefused, Manifest, ShardEntry, ShardFile, chain

_CHUNK = 8 * 1024 * 1024


@dataclass(slots=True)
class ShardRestored:
    kind: str
    index: int
    directory: str
    snapshot_lsn: int
    lsn: int  # the last record restored
    last_ts: int | None  # when it was logged (None: no record after the snapshot)
    records: int
    from_archive: int  # of them, read from the archive
    stopped_by_until: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "directory": self.directory,
            "snapshot_lsn": self.snapshot_lsn,
            "lsn": self.lsn,
            "last_ts": self.last_ts,
            "records": self.records,
            "from_archive": self.from_archive,
            "stopped_by_until": self.stopped_by_until,
        }


@dataclass(slots=True)
class Restored:
    cluster_id: str  # the restored directory's (new) cluster id
    source_cluster_id: str
    backups: list[str]  # the chain, oldest first
    shards: list[ShardRestored] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "source_cluster_id": self.source_cluster_id,
            "backups": self.backups,
            "shards": [s.as_dict() for s in self.shards],
            "seconds": round(self.seconds, 3),
            "bytes_read": self.bytes_read,
        }


def restore(
    backup: Path, data_dir: Path, *, archive: Path | None = None, until_ms: int | None = None
) -> Restored:
    """Rebuild `data_dir` (new or empty) from the backup at `backup`; BackupRefused, in one line,
    with `data_dir` as it was, when it cannot."""
    started = time.perf_counter()
    backups = chain(backup)
    newest = backups[-1]
    archive_root = _archive_of(archive, newest.cluster_id)
    made = _prepare_target(data_dir)
    result = Restored(f"cl_{uuid.uuid4().hex}", newest.cluster_id, [m.backup_id for m in backups])
    try:
        for entry in newest.shards:
            target = data_dir / entry.directory
            make_directory(target)
            restored, read = _restore_shard(backups, entry, archive_root, until_ms, target)
            write_identity(target, ShardIdentity(result.cluster_id, entry.kind, entry.index))
            fsync_directory(target)
            result.shards.append(restored)
            result.bytes_read += read
        if newest.keys_file is not None:
            content = _verified_bytes(newest.path / newest.keys_file.name, newest.keys_file)
            write_atomically(data_dir / "keys.json", content)
        layout = {
            "format": FORMAT_VERSION,
            "cluster_id": result.cluster_id,
            "created_at": int(time.time() * 1000),
            **newest.layout,
            "restored_from": {
                "cluster_id": newest.cluster_id,
                "backup_id": newest.backup_id,
                "backup": str(newest.path.resolve()),
                "until_ms": until_ms,
                "archive": None if archive is None else str(archive.resolve()),
            },
        }
        write_atomically(data_dir / LAYOUT_FILE, orjson.dumps(layout))
        fsync_directory(data_dir)
    except BaseException as exc:
        _undo(data_dir, made)
        if isinstance(exc, CorruptFile):
            raise BackupRefused(f"the backup is damaged: {exc}") from None
        if isinstance(exc, OSError):
            raise BackupRefused(f"cannot write {data_dir}: {exc.strerror or exc}") from None
        raise
    result.seconds = time.perf_counter() - started
    return result


def verify(backup: Path, archive: Path | None = None) -> Restored:
    """Read the backup (its chain, and the archive if given) as `restore` would, writing nothing:
    every checksum, every record, the log continuous from each snapshot to its watermark."""
    started = time.perf_counter()
    backups = chain(backup)
    newest = backups[-1]
    archive_root = _archive_of(archive, newest.cluster_id)
    result = Restored(newest.cluster_id, newest.cluster_id, [m.backup_id for m in backups])
    try:
        for entry in newest.shards:
            restored, read = _restore_shard(backups, entry, archive_root, None, None)
            result.shards.append(restored)
            result.bytes_read += read
        if newest.keys_file is not None:
            _verified_bytes(newest.path / newest.keys_file.name, newest.keys_file)
    except CorruptFile as exc:
        raise BackupRefused(f"the backup is damaged: {exc}") from None
    except OSError as exc:
        raise BackupRefused(f"cannot read the backup: {exc.strerror or exc} ({exc.filename})") from None
    result.seconds = time.perf_counter() - started
    return result


def _archive_of(archive: Path | None, cluster_id: str) -> Path | None:
    if archive is None:
        return None
    if not archive.is_dir():
        raise BackupRefused(f"the archive {archive} is not a folder")
    if not (archive / cluster_id).is_dir():
        held = sorted(p.name for p in archive.iterdir() if p.is_dir())
        raise BackupRefused(
            f"the archive {archive} holds no log of cluster {cluster_id}, the backup's "
            f"(it holds: {', '.join(held) or 'nothing'})"
        )
    return archive


@dataclass(slots=True)
class _Source:
    first: int
    path: Path
    checked: ShardFile | None  # a backup's file, with its checksum; None: the archive's
    origin: str  # the backup it is in, or "archive"
    ends_before: int | None = None  # its records from here on are a fenced incarnation's


def _restore_shard(
    backups: list[Manifest],
    entry: ShardEntry,
    archive: Path | None,
    until_ms: int | None,
    target: Path | None,
) -> tuple[ShardRestored, int]:
    """Copy one shard's snapshot and write its log after it into `target` (None: only read)."""
    name = f"{entry.kind} shard {entry.index}"
    entries = [(m, m.shard(entry.kind, entry.index)) for m in backups]
    missing = [m.path for m, e in entries if e is None]
    if missing:
        raise BackupRefused(f"{missing[0]} holds no {name}: its backups are of different layouts")
    start = max(i for i, (_, e) in enumerate(entries) if e is not None and e.snapshot_lsn is not None)
    base_manifest, base = entries[start]
    assert base is not None and base.snapshot_lsn is not None
    read = 0
    snapshot = [f for f in base.files if f.kind == "snapshot"]
    if snapshot:
        path = base_manifest.path / base.directory / snapshot[0].name
        taken = _snapshot_time(path)
        if until_ms is not None and taken > until_ms:
            raise BackupRefused(
                f"the backup's snapshot of {name} was taken at {taken}, after --until {until_ms}; "
                "restore from a backup taken before that moment"
            )
        read += _copy_verified(path, snapshot[0], None if target is None else target / snapshot[0].name)
        _check_snapshot(path)
    sources = []
    for manifest, e in entries[start:]:
        assert e is not None
        for f in e.files:
            if f.kind == "log":
                path = manifest.path / e.directory / f.name
                sources.append(_Source(_first_lsn(f.name), path, f, manifest.backup_id))
    if archive is not None:
        for first, path in archived_segments(archive, base_manifest.cluster_id, Path(entry.directory)):
            sources.append(_Source(first, path, None, "archive"))
    # Within one backup, or the archive, a segment ends where the next begins: records past that
    # were written by a fenced incarnation (engine.storage.wal.read_log cuts them the same way).
    # Across them, files overlap (the archive's whole segment and a backup's copy cut at its
    # watermark), so each record is taken from the first file in order that holds it.
    ordered = sorted(sources, key=lambda s: s.first)
    for i, source in enumerate(ordered):
        later = (s.first for s in ordered[i + 1 :] if s.origin == source.origin and s.first > source.first)
        source.ends_before = next(later, None)
    watermark = entries[-1][1].lsn  # type: ignore[union-attr]
    out: IO[bytes] | None = None
    if target is not None:
        out = os.fdopen(
            open_file(segment_path(target, base.snapshot_lsn + 1), os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb"
        )
        out.write(WAL_MAGIC)
    expected, last_ts, records, from_archive, stopped = base.snapshot_lsn + 1, None, 0, 0, False
    try:
        for source in ordered:
            if source.first > expected:
                raise BackupRefused(
                    f"the log of {name} has a gap: records {expected} to {source.first - 1} are in "
                    "neither the backups nor the archive"
                )
            read += _check_sum(source.path, source.checked) if source.checked else source.path.stat().st_size
            for payload in _records(source.path):
                lsn, ts = record_head(payload)
                if source.ends_before is not None and lsn >= source.ends_before:
                    break  # a fenced incarnation's record
                if lsn < expected:
                    continue
                if lsn != expected:
                    raise CorruptFile(source.path, 0, f"log sequence jumps from {expected - 1} to {lsn}")
                if until_ms is not None and ts > until_ms:
                    stopped = True
                    break
                if out is not None:
                    out.write(frame(payload))
                expected, last_ts, records = lsn + 1, ts, records + 1
                from_archive += source.checked is None
            if stopped:
                break
        if not stopped and expected - 1 < watermark:
            raise BackupRefused(
                f"the backup of {name} ends at record {expected - 1}, before its watermark {watermark}: "
                "a log file is missing"
            )
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return (
        ShardRestored(
            entry.kind,
            entry.index,
            entry.directory,
            base.snapshot_lsn,
            expected - 1,
            last_ts,
            records,
            from_archive,
            stopped,
        ),
        read,
    )


def _first_lsn(name: str) -> int:
    try:
        return int(name.removeprefix("wal-").removesuffix(".log"))
    except ValueError:
        raise BackupRefused(f"{name} is not a log segment's name") from None


def _records(path: Path) -> Iterator[bytes]:
    for _, payload in read_frames(path, WAL_MAGIC):
        yield payload


def _check_snapshot(path: Path) -> None:
    """Every record of a snapshot reads back, and the last is its trailer: a snapshot damaged on its
    shard before it was backed up has a checksum that matches, and is caught here."""
    with path.open("rb") as f:
        magic = f.read(len(WAL_MAGIC))
    last = b""
    for _, payload in read_frames(path, magic):
        last = payload
    if not last.startswith(b'{"end":true'):
        raise CorruptFile(path, 0, "the snapshot has no trailer")


def _snapshot_time(path: Path) -> int:
    """When a snapshot was taken: its header's `ts` (the first record after its magic line)."""
    with path.open("rb") as f:
        f.seek(len(WAL_MAGIC))  # every kind's magic line is as long as the log's
        length, _ = HEADER.unpack(f.read(HEADER.size))
        header = orjson.loads(f.read(length))
    return int(header["ts"])


def _check_sum(path: Path, expected: ShardFile) -> int:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    _compare(path, expected, size, digest.hexdigest())
    return size


def _copy_verified(path: Path, expected: ShardFile, target: Path | None) -> int:
    """Copy `path` to `target` (None: only read it), checking its size and checksum."""
    digest, size = hashlib.sha256(), 0
    out = None if target is None else os.fdopen(open_file(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        _compare(path, expected, size, digest.hexdigest())
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return size


def _verified_bytes(path: Path, expected: ShardFile) -> bytes:
    content = path.read_bytes()
    _compare(path, expected, len(content), hashlib.sha256(content).hexdigest())
    return content


def _compare(path: Path, expected: ShardFile, size: int, sha256: str) -> None:
    if size != expected.bytes or sha256 != expected.sha256:
        raise BackupRefused(
            f"the backup is damaged: {path} has {size} bytes and checksum {sha256[:12]}..., its manifest "
            f"says {expected.bytes} bytes and {expected.sha256[:12]}..."
        )


def _prepare_target(data_dir: Path) -> bool:
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupRefused(f"{data_dir} is not a folder")
        if any(data_dir.iterdir()):
            raise BackupRefused(f"{data_dir} is not empty: a restore goes into a new or empty folder")
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise BackupRefused(f"cannot write {data_dir}: permission denied")
        return False
    try:
        make_directory(data_dir)
    except OSError as exc:
        raise BackupRefused(f"cannot make {data_dir}: {exc.strerror or exc}") from None
    return True


def _undo(data_dir: Path, made: bool) -> None:
    if made:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for entry in list(data_dir.iterdir()) if data_dir.is_dir() else []:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
