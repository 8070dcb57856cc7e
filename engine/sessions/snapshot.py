"""A session shard's snapshots: the cursor that walks a consistent view of the store while it
goes on changing, and the file format (engine.storage.snapshot's parts).

`SessionStore.begin_snapshot()` gives a SnapshotCursor: a session about to change before the cursor
has reached it is copied first (copy-on-write), so a snapshot taken a chunk at a time between ops
is the state as of its start. The file: chunks of encoded sessions (engine.sessions.codec), then
chunks of idempotency records `{"idempotency": [...]}`, and a trailer `{"end": true, "sessions": n,
"feed": {...}}`, whose `feed` is what a restart needs to resume change feeds exactly
(engine.sessions.events.FeedAtSnapshot). It is in the trailer, which every version reads for its
count and nothing else, so an engine from before it reads these snapshots too; a snapshot without it
(written by such an engine) is read with every feed position before it refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile
from engine.idempotency import IdempotencyRecords
from engine.storage.layout import FORMAT_VERSION
from engine.storage.snapshot import SnapshotFile, open_snapshot

from .session import Session

SNAPSHOT_MAGIC = b"SESNP01\n"
SNAPSHOT_PREFIX = "snapshot-"


class SnapshotCursor:
    """Walks the sessions that existed when the snapshot began, a chunk at a time, each as it was then."""

    def __init__(
        self,
        live: Callable[[tuple[str, str]], Session | None],
        epoch: int,
        keys: list[tuple[str, str]],
        encode: Callable[[Session], Any],
        records: list[Any],
    ) -> None:
        self.epoch = epoch
        self.records = records  # the idempotency records as of the snapshot's start
        self.saved: dict[tuple[str, str], Session] = {}  # copies of sessions changed before being reached
        self._live = live  # the store's session of a key, as it is now
        self._keys = keys
        self._encode = encode
        self._position = 0

    @property
    def done(self) -> bool:
        """Every session is written (the idempotency records follow, see next_records)."""
        return self._position >= len(self._keys)

    def next_records(self, size: int) -> list[list[Any]]:
        """The next `size` idempotency records, encoded; empty once all are taken."""
        chunk = self.records[:size]
        del self.records[:size]
        return IdempotencyRecords.encode(chunk)

    def next_chunk(self, size: int, max_messages: int | None = None) -> list[Any]:
        """The next sessions, already encoded: encoding happens before any other op can run. At
        most `size` sessions, and no more once they hold `max_messages` messages (a session is
        never split, so one longer than that is a chunk of its own)."""
        chunk = []
        messages = 0
        for key in self._keys[self._position : self._position + size]:
            if max_messages is not None and messages >= max_messages:
                break
            self._position += 1
            session = self.saved.pop(key, None)
            if session is None:
                live = self._live(key)
                if live is None or live.snap_epoch >= self.epoch:
                    continue  # a copy was already written, or (impossible) it vanished uncopied
                live.snap_epoch = self.epoch
                session = live
            messages += len(session.messages)
            chunk.append(self._encode(session))
        return chunk


class SnapshotWriter:
    def __init__(self, directory: Path, lsn: int, now_ms: int) -> None:
        self._file = SnapshotFile(directory, SNAPSHOT_PREFIX, SNAPSHOT_MAGIC, FORMAT_VERSION, lsn, now_ms)
        self.lsn = lsn
        self.sessions = 0

    def add(self, encoded_sessions: list[Any]) -> None:
        if encoded_sessions:
            self._file.write(encoded_sessions)
            self.sessions += len(encoded_sessions)

    def add_records(self, encoded_records: list[Any]) -> None:
        if encoded_records:
            self._file.write({"idempotency": encoded_records})

    def finish(self, feed: dict[str, Any]) -> int:
        """Make the snapshot durable under its name, `feed` in its trailer; returns its size in
        bytes. Blocking I/O."""
        return self._file.finish({"sessions": self.sessions, "feed": feed})

    def abandon(self) -> None:
        self._file.abandon()


def read_snapshot(
    path: Path,
    on_records: Callable[[list[Any]], None] = lambda _: None,
    on_feed: Callable[[Any], None] = lambda _: None,
) -> tuple[int, Iterator[list[Any]]]:
    """(lsn, encoded sessions chunk by chunk); chunks of idempotency records go to `on_records` as
    they are read, and the trailer's `feed` (None in a snapshot without one) to `on_feed` once the
    sessions are read. Any damage, or a missing trailer, raises CorruptFile."""
    lsn, frames = open_snapshot(path, SNAPSHOT_MAGIC, FORMAT_VERSION)

    def chunks() -> Iterator[list[Any]]:
        count = 0
        for offset, payload in frames:
            record = orjson.loads(payload)
            if isinstance(record, dict) and "idempotency" in record:
                on_records(record["idempotency"])
                continue
            if isinstance(record, dict):
                if record.get("end") and record.get("sessions") == count:
                    on_feed(record.get("feed"))
                    return
                raise CorruptFile(path, offset, "snapshot trailer does not match its contents")
            count += len(record)
            yield record
        raise CorruptFile(path, path.stat().st_size, "snapshot ends without its trailer")

    return lsn, chunks()
