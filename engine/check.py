"""`session-engine check DATA_DIR`: verify a data directory offline and say what a start would do
with each shard directory: the snapshot it would use, the records it would replay, what it would
pass over, cut and quarantine, or why it would refuse to start. Nothing on disk is changed: this
runs the shards' own recovery with `repair=False`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile, StartupError
from engine.memory import durable as memory_durable
from engine.memory.index import IndexParams
from engine.memory.snapshot import SNAPSHOT_PREFIX as MEMORY_SNAPSHOT_PREFIX
from engine.sessions import durable as session_durable
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.identity import IDENTITY_FILE, ShardIdentity, read_epoch
from engine.storage.layout import FORMAT_VERSION, LAYOUT_FILE, newer_format, read_layout
from engine.storage.lock import lock_holder
from engine.storage.recovery import RecoveryNotes, iter_notes
from engine.storage.snapshot import snapshots
from engine.storage.wal import segments

# What `check` exits with: every directory consistent; some would be refused; all would start, but
# only after cutting, quarantining or passing over something.
CLEAN, REFUSED, REPAIRS = 0, 1, 3


@dataclass(slots=True)
class DirectoryReport:
    directory: Path
    kind: str  # "session shard", "memory shard", or "data directory" (refused whole)
    in_use: str | None = None  # a running engine holds the directory's lock
    snapshot_lsn: int = 0
    records_replayed: int = 0
    size: str = ""  # sessions, or namespaces and vectors
    notes: RecoveryNotes = field(default_factory=RecoveryNotes)
    refused: str | None = None
    identity: dict[str, Any] | None = None  # its IDENTITY file (engine.storage.identity), if any
    epoch: int = 0  # how many times a shard has started on it

    @property
    def verdict(self) -> int:
        if self.refused is not None:
            return REFUSED
        return REPAIRS if self.notes else CLEAN

    def lines(self) -> list[str]:
        head = f"{self.directory} ({self.kind})"
        out = [head]
        if self.in_use:
            out.append(f"  in use by a running engine ({self.in_use}): this reads the files as they are now")
        if self.refused is not None:
            out.append(f"  REFUSED: a start would stop here: {self.refused}")
            return out
        source = f"snapshot at record {self.snapshot_lsn}" if self.snapshot_lsn else "no snapshot"
        out.append(f"  ok: {source}, then {self.records_replayed} log records; {self.size}")
        whose = f"cluster {self.identity['cluster_id']}" if self.identity else "no IDENTITY file"
        out.append(f"  {whose}, epoch {self.epoch}")
        out.extend(f"  would {line}" for line in iter_notes(self.notes))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "kind": self.kind,
            "in_use": self.in_use,
            "verdict": {CLEAN: "clean", REFUSED: "refused", REPAIRS: "repairs"}[self.verdict],
            "snapshot_lsn": self.snapshot_lsn,
            "records_replayed": self.records_replayed,
            "size": self.size,
            "notes": self.notes.as_dict(),
            "refused": self.refused,
            "identity": self.identity,
            "epoch": self.epoch,
        }


def shard_directories(data_dir: Path) -> list[tuple[Path, str]]:
    found = [(path, "session shard") for path in sorted((data_dir / "shards").glob("shard-*"))]
    return found + [(path, "memory shard") for path in sorted((data_dir / "memory").glob("memory-*"))]


def check_directory(directory: Path, kind: str, cluster_id: str | None = None) -> DirectoryReport:
    report = DirectoryReport(directory, kind)
    report.in_use = lock_holder(directory)
    report.epoch = read_epoch(directory)
    with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
        report.identity = orjson.loads((directory / IDENTITY_FILE).read_bytes())
    index = directory.name.rsplit("-", 1)[-1]
    if report.identity is not None and cluster_id is not None and index.isdigit():
        # A shard starts only on a directory whose identity is exactly its own (verify_identity).
        own = ShardIdentity(cluster_id, kind.split()[0], int(index)).as_dict()
        if report.identity != own:
            report.refused = f"its IDENTITY names {report.identity}, not this shard ({own}, engine.json)"
            return report
    try:
        if kind == "session shard":
            _, _, found = session_durable.recover(directory, repair=False)
            report.size = f"{found.held['sessions']} sessions"
        else:
            _, _, found = memory_durable.recover(directory, IndexParams(), repair=False)
            report.size = f"{found.held['namespaces']} namespaces, {found.held['vectors']} vectors"
        lsn, replayed, notes = found.snapshot_lsn, found.records_replayed, found.notes
    except (CorruptFile, StartupError, OSError) as exc:  # StartupError: a newer release's snapshot
        report.refused = str(exc)
        return report
    report.snapshot_lsn, report.records_replayed = lsn, replayed
    report.notes = RecoveryNotes(**notes)
    return report


def check_data_dir(data_dir: Path) -> list[DirectoryReport]:
    """One report per shard directory under `data_dir`; none when it holds no shard data. A
    directory a newer release wrote gets one report, its refusal: a start reads no shard of it."""
    layout = read_layout(data_dir) or {}
    refusal = newer_format(data_dir / LAYOUT_FILE, layout.get("format"), FORMAT_VERSION)
    if refusal is not None:
        return [DirectoryReport(data_dir, "data directory", refused=refusal)]
    cluster_id = layout.get("cluster_id")
    return [
        check_directory(path, kind, cluster_id)
        for path, kind in shard_directories(data_dir)
        if _holds_data(path)
    ]


def _holds_data(directory: Path) -> bool:
    prefixes = (SNAPSHOT_PREFIX, MEMORY_SNAPSHOT_PREFIX)
    return bool(segments(directory)) or any(snapshots(directory, prefix) for prefix in prefixes)
