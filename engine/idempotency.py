"""Idempotency keys: a retried write is answered from its first run instead of being applied again.

A client sends `Idempotency-Key: <key>` with a write. The gateway wraps the write's op in
`Idempotent`, with the key and a fingerprint of the request (method, path, body, If-Match), and
sends it to the store that holds the state: a session shard (scope: the session) or a memory shard
(scope: the organization). That store applies ops one at a time, so it needs no lock to decide:

- no record of (organization, scope, key): apply the op, keep its result as the record, and log
  the `Idempotent` op itself, so replay after a crash rebuilds the record with the state;
- a record with the same fingerprint: answer its result (`Replayed`), apply and log nothing;
- a record with another fingerprint: 409, the key was first used for a different request.

Records lapse after `retention_ms`; beyond `max_records` per store the oldest go first. They are
part of the store's snapshots. When a session is deleted its records keep only the key and the
fingerprint (`GONE` for the result): its content goes, and a retry is told the session is gone
instead of making it again. Replay applies a logged `Idempotent` op without looking its key up:
it was logged only because the lookup missed when it first ran.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.config import DurabilityConfig
from engine.errors import IdempotencyConflict

GONE = "gone"  # the result of a record whose session was deleted (a session write's result is never a str)
DEFAULT_RETENTION_MS = 24 * 3600 * 1000
DEFAULT_MAX_RECORDS = 1_000_000
MAX_KEY_CHARS = 255


@dataclass(slots=True, frozen=True)
class Idempotent:
    """Apply `op` once per (organization, scope, key); `fingerprint` names the request it came from."""

    key: str
    fingerprint: str
    op: Any


@dataclass(slots=True, frozen=True)
class Replayed:
    """The answer of an earlier run of the same request: nothing was applied this time."""

    value: Any


class Record(NamedTuple):
    fingerprint: str
    expires_at: int
    result: Any


RecordKey = tuple[str, str, str]  # (organization, scope, key)


class IdempotencyRecords:
    def __init__(
        self, retention_ms: int = DEFAULT_RETENTION_MS, max_records: int = DEFAULT_MAX_RECORDS
    ) -> None:
        self.retention_ms = retention_ms
        self.max_records = max_records
        # Insertion order is expiry order (one retention for all), so the oldest are first.
        self._records: OrderedDict[RecordKey, Record] = OrderedDict()
        self._by_scope: dict[tuple[str, str], set[str]] = {}

    @classmethod
    def from_config(cls, config: DurabilityConfig) -> IdempotencyRecords:
        return cls(round(config.idempotency_retention_s * 1000), config.idempotency_max_records)

    def empty_like(self) -> IdempotencyRecords:
        """No records, the same retention and bound."""
        return IdempotencyRecords(self.retention_ms, self.max_records)

    def __len__(self) -> int:
        return len(self._records)

    def find(self, org: str, scope: str, key: str, fingerprint: str, now_ms: int) -> Record | None:
        """The live record of this key, or None; a record of a different request raises."""
        record = self._records.get((org, scope, key))
        if record is None or record.expires_at <= now_ms:
            return None
        if record.fingerprint != fingerprint:
            raise IdempotencyConflict(key)
        return record

    def remember(self, org: str, scope: str, key: str, fingerprint: str, now_ms: int, result: Any) -> None:
        record_key = (org, scope, key)
        self._records.pop(record_key, None)  # a lapsed record of the same key: the new one goes last
        self._records[record_key] = Record(fingerprint, now_ms + self.retention_ms, result)
        self._by_scope.setdefault((org, scope), set()).add(key)
        self._drop_oldest(now_ms)

    def apply_once(
        self,
        once: Idempotent,
        scope: str,
        now_ms: int,
        *,
        replaying: bool,
        run: Callable[[], Any],
        replay: Callable[[Any], Any] = Replayed,
        keep: Callable[[Any], Any] = lambda result: result,
    ) -> Any:
        """The one rule for a write under a key, for every kind of store: a live record of the same
        request is answered (`replay` of what was kept), one of another request raises
        IdempotencyConflict; else `run` applies the op (and journals it, with the key) and `keep`
        of its result becomes the record. Replay of the log runs the op without a lookup."""
        org = once.op.org
        if not replaying:
            record = self.find(org, scope, once.key, once.fingerprint, now_ms)
            if record is not None:
                return replay(record.result)
        result = run()
        self.remember(org, scope, once.key, once.fingerprint, now_ms, keep(result))
        return result

    def forget_results(self, org: str, scope: str) -> int:
        """Keep only key and fingerprint of every record of one scope (a deleted session's), so a
        retry learns it is gone; returns how many."""
        keys = self._by_scope.get((org, scope), ())
        for key in keys:
            record = self._records[(org, scope, key)]
            self._records[(org, scope, key)] = record._replace(result=GONE)  # keeps its place in line
        return len(keys)

    def _drop_oldest(self, now_ms: int) -> None:
        records = self._records
        while records:
            record_key = next(iter(records))  # O(1) on an OrderedDict, unlike a dict with holes
            if records[record_key].expires_at > now_ms and len(records) <= self.max_records:
                return
            del records[record_key]
            org, scope, key = record_key
            scoped = self._by_scope[(org, scope)]
            scoped.discard(key)
            if not scoped:
                del self._by_scope[(org, scope)]

    # -- snapshots ----------------------------------------------------------------------------------

    def frozen(self) -> list[tuple[RecordKey, Record]]:
        """Every record as of now: records are immutable, so this list is a consistent copy."""
        return list(self._records.items())

    @staticmethod
    def encode(entries: Iterable[tuple[RecordKey, Record]]) -> list[list[Any]]:
        return [[org, scope, key, *record] for (org, scope, key), record in entries]

    def load(self, encoded: Iterable[list[Any]]) -> None:
        for org, scope, key, fingerprint, expires_at, result in encoded:
            self._records[(org, scope, key)] = Record(fingerprint, expires_at, result)
            self._by_scope.setdefault((org, scope), set()).add(key)

    def __iter__(self) -> Iterator[tuple[RecordKey, Record]]:
        return iter(self._records.items())
