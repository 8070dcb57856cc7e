"""Snapshot files `<prefix><lsn>.snap`: a shard's whole state as of log record <lsn>, in the format
of its kind (engine.sessions.snapshot, engine.memory.snapshot), built from the same parts here.

A snapshot is framed records after a magic line: first a header `{"format", "lsn", "ts"}`, last a
trailer `{"end": true, ...}` that counts what came between. It is written to a temporary file,
fsynced, renamed into place and the directory fsynced, so a crash never leaves a half snapshot
under a snapshot's name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile, StartupError

from .frames import frame, read_frames
from .layout import newer_format
from .lock import fsync_directory
from .private import open_file

SUFFIX = ".snap"


def snapshot_path(directory: Path, lsn: int, prefix: str) -> Path:
    return directory / f"{prefix}{lsn:020d}{SUFFIX}"


def snapshots(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    """(lsn, path) of every snapshot named `<prefix><lsn>.snap` in the directory, oldest first."""
    return sorted((int(p.name[len(prefix) : -len(SUFFIX)]), p) for p in directory.glob(f"{prefix}*{SUFFIX}"))


@dataclass(slots=True, frozen=True)
class SnapshotResult:
    """What a snapshot of a shard of any kind cost and holds, for its log line and the metrics."""

    lsn: int
    bytes: int
    seconds: float
    longest_step_ms: float  # the longest the shard's loop was held up by this snapshot
    held: dict[str, int]  # what it holds, in its kind's words ("sessions"; "namespaces")

    def report(self) -> dict[str, Any]:
        return {
            "lsn": self.lsn,
            **self.held,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "longest_step_ms": self.longest_step_ms,
        }


class SnapshotFile:
    """A snapshot being written: its header at once, then records (JSON) and raw frames (bytes)."""

    def __init__(
        self, directory: Path, prefix: str, magic: bytes, format_version: int, lsn: int, now_ms: int
    ) -> None:
        self.lsn = lsn
        self.path = snapshot_path(directory, lsn, prefix)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        # Private from its first byte: the file holds every session's messages.
        self._file = os.fdopen(open_file(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")
        self._file.write(magic)
        self.write({"format": format_version, "lsn": lsn, "ts": now_ms})

    def write(self, record: Any) -> None:
        self._file.write(frame(orjson.dumps(record)))

    def write_bytes(self, payload: bytes) -> None:
        self._file.write(frame(payload))

    def finish(self, trailer: dict[str, Any]) -> int:
        """Write the trailer and make the snapshot durable under its name; returns its size in
        bytes. Blocking I/O."""
        self.write({"end": True, **trailer})
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        # fsync before rename so a crash never leaves half a snapshot under a snapshot's name.
        self._tmp.replace(self.path)
        fsync_directory(self.path.parent)
        return size

    def abandon(self) -> None:
        with contextlib.suppress(OSError):  # a disk that refused the writes may refuse the close too
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def open_snapshot(path: Path, magic: bytes, format_version: int) -> tuple[int, Iterator[tuple[int, bytes]]]:
    """(lsn, the frames after the header as (offset, payload)); a missing header or another
    format raises CorruptFile, as does any damage while the frames are read. A newer release's
    format raises StartupError instead: recovery must stop there, not pass the file over as
    damaged and serve an older state."""
    frames = read_frames(path, magic)
    first = next(frames, None)
    if first is None:
        raise CorruptFile(path, len(magic), "snapshot has no header")
    header = orjson.loads(first[1])
    if (refusal := newer_format(path, header.get("format"), format_version)) is not None:
        raise StartupError(refusal)
    if header.get("format") != format_version:
        raise CorruptFile(path, first[0], f"snapshot format {header.get('format')} is not supported")
    return int(header["lsn"]), frames
