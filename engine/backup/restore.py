"""`session-engine restore BACKUP --data-dir NEW [--archive DIR] [--until EPOCH_MS]`: rebuild a data
directory from a backup (and the backups it is incremental from), replaying the log archive up to a
moment when one is given; and `session-engine check BACKUP`, which runs the same reading without
writing anything.

For each shard: the newest snapshot in the chain of backups, then its log records in order, taken
from the backups' log pieces and the archive's segments (engine.storage.archive), every file's
checksum verified on the way, each record from the first file that holds it. Records are written
into one new log segment after the snapshot, so the restored directory starts as any other, by
recovery, and memory comes back with its vectors: no re-embedding at the start.

Without the archive or `--until`, each shard comes back at its watermark in the newest backup (the
shards were cut sessions first, so what a session says of memory is there). With them, every shard
comes back at one moment: `--until`, or without it the latest moment up to which every shard's log
is complete (a backup is complete to when it cut the shard; an archived segment to when it was
sealed; the archive's heartbeat to when it found nothing more logged). Each shard stops before its
first record logged after that moment (a record's `ts`, its shard's clock when it was written). An
`--until` later than that moment is refused, naming the shard whose log ends first: a state that
mixes one shard's later records with another's earlier ones is not one the cluster was ever in.

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
import time
import uuid
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import CorruptFile
from engine.storage.archive import archived_segments, heartbeat_of
from engine.storage.frames import frame, read_frames
from engine.storage.identity import ShardIdentity, write_identity
from engine.storage.layout import FORMAT_VERSION, LAYOUT_FILE
from engine.storage.lock import fsync_directory, write_atomically
from engine.storage.private import make_directory, open_file
from engine.storage.wal import WAL_MAGIC, record_head, segment_path

from .folders import prepare_empty, undo
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
    until_ms: int | None = None  # the moment every shard was restored to (None: their watermarks)
    shards: list[ShardRestored] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "source_cluster_id": self.source_cluster_id,
            "backups": self.backups,
            "until_ms": self.until_ms,
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
    plans = _plans(backups, _archive_of(archive, newest.cluster_id))
    moment = _moment(plans, archive is not None, until_ms)
    made = prepare_empty(data_dir, "a restore")
    result = Restored(f"cl_{uuid.uuid4().hex}", newest.cluster_id, [m.backup_id for m in backups], moment)
    try:
        for plan in plans:
            target = data_dir / plan.entry.directory
            make_directory(target)
            restored, read = _replay(plan, moment, target)
            write_identity(target, ShardIdentity(result.cluster_id, plan.entry.kind, plan.entry.index))
            fsync_directory(target)
            fsync_directory(target.parent)
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
                "until_ms": moment,
                "archive": None if archive is None else str(archive.resolve()),
            },
        }
        write_atomically(data_dir / LAYOUT_FILE, orjson.dumps(layout))
        fsync_directory(data_dir)
    except BaseException as exc:
        undo(data_dir, made)
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
    result = Restored(newest.cluster_id, newest.cluster_id, [m.backup_id for m in backups])
    try:
        for plan in _plans(backups, _archive_of(archive, newest.cluster_id)):
            restored, read = _replay(plan, None, None)
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
    last: int
    path: Path
    checked: ShardFile | None  # a backup's file, with its checksum; None: the archive's
    complete_to: int  # ms: every record logged before is in it or before it (0: not known)
    prev_crc: int | None = None  # the checksum of the record before its first, where known


@dataclass(slots=True)
class _Plan:
    """What a shard is restored from, worked out from manifests and .sum files alone."""

    entry: ShardEntry  # the newest backup's
    name: str
    snapshot: Path | None
    snapshot_file: ShardFile | None
    snapshot_lsn: int
    sources: list[_Source]  # in order, each starting at or before the record after the last
    end: int  # the last record the sources hold without a gap
    complete_to: int  # ms: every record the shard logged before is in the sources
    known_crcs: dict[int, int]  # the checksums the backups recorded of their watermarks' records


def _plans(backups: list[Manifest], archive: Path | None) -> list[_Plan]:
    newest = backups[-1]
    expected = {("session", i) for i in range(newest.layout.get("shards", 0))}
    expected |= {("memory", i) for i in range(newest.layout.get("memory_shards", 0))}
    held = {s.key for s in newest.shards}
    if held != expected:
        missing = ", ".join(f"{k} shard {i}" for k, i in sorted(expected - held)) or "none"
        raise BackupRefused(f"{newest.path} does not hold every shard of its layout (missing: {missing})")
    return [_plan(backups, entry, archive) for entry in newest.shards]


def _plan(backups: list[Manifest], entry: ShardEntry, archive: Path | None) -> _Plan:
    name = f"{entry.kind} shard {entry.index}"
    entries: list[ShardEntry] = []
    for m in backups:
        e = m.shard(entry.kind, entry.index)
        if e is None:
            raise BackupRefused(f"{m.path} holds no {name}: its backups are of different layouts")
        entries.append(e)
    start = max(i for i, e in enumerate(entries) if e.snapshot_lsn is not None)
    base = backups[start].path / entries[start].directory
    snapshot_lsn = entries[start].snapshot_lsn or 0
    snapshot = next((f for f in entries[start].files if f.kind == "snapshot"), None)
    sources = [
        _Source(
            f.first_lsn or 0,
            f.last_lsn or 0,
            m.path / e.directory / f.name,
            f,
            e.cut_at if f.last_lsn == e.lsn else 0,
        )
        for m, e in zip(backups[start:], entries[start:], strict=True)
        for f in e.files
        if f.kind == "log"
    ]
    relative = Path(entry.directory)
    if archive is not None:
        for a in archived_segments(archive, backups[-1].cluster_id, relative):
            sources.append(_Source(a.first, a.last, a.path, None, a.sealed_at, a.prev_crc))
    sources.sort(key=lambda s: (s.first, -s.last))
    needed, end = [], snapshot_lsn
    for source in sources:
        if source.last <= end:
            continue  # every record it holds is in the snapshot or in a source before it
        if source.first > end + 1:
            raise BackupRefused(
                f"the log of {name} has a gap: records {end + 1} to {source.first - 1} are in neither "
                "the backups nor the archive"
            )
        needed.append(source)
        end = source.last
    if end < entries[-1].lsn:
        raise BackupRefused(
            f"the backup of {name} ends at record {end}, before its watermark {entries[-1].lsn}: "
            "a log file is missing"
        )
    complete_to = max(
        [e.cut_at for e in entries if e.lsn <= end] + [s.complete_to for s in sources if s.last <= end]
    )
    beat = heartbeat_of(archive, backups[-1].cluster_id, relative) if archive is not None else None
    if beat is not None and beat["next_lsn"] == end + 1:
        complete_to = max(complete_to, beat["as_of"])
    # A cut, a seal or a beat at millisecond T vouches for what was logged before it; a record of
    # the same millisecond may follow it, so the log is complete to T - 1.
    complete_to -= 1
    return _Plan(
        entry,
        name,
        None if snapshot is None else base / snapshot.name,
        snapshot,
        snapshot_lsn,
        needed,
        end,
        complete_to,
        {e.lsn: e.lsn_crc for e in entries if e.lsn_crc is not None},
    )


def _moment(plans: list[_Plan], archived: bool, until_ms: int | None) -> int | None:
    """The one moment every shard is restored to (None: each at its newest watermark)."""
    if not archived and until_ms is None:
        return None
    first = min(plans, key=lambda p: p.complete_to)
    if until_ms is None:
        return first.complete_to
    if until_ms > first.complete_to:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(first.complete_to / 1000))
        raise BackupRefused(
            f"the log of {first.name} is complete only up to {first.complete_to} ({when} UTC), before "
            f"--until {until_ms}; restore --until {first.complete_to} or earlier (an archived shard "
            "is complete to its last seal, at most durability.archive_timeout_s before the disk was lost)"
        )
    return until_ms


def _replay(plan: _Plan, until_ms: int | None, target: Path | None) -> tuple[ShardRestored, int]:
    """Copy a shard's snapshot and write its log after it into `target` (None: only read)."""
    read = 0
    if plan.snapshot is not None and plan.snapshot_file is not None:
        out_path = None if target is None else target / plan.snapshot_file.name
        read += _copy_verified(plan.snapshot, plan.snapshot_file, out_path)
        taken = _check_snapshot(plan.snapshot)
        if until_ms is not None and taken > until_ms:
            raise BackupRefused(
                f"the backup's snapshot of {plan.name} was taken at {taken}, after {until_ms}; "
                "restore from a backup taken before that moment"
            )
    expected, last_ts, records, from_archive, stopped = plan.snapshot_lsn + 1, None, 0, 0, False
    # Every record's checksum as it is written: a file that repeats a record, or continues one,
    # must agree with it, or it is of another history of the shard (a data directory rolled back or
    # copied, archiving beside the one it came from), which is refused, never spliced in.
    crcs = array("I")
    with _output(None if target is None else segment_path(target, plan.snapshot_lsn + 1)) as out:
        if out is not None:
            out.write(WAL_MAGIC)
        for source in plan.sources:
            checked = source.checked
            read += _copy_verified(source.path, checked, None) if checked else source.path.stat().st_size
            if source.first == expected and source.prev_crc is not None and crcs:
                _same_history(plan, source, expected - 1, crcs[-1], source.prev_crc)
            for payload in _records(source.path):
                lsn, ts = record_head(payload)
                if lsn > source.last:
                    break  # a fenced incarnation's tail, or past the backup's watermark
                if lsn < expected:
                    if lsn > plan.snapshot_lsn:
                        _same_history(
                            plan, source, lsn, crcs[lsn - plan.snapshot_lsn - 1], zlib.crc32(payload)
                        )
                    continue
                if lsn != expected:
                    raise CorruptFile(source.path, 0, f"log sequence jumps from {expected - 1} to {lsn}")
                if until_ms is not None and ts > until_ms:
                    stopped = True
                    break
                crc = zlib.crc32(payload)
                if lsn in plan.known_crcs:
                    _same_history(plan, source, lsn, plan.known_crcs[lsn], crc)
                crcs.append(crc)
                if out is not None:
                    out.write(frame(payload))
                expected, last_ts, records = lsn + 1, ts, records + 1
                from_archive += source.checked is None
            if stopped:
                break
            if expected <= source.last:
                raise CorruptFile(source.path, 0, f"holds records only to {expected - 1}, not {source.last}")
    entry = plan.entry
    restored = ShardRestored(
        entry.kind,
        entry.index,
        entry.directory,
        plan.snapshot_lsn,
        expected - 1,
        last_ts,
        records,
        from_archive,
        stopped,
    )
    return restored, read


def _same_history(plan: _Plan, source: _Source, lsn: int, kept: int, found: int) -> None:
    if kept != found:
        raise BackupRefused(
            f"{source.path} holds another history of {plan.name}: its record {lsn} is not the one the "
            "backups (or the archive's earlier segments) hold; was a data directory rolled back or "
            "copied, and archived beside the one it came from? Restore without --archive, or move "
            "that history's segments out of the archive"
        )


def _records(path: Path) -> Iterator[bytes]:
    for _, payload in read_frames(path, WAL_MAGIC):
        yield payload


def _check_snapshot(path: Path) -> int:
    """When a snapshot was taken (its header's `ts`), once every record of it reads back and the
    last is its trailer: a snapshot damaged on its shard before it was backed up has a checksum
    that matches, and is caught here."""
    with path.open("rb") as f:
        magic = f.read(len(WAL_MAGIC))  # every kind's magic line is as long as the log's
    first = last = b""
    for _, payload in read_frames(path, magic):
        first = first or payload
        last = payload
    try:
        taken = int(orjson.loads(first)["ts"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CorruptFile(path, len(magic), "the snapshot's header does not read") from None
    if not last.startswith(b'{"end":true'):
        raise CorruptFile(path, 0, "the snapshot has no trailer")
    return taken


def _copy_verified(path: Path, expected: ShardFile, target: Path | None) -> int:
    """Copy `path` to `target` (None: only read it), checking its size and checksum."""
    digest, size = hashlib.sha256(), 0
    with _output(target) as out, path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
        _compare(path, expected, size, digest.hexdigest())
    return size


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes] | None]:
    """A new file at `path` (None: nowhere, for a check), synced when the block ends well."""
    if path is None:
        yield None
        return
    with os.fdopen(open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


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
