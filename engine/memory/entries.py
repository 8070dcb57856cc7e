"""A namespace's entries, kept compact: for each FAISS id, its external id, metadata and text, and
the inverted index of scalar metadata values that filters pick candidates from.

Session memory holds a million turns in a shard, so a Python object per field per entry would
weigh more than the vectors. Each live entry is one tuple in a dict keyed by FAISS id:
`(external id, text as UTF-8 bytes or None, the metadata's keys, *its values)`. A dict, not a list
indexed by id: ids are never reused, so a list would keep a slot for every id ever issued, and
what walks the entries would cost as much. FAISS ids are handed out in increasing order, so the
dict's own order is ascending. String values are interned with `sys.intern` (a session's turns
share their session id; Python frees an interned string nobody holds), and key tuples are shared
through a count of the entries using each, dropped with its last one. A read builds
the metadata's dict and keeps the latest few thousand it built, since a query reads the same hits
several times: a dict read is shared, never to be changed. A postings list holding one entry is
that FAISS id itself, not a set.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

Row = tuple[Any, ...]  # (external id, text bytes | None, keys, *values)
_Posting = int | set[int]
_CACHED = 8192  # metadata dicts kept from reads; all are dropped when it is full


def _posting_value(value: Any) -> Any:
    """The key of a value in its postings: the type is part of it so that true, 1 and 1.0 are
    different values, as in JSON (strings and ints stand for themselves: they never equal each
    other or a tuple). None for a value that has no postings (a list, an object)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if value is None or isinstance(value, bool | float):
        return (type(value).__name__, value)
    return None


class Entries:
    def __init__(self) -> None:
        self._rows: dict[int, Row] = {}  # FAISS id -> row, live entries only, in increasing id order
        self._internal: dict[str, int] = {}  # external id -> FAISS id
        self._postings: dict[str, dict[Any, _Posting]] = {}  # key -> posting value -> FAISS ids
        self._shapes: dict[tuple[str, ...], list[Any]] = {}  # key tuple -> [the shared one, entries using it]
        self.texts = 0  # live entries with a text
        # FAISS id -> the metadata of an entry read lately. Dicts of plain values only, which the
        # garbage collector does not track: a cache that held tuples would hand it a long-lived
        # object at every read, and so full collections, which visit every entry, while queries run.
        self._read: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._internal)

    def __contains__(self, faiss_id: int) -> bool:
        return faiss_id in self._rows

    def __iter__(self) -> Iterator[int]:
        """The live FAISS ids, in increasing order."""
        return iter(self._rows)

    def faiss_id(self, external: str) -> int | None:
        return self._internal.get(external)

    # -- writes -------------------------------------------------------------------------------------

    def add(self, faiss_id: int, external: str, metadata: dict[str, Any], encoded: bytes | None) -> None:
        """`faiss_id` above every id added before (the order iteration relies on); `encoded`: the
        text as UTF-8 (encoded by the caller before it changes anything, since encoding can fail)."""
        assert not self._rows or faiss_id > next(reversed(self._rows)), "FAISS ids go up"
        keys = self._shape(tuple(metadata))
        values = [sys.intern(v) if type(v) is str else v for v in metadata.values()]
        self._rows[faiss_id] = (external, encoded, keys, *values)
        self._internal[external] = faiss_id
        self.texts += encoded is not None
        for key, value in zip(keys, values, strict=True):
            posting = _posting_value(value)
            if posting is None:
                continue
            of_key = self._postings.setdefault(key, {})
            held = of_key.get(posting)
            if held is None:
                of_key[posting] = faiss_id
            elif isinstance(held, set):
                held.add(faiss_id)
            else:
                of_key[posting] = {held, faiss_id}

    def remove(self, external: str) -> tuple[int, bool] | None:
        """Forget an entry; (its FAISS id, whether it had a text), or None if it is not here."""
        faiss_id = self._internal.pop(external, None)
        if faiss_id is None:
            return None
        row = self._rows.pop(faiss_id)
        self._release(row[2])
        self._read.pop(faiss_id, None)
        had_text = row[1] is not None
        self.texts -= had_text
        for key, value in zip(row[2], row[3:], strict=True):
            posting = _posting_value(value)
            if posting is None:
                continue
            of_key = self._postings[key]
            held = of_key[posting]
            if isinstance(held, set):
                held.discard(faiss_id)
                if len(held) == 1:
                    of_key[posting] = next(iter(held))
            else:
                del of_key[posting]
                if not of_key:
                    del self._postings[key]
        return faiss_id, had_text

    def _shape(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """The shared tuple equal to `keys`, counted once more."""
        held = self._shapes.get(keys)
        if held is None:
            keys = tuple(sys.intern(key) if type(key) is str else key for key in keys)
            held = self._shapes[keys] = [keys, 0]
        held[1] += 1
        shared: tuple[str, ...] = held[0]
        return shared

    def _release(self, keys: tuple[str, ...]) -> None:
        held = self._shapes[keys]
        held[1] -= 1
        if not held[1]:
            del self._shapes[keys]

    # -- reads --------------------------------------------------------------------------------------

    def entry(self, faiss_id: int) -> tuple[str, dict[str, Any]] | None:
        """(external id, metadata) of a live entry; the metadata is shared: not to be changed."""
        row = self._rows.get(faiss_id)
        if row is None:
            return None
        read = self._read.get(faiss_id)
        if read is None:
            if len(self._read) >= _CACHED:
                self._read.clear()
            read = self._read[faiss_id] = dict(zip(row[2], row[3:], strict=True))
        return row[0], read

    def text(self, faiss_id: int) -> str | None:
        row = self._rows.get(faiss_id)
        return None if row is None or row[1] is None else str(row[1].decode())

    def metadata(self, faiss_id: int) -> dict[str, Any]:
        """A live entry's metadata, not kept (a filter's scan reads many once)."""
        read = self._read.get(faiss_id)
        if read is not None:
            return read
        row = self._rows[faiss_id]
        return dict(zip(row[2], row[3:], strict=True))

    def posting(self, key: str, value: Any) -> set[int]:
        """The FAISS ids whose metadata `key` equals `value`: the postings' own set, not to change."""
        posting = _posting_value(value)
        held = self._postings.get(key, {}).get(posting) if posting is not None else None
        if held is None:
            return set()
        return held if isinstance(held, set) else {held}

    def frozen(self) -> Records:
        """The live entries as they are now, for a snapshot: a shallow copy of the rows (they are
        immutable tuples), turned into records later, off the shard's thread."""
        return Records(dict(self._rows))

    def with_text(self) -> Iterator[tuple[int, str]]:
        for faiss_id, row in self._rows.items():
            if row[1] is not None:
                yield faiss_id, str(row[1].decode())


class Records:
    """Entries frozen for a snapshot. `to_list` makes the header's records, `[FAISS id, external
    id, metadata, text]` as JSON (no text: three items), the format every engine has written."""

    def __init__(self, rows: dict[int, Row]) -> None:
        self._rows = rows

    def to_list(self) -> list[tuple[Any, ...]]:
        """Tuples, not lists: the garbage collector stops tracking a tuple of plain values, so a
        million of them do not make its full collections longer while the snapshot is written."""
        out: list[tuple[Any, ...]] = []
        for faiss_id, row in self._rows.items():
            metadata = dict(zip(row[2], row[3:], strict=True))
            if row[1] is None:
                out.append((faiss_id, row[0], metadata))
            else:
                out.append((faiss_id, row[0], metadata, row[1].decode()))
        return out
