"""Recovery that never guesses silently: the newest snapshot that reads whole, then every log record
after it, for both kinds of durable shard (sessions, vector memory).

- A damaged snapshot is passed over, with a warning, for the one before it (a shard keeps one
  previous snapshot and the log segments it needs); once recovery has succeeded the damaged file
  is set aside as `<name>.damaged`, so it is never chosen again.
- A damaged record at the log's tail (a torn write, or a whole record with a bad checksum) is cut
  off, and the cut bytes are first copied to `<segment>.<offset>.quarantine` beside the log. A torn
  write was never acknowledged (under fsync always); a whole record that does not read back may have
  been, and its note says so (`may_have_been_acknowledged`).
- Log segments whose records are all in the snapshot recovery starts from are not read: a shard
  keeps them only for the snapshot before it (the fallback), so damage there does not stop a start.
- Damage anywhere else, or a log that does not continue from the state a snapshot holds, refuses
  the start (CorruptFile naming file and offset): there is no consistent state to serve.

Everything found goes into RecoveryNotes: logged, shown by /readyz, printed by `session-engine
check`, which runs the same code without changing anything (`repair=False`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from engine.errors import CorruptFile, EngineError

from .snapshot import snapshots
from .wal import LogRecord, read_log

log = logging.getLogger(__name__)


class Replayable(Protocol):
    """A store recovery can fill: it applies logged ops as they were while `replaying`, and
    journals what it applies (which replay drops: those ops are in the log already)."""

    replaying: bool

    def take_journal(self) -> list[Any]: ...


S = TypeVar("S", bound=Replayable)
DAMAGED_SUFFIX = ".damaged"
# What reading a damaged snapshot can raise besides CorruptFile: bad JSON, a missing key, a wrong type.
SNAPSHOT_DAMAGE = (CorruptFile, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError)


@dataclass(slots=True)
class RecoveryNotes:
    """What recovery found and did, beyond reading: each a plain dict, for logs and JSON."""

    damaged_snapshots: list[dict[str, Any]] = field(default_factory=list)  # {file, reason, set_aside}
    cut_tails: list[dict[str, Any]] = field(default_factory=list)  # {file, offset, bytes, reason, quarantine}

    def as_dict(self) -> dict[str, Any]:
        return {"damaged_snapshots": self.damaged_snapshots, "cut_tails": self.cut_tails}

    def __bool__(self) -> bool:
        return bool(self.damaged_snapshots or self.cut_tails)


@dataclass(slots=True, frozen=True)
class Recovered:
    lsn: int  # the last record the state holds
    snapshot_lsn: int  # the snapshot it started from (0: none, the log from its first record)
    records_replayed: int
    notes: RecoveryNotes


@dataclass(slots=True, frozen=True)
class Recovery:
    """What a shard's start found and did, whatever its kind: for its log line and `status`."""

    snapshot_lsn: int  # 0: no snapshot
    records_replayed: int
    seconds: float
    notes: dict[str, Any]  # what it passed over, cut or quarantined (RecoveryNotes.as_dict)
    held: dict[str, int]  # what the store holds afterwards, in its kind's words ("sessions"; "vectors")

    def report(self) -> dict[str, Any]:
        """One flat dict: the log line's fields and `status`'s "recovered"."""
        return {
            "snapshot_lsn": self.snapshot_lsn,
            "records_replayed": self.records_replayed,
            **self.held,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def recover_state(
    directory: Path,
    snapshot_prefix: str,
    fresh: Callable[[], S],
    load_snapshot: Callable[[Path, S], int],
    apply_record: Callable[[S, LogRecord], None],
    *,
    until_lsn: int | None = None,
    repair: bool = True,
) -> tuple[S, Recovered]:
    """Rebuild a store: `fresh()` makes an empty one, `load_snapshot(path, store)` fills it from a
    snapshot and returns its LSN (raising on damage), `apply_record` replays one log record
    (raising EngineError if it does not apply).

    `until_lsn`: a running shard rebuilding itself after a failed write: reading stops there and
    nothing on disk changes. `repair=False`: `session-engine check`: nothing on disk changes."""
    changes = repair and until_lsn is None
    if changes:
        for leftover in directory.glob("*.tmp"):
            leftover.unlink()  # a snapshot that never finished; the log still has everything in it
    notes = RecoveryNotes()
    store, lsn, source = None, 0, "the log from its first record"
    damaged_lsn = 0  # the newest damaged snapshot's: the state must reach at least that far
    for snapshot_lsn, path in reversed(snapshots(directory, snapshot_prefix)):
        candidate = fresh()
        candidate.replaying = True
        try:
            lsn = load_snapshot(path, candidate)
        except SNAPSHOT_DAMAGE as exc:
            log.warning(
                "snapshot is damaged; falling back to the one before it",
                extra={"file": str(path), "reason": str(exc)},
            )
            notes.damaged_snapshots.append({"file": path.name, "reason": str(exc), "set_aside": None})
            damaged_lsn = max(damaged_lsn, snapshot_lsn)
            continue
        store, source = candidate, f"snapshot {path.name}"
        break
    if store is None:
        store = fresh()
        store.replaying = True
    snapshot_lsn, replayed = lsn, 0
    records = read_log(directory, after_lsn=lsn, until_lsn=until_lsn, repair=changes, notes=notes.cut_tails)
    for record in records:
        if record.lsn != lsn + 1:
            damaged = f" (newer snapshots are damaged: {_names(notes)})" if notes.damaged_snapshots else ""
            raise CorruptFile(
                directory, 0, f"log resumes at record {record.lsn}, but {source} ends at {lsn}{damaged}"
            )
        try:
            apply_record(store, record)
        except (EngineError, ValueError, TypeError, KeyError) as exc:  # refused, or not an op at all
            raise CorruptFile(directory, 0, f"record {record.lsn} does not replay: {exc}") from None
        lsn = record.lsn
        replayed += 1
    if lsn < damaged_lsn:
        raise CorruptFile(
            directory, 0, f"{_names(notes)} cannot be read and the log after {source} ends at record {lsn}"
        )
    if changes:
        for note in notes.damaged_snapshots:
            path = directory / note["file"]
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            path.replace(aside)
            note["set_aside"] = aside.name
    store.replaying = False
    store.take_journal()
    return store, Recovered(lsn, snapshot_lsn, replayed, notes)


def _names(notes: RecoveryNotes) -> str:
    return ", ".join(d["file"] for d in notes.damaged_snapshots)


def drop_covered(directory: Path, prefix: str, newest_lsn: int, drop_segments: Callable[[int], Any]) -> None:
    """After snapshot `newest_lsn` is durable: keep it and the one before it (the fallback should
    it ever read back damaged) and the log segments that one needs; delete what is older."""
    older = [lsn for lsn, _ in snapshots(directory, prefix) if lsn < newest_lsn]
    previous = max(older, default=0)  # 0: no earlier snapshot, so the log from its start is the fallback
    for lsn, path in snapshots(directory, prefix):
        if lsn < previous:
            path.unlink()
    drop_segments(previous + 1)


def iter_notes(notes: RecoveryNotes) -> Iterator[str]:
    """One line per thing recovery found, for people."""
    for d in notes.damaged_snapshots:
        aside = f", set aside as {d['set_aside']}" if d.get("set_aside") else ""
        yield f"damaged snapshot {d['file']} passed over ({d['reason']}){aside}"
    for c in notes.cut_tails:
        kept = f", the bytes kept in {c['quarantine']}" if c.get("quarantine") else ""
        lost = (
            "; the record was whole, so it may have been acknowledged: a change a client was told is "
            "stored may be lost (see 'What a quarantined record was' in docs/operations.md)"
            if c.get("may_have_been_acknowledged")
            else ""
        )
        yield f"cut {c['bytes']} bytes off {c['file']} at offset {c['offset']} ({c['reason']}){kept}{lost}"
