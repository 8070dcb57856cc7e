"""`session-engine backup DEST [--incremental --from PREVIOUS]`: copy a consistent state of every
shard of a running cluster into DEST while it goes on taking writes.

Each shard is cut at its last log record, its watermark, and pins the files that hold that state
(engine.storage.backup); the backup then reads them out a piece at a time through the shard, so the
backup's process can run on any machine that reaches the cluster, and no shard pauses beyond the
step that pins its files. Session shards are cut before memory shards: what a session records of
memory (its turns indexed, its summary searchable) was written to memory before the session's
record of it, so a backup never holds a session that says it is indexed without the vectors that
make it so (a restored memory may hold vectors a session does not know of yet; its closing job runs
again and writes the same ones).

DEST gets the shards' files under their data-directory paths, the API keys file, and the manifest
(engine.backup.manifest), written last. A backup that fails, for any reason, removes what it wrote:
DEST is as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from engine.storage.lock import fsync_directory, write_atomically
from engine.storage.private import make_directory, open_file

from .folders import prepare_empty, undo
from .manifest import MANIFEST, BackupRefused, Manifest, ShardEntry, ShardFile, chain

# One read from a shard, written and synced before the next: it bounds the memory a piece in flight
# holds and the dirty pages a backup leaves for the disk to write back at once, which the shards'
# own log syncs would wait behind on the same disk (benchmarks/README.md#backup-restore-and-export).
READ_BYTES = 4 * 1024 * 1024
COPIES_AT_ONCE = 4  # pieces copied at once, across shards
KEEP_ALIVE_S = 60.0  # how often every shard waiting for its turn is told the backup goes on


class ShardSource(Protocol):
    """One shard, as the backup reaches it (engine.runtime.backups: through Ray)."""

    kind: str
    index: int
    directory: str  # its files' folder, relative to a data directory

    async def begin(self, backup_id: str, since_lsn: int | None, since_crc: int | None) -> dict[str, Any]: ...

    async def read(self, backup_id: str, piece: int, offset: int, size: int) -> bytes: ...

    async def end(self, backup_id: str) -> None: ...


@dataclass(slots=True, frozen=True)
class Taken:
    manifest: Manifest
    bytes: int
    seconds: float


async def take_backup(
    dest: Path,
    sources: Sequence[ShardSource],
    layout: dict[str, int],
    *,
    previous: Path | None = None,
    keys_file: Path | None = None,
    max_bytes_s: float | None = None,
) -> Taken:
    """Back every shard of `sources` up into `dest` (empty or new); incremental from the backup at
    `previous`; at most `max_bytes_s` bytes a second. Session shards are cut first, then memory
    shards (the module docstring says why). BackupRefused, in one line, when it cannot be made;
    `dest` is then as it was."""
    started = time.perf_counter()
    pace = Pace(max_bytes_s)  # refused before any shard is cut
    base = chain(previous)[-1] if previous is not None else None
    made = prepare_empty(dest, "a backup")
    backup_id = f"bk_{uuid.uuid4().hex}"
    started_at = int(time.time() * 1000)
    begun: list[tuple[ShardSource, dict[str, Any]]] = []
    try:
        for kind in ("session", "memory"):
            cut = [s for s in sources if s.kind == kind]
            answers = await asyncio.gather(
                *(s.begin(backup_id, *_since(base, s)) for s in cut), return_exceptions=True
            )
            begun += [(s, a) for s, a in zip(cut, answers, strict=True) if not isinstance(a, BaseException)]
            failed = [(s, a) for s, a in zip(cut, answers, strict=True) if isinstance(a, BaseException)]
            if failed:
                source, exc = failed[0]
                raise BackupRefused(f"{source.kind} shard {source.index} cannot be backed up: {_reason(exc)}")
        cluster_id = _one_cluster(begun, base)
        keeper = asyncio.create_task(_keep_alive(backup_id, begun))
        try:
            entries, copied = await _copy_all(dest, backup_id, begun, pace)
        finally:
            keeper.cancel()
        keys = _copy_keys(keys_file, dest) if keys_file is not None and keys_file.is_file() else None
        manifest = Manifest(
            path=dest,
            backup_id=backup_id,
            cluster_id=cluster_id,
            started_at=started_at,
            finished_at=int(time.time() * 1000),
            incremental_from=None
            if base is None
            else {"backup_id": base.backup_id, "path": str(base.path.resolve())},
            layout=layout,
            shards=tuple(entries),
            keys_file=keys,
        )
        write_atomically(dest / MANIFEST, orjson.dumps(manifest.as_dict(), option=orjson.OPT_INDENT_2))
        fsync_directory(dest)
    except BaseException as exc:
        undo(dest, made)
        if isinstance(exc, OSError):
            raise BackupRefused(f"cannot write the backup to {dest}: {exc.strerror or exc}") from None
        raise
    finally:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(s.end(backup_id) for s, _ in begun), return_exceptions=True)
    return Taken(manifest, copied, time.perf_counter() - started)


def _since(base: Manifest | None, source: ShardSource) -> tuple[int | None, int | None]:
    """The previous backup's watermark of this shard and its record's checksum."""
    if base is None:
        return None, None
    entry = base.shard(source.kind, source.index)
    if entry is None:
        raise BackupRefused(f"{base.path} has no {source.kind} shard {source.index}: it is of another layout")
    return entry.lsn, entry.lsn_crc


def _one_cluster(begun: list[tuple[ShardSource, dict[str, Any]]], base: Manifest | None) -> str:
    ids = {a["cluster_id"] for _, a in begun}
    if len(ids) != 1:
        raise BackupRefused(f"the shards belong to different clusters: {sorted(ids)}")
    (cluster_id,) = ids
    if base is not None and base.cluster_id != cluster_id:
        raise BackupRefused(
            f"{base.path} is a backup of cluster {base.cluster_id}, not of this one ({cluster_id}); "
            "take a full backup (without --from)"
        )
    return str(cluster_id)


async def _copy_all(
    dest: Path, backup_id: str, begun: list[tuple[ShardSource, dict[str, Any]]], pace: Pace
) -> tuple[list[ShardEntry], int]:
    gate = asyncio.Semaphore(COPIES_AT_ONCE)
    for source, _ in begun:
        make_directory(dest / source.directory)
    for parent in {(dest / source.directory).parent for source, _ in begun}:
        fsync_directory(parent)  # shards/ and memory/: their entries must survive a crash too

    async def one(source: ShardSource, index: int, piece: dict[str, Any]) -> ShardFile:
        async with gate:
            target = dest / source.directory / piece["name"]
            return await _copy_piece(target, source, backup_id, index, piece, pace)

    copies = [[one(source, i, piece) for i, piece in enumerate(answer["pieces"])] for source, answer in begun]
    done = await asyncio.gather(*(asyncio.gather(*shard) for shard in copies))
    entries = []
    for (source, answer), files in zip(begun, done, strict=True):
        fsync_directory(dest / source.directory)
        entries.append(
            ShardEntry(
                source.kind,
                source.index,
                source.directory,
                int(answer["lsn"]),
                answer["lsn_crc"],
                int(answer["cut_at"]),
                answer["snapshot_lsn"],
                int(answer["from_lsn"]),
                tuple(files),
            )
        )
    return entries, sum(f.bytes for files in done for f in files)


class Pace:
    """At most `max_bytes_s` bytes a second across every copy of a backup (None: as fast as the
    disks go), like pg_basebackup's --max-rate."""

    def __init__(self, max_bytes_s: float | None) -> None:
        if max_bytes_s is not None and not (0 < max_bytes_s < float("inf")):
            raise BackupRefused(
                f"a backup's pace must be a positive number of bytes a second, not {max_bytes_s}"
            )
        self._rate = max_bytes_s
        self._started = time.monotonic()
        self._sent = 0

    async def take(self, size: int) -> None:
        self._sent += size
        if self._rate is not None:
            ahead = self._sent / self._rate - (time.monotonic() - self._started)
            if ahead > 0:
                await asyncio.sleep(ahead)


def _write_synced(fd: int, offset: int, chunk: bytes) -> None:
    """Write a chunk, sync it, and let its pages go: a backup leaves no pile of dirty pages behind
    it, and does not push the shards' files out of the page cache."""
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]
    os.fdatasync(fd)
    os.posix_fadvise(fd, offset, len(chunk), os.POSIX_FADV_DONTNEED)


async def _copy_piece(
    target: Path, source: ShardSource, backup_id: str, index: int, piece: dict[str, Any], pace: Pace
) -> ShardFile:
    digest = hashlib.sha256()
    size = int(piece["bytes"])
    fd = open_file(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        offset = 0
        while offset < size:
            chunk = await source.read(backup_id, index, offset, min(READ_BYTES, size - offset))
            if not chunk:
                raise BackupRefused(
                    f"{source.kind} shard {source.index}: {piece['name']} ended at {offset} of {size} bytes"
                )
            digest.update(chunk)
            await asyncio.to_thread(_write_synced, fd, offset, chunk)
            offset += len(chunk)
            await pace.take(len(chunk))
        await asyncio.to_thread(os.fsync, fd)
    finally:
        os.close(fd)
    return ShardFile(
        piece["name"], piece["kind"], size, digest.hexdigest(), piece.get("first_lsn"), piece.get("last_lsn")
    )


async def _keep_alive(backup_id: str, begun: list[tuple[ShardSource, dict[str, Any]]]) -> None:
    """Every shard's staged files stay pinned while the copy works through the others: an empty
    read touches each one (engine.storage.backup lapses a backup nobody reads)."""
    while True:
        await asyncio.sleep(KEEP_ALIVE_S)
        await asyncio.gather(*(s.read(backup_id, 0, 0, 0) for s, _ in begun), return_exceptions=True)


def _copy_keys(keys_file: Path, dest: Path) -> ShardFile:
    content = keys_file.read_bytes()
    write_atomically(dest / "keys.json", content)
    return ShardFile("keys.json", "keys", len(content), hashlib.sha256(content).hexdigest())


def _reason(exc: BaseException) -> str:
    """An error's own message in one line (a Ray error carries its traceback before it)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    return (text.splitlines() or [type(exc).__name__])[-1]
