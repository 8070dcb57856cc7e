"""The cursor a memory shard keeps for an export in progress: one organization's own namespaces
(not session memory, which an import rebuilds from the sessions it indexes) as they were when the
cursor opened, paged out as `vector` lines (engine.sessions.export, docs/export.schema.json).

The cut costs nothing at open. A namespace hands out FAISS ids from a counter that never goes back
(engine.memory.index), so the entries there at the open are exactly the live ones below the
counter's value then (`mark`): a vector upserted later, a replacement included, gets an id above
it and is not exported. What a later change removes (a replaced or deleted entry the cursor has
not reached) is copied just before (`keep_before_change`, called by MemoryStore), so the copies
held are bounded by what the organization held at the open, and only what changes is copied. A
namespace is held by a weak reference: one emptied (and so dropped) is exported from its copies.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .index import NamespaceIndex
from .sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY

ENGINE_NAMESPACES = (SESSION_MEMORY, SESSIONS_OF_MEMORY)  # written by the engine; not exported


@dataclass(slots=True)
class _Entry:
    id: str
    values: np.ndarray  # float32, its own row: a list of floats only as its line is written
    text: str | None
    metadata: dict[str, Any]


class _Namespace:
    """One namespace of the cut: the live index (weakly), its id counter at the open, and the
    copies of entries changed before the cursor reached them."""

    def __init__(self, name: str, index: NamespaceIndex) -> None:
        self.name = name
        self.index = weakref.ref(index)
        self.mark = index.next_id
        self.saved: dict[int, _Entry] = {}
        self.reached = -1  # the last FAISS id paged out; the ids ascend
        self.order: list[int] | None = None  # the ids to page out, made when the namespace's turn comes
        self.position = 0

    def keep_before_change(self, index: NamespaceIndex, faiss_ids: Iterable[int]) -> None:
        if self.index() is not index:
            return
        wanted = [
            faiss_id
            for faiss_id in faiss_ids
            if self.reached < faiss_id < self.mark
            and faiss_id not in self.saved
            and index.entry(faiss_id) is not None
        ]
        for faiss_id, row in zip(wanted, index.vectors(wanted), strict=True):
            entry = _entry(index, faiss_id, row)
            if entry is not None:
                self.saved[faiss_id] = entry

    def next_page(self, max_lines: int) -> tuple[list[dict[str, Any]], bool]:
        index = self.index()
        if self.order is None:
            # Once per namespace, when its turn comes: its ids at the open, still live or copied.
            live = index.ids_below(self.mark) if index is not None else []
            self.order = sorted({*live, *self.saved})
        ids = self.order[self.position : self.position + max_lines]
        self.position += len(ids)
        lines = []
        for faiss_id in ids:
            entry = self.saved.pop(faiss_id, None)
            if entry is None and index is not None and index.entry(faiss_id) is not None:
                entry = _entry(index, faiss_id, index.vectors([faiss_id])[0])
            self.reached = faiss_id
            if entry is not None:
                lines.append(vector_line(self.name, entry))
        return lines, self.position >= len(self.order)


def _entry(index: NamespaceIndex, faiss_id: int, row: np.ndarray) -> _Entry | None:
    """A live entry with its row, copied out of the batch it was read in so that a copy holds
    its own row only."""
    found = index.entry(faiss_id)
    if found is None:
        return None
    external, metadata = found
    return _Entry(external, np.array(row, dtype=np.float32), index.text(faiss_id), metadata)


def vector_line(namespace: str, entry: _Entry) -> dict[str, Any]:
    return {
        "kind": "vector",
        "namespace": namespace,
        "id": entry.id,
        "values": entry.values.tolist(),
        "text": entry.text,
        "metadata": entry.metadata,
    }


class VectorCursor:
    """An organization's own namespaces on a memory shard, as they were when the cursor opened,
    paged out one namespace after another."""

    def __init__(
        self,
        org: str,
        namespaces: list[tuple[str, NamespaceIndex]],
        watermark: int,
        opened_ms: int,
        idle_ms: int,
    ) -> None:
        self.org = org
        self.watermark = watermark
        self.used_ms = opened_ms  # the last time a page was taken: an abandoned cursor lapses
        self.idle_ms = idle_ms
        self._namespaces = {
            name: _Namespace(name, index)
            for name, index in sorted(namespaces, key=lambda pair: pair[0])
            if name not in ENGINE_NAMESPACES
        }
        self._turns = list(self._namespaces.values())

    def __len__(self) -> int:
        return len(self._namespaces)

    def keep_before_change(self, namespace: str, index: NamespaceIndex, faiss_ids: Iterable[int]) -> None:
        """Before entries of the namespace are replaced or deleted: copy those not yet paged out."""
        cut = self._namespaces.get(namespace)
        if cut is not None:
            cut.keep_before_change(index, faiss_ids)

    def next_page(self, max_lines: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `max_lines` vector lines, and whether the cursor is done."""
        lines: list[dict[str, Any]] = []
        while self._turns and len(lines) < max_lines:
            page, finished = self._turns[0].next_page(max_lines - len(lines))
            lines += page
            if finished:
                self._turns.pop(0)
        return lines, not self._turns
