"""Snapshot files `snapshot-<lsn>.snap`: a shard's whole state as of log record <lsn>.

Framed records: a header `{"format", "lsn", "ts"}`, chunks of encoded sessions, chunks of
idempotency records `{"idempotency": [...]}`, and a trailer `{"end": true, "sessions": n}`.
Written to a temporary file, fsynced, renamed into place and the directory fsynced, so a crash
never leaves a half snapshot under a snapshot's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile

from .codec import FORMAT_VERSION
from .frames import frame, read_frames
from .lock import fsync_directory

SNAPSHOT_MAGIC = b"SESNP01\n"
SNAPSHOT_PREFIX, _SUFFIX = "snapshot-", ".snap"


def snapshot_path(directory: Path, lsn: int, prefix: str = SNAPSHOT_PREFIX) -> Path:
    return directory / f"{prefix}{lsn:020d}{_SUFFIX}"


def snapshots(directory: Path, prefix: str = SNAPSHOT_PREFIX) -> list[tuple[int, Path]]:
    """(lsn, path) of every snapshot named `<prefix><lsn>.snap` in the directory, oldest first."""
    return sorted(
        (int(p.name[len(prefix) : -len(_SUFFIX)]), p) for p in directory.glob(f"{prefix}*{_SUFFIX}")
    )


class SnapshotWriter:
    def __init__(self, directory: Path, lsn: int, now_ms: int) -> None:
        self.lsn = lsn
        self.path = snapshot_path(directory, lsn)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("wb")
        self._file.write(SNAPSHOT_MAGIC)
        self._write({"format": FORMAT_VERSION, "lsn": lsn, "ts": now_ms})
        self.sessions = 0

    def _write(self, record: Any) -> None:
        self._file.write(frame(orjson.dumps(record)))

    def add(self, encoded_sessions: list[Any]) -> None:
        if encoded_sessions:
            self._write(encoded_sessions)
            self.sessions += len(encoded_sessions)

    def add_records(self, encoded_records: list[Any]) -> None:
        if encoded_records:
            self._write({"idempotency": encoded_records})

    def finish(self) -> int:
        """Make the snapshot durable under its name; returns its size in bytes. Blocking I/O."""
        self._write({"end": True, "sessions": self.sessions})
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        # fsync before rename so a crash never leaves half a snapshot under a snapshot's name.
        self._tmp.replace(self.path)
        fsync_directory(self.path.parent)
        return size

    def abandon(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def read_snapshot(
    path: Path, on_records: Callable[[list[Any]], None] = lambda _: None
) -> tuple[int, Iterator[list[Any]]]:
    """(lsn, encoded sessions chunk by chunk); chunks of idempotency records go to `on_records` as
    they are read. Any damage, or a missing trailer, raises CorruptFile."""
    frames = read_frames(path, SNAPSHOT_MAGIC)
    try:
        _, first = next(frames)
    except StopIteration:
        raise CorruptFile(path, len(SNAPSHOT_MAGIC), "snapshot has no header") from None
    header = orjson.loads(first)
    if header.get("format") != FORMAT_VERSION:
        raise CorruptFile(
            path, len(SNAPSHOT_MAGIC), f"snapshot format {header.get('format')} is not supported"
        )

    def chunks() -> Iterator[list[Any]]:
        count = 0
        for offset, payload in frames:
            record = orjson.loads(payload)
            if isinstance(record, dict) and "idempotency" in record:
                on_records(record["idempotency"])
                continue
            if isinstance(record, dict):
                if record.get("end") and record.get("sessions") == count:
                    return
                raise CorruptFile(path, offset, "snapshot trailer does not match its contents")
            count += len(record)
            yield record
        raise CorruptFile(path, path.stat().st_size, "snapshot ends without its trailer")

    return int(header["lsn"]), chunks()
