"""MemoryStore: the namespaces of every organization placed on one memory shard. Pure Python and
FAISS, no Ray, no I/O.

Like the session shard, `apply(op)` is the one entry point and every mutating op that succeeds is
appended to `journal`, which the durability layer writes to the log before answering. Every op
names its organization, and an organization's namespaces are keyed by it, so nothing one
organization does can reach another's vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import ValidationFailed, apply_each

from .index import IndexParams, Match, NamespaceIndex, Scalar

SESSION_MEMORY = "session-memory"  # where closed sessions' summaries go; vector id = session id


@dataclass(slots=True, frozen=True)
class UpsertVectors:
    """`vectors` are normalized float32 rows, one per id."""

    org: str
    namespace: str
    ids: tuple[str, ...]
    vectors: np.ndarray = field(compare=False)
    metadata: tuple[dict[str, Any], ...]


@dataclass(slots=True, frozen=True)
class DeleteVectors:
    org: str
    namespace: str
    ids: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class QueryVectors:
    org: str
    namespace: str
    vector: np.ndarray = field(compare=False)  # normalized
    top_k: int
    where: dict[str, Scalar] | None = None


@dataclass(slots=True, frozen=True)
class MemoryStats:
    pass


MemoryOp = UpsertVectors | DeleteVectors | QueryVectors | MemoryStats
MUTATING_MEMORY_OPS = (UpsertVectors, DeleteVectors)


class MemoryStore:
    def __init__(self, params: IndexParams) -> None:
        self.params = params
        self._namespaces: dict[tuple[str, str], NamespaceIndex] = {}
        self.journal: list[MemoryOp] = []
        self._handlers: dict[type, Callable[[Any], Any]] = {
            UpsertVectors: self._upsert,
            DeleteVectors: self._delete,
            QueryVectors: self._query,
            MemoryStats: self._stats,
        }

    def apply(self, op: MemoryOp) -> Any:
        result = self._handlers[type(op)](op)
        if isinstance(op, MUTATING_MEMORY_OPS):
            self.journal.append(op)
        return result

    def apply_batch(self, ops: Sequence[MemoryOp]) -> list[Any]:
        """In order; one op's error is its own result and never fails the others."""
        return apply_each(self.apply, ops)

    def take_journal(self) -> list[MemoryOp]:
        taken, self.journal = self.journal, []
        return taken

    def namespaces(self) -> Iterator[tuple[tuple[str, str], NamespaceIndex]]:
        return iter(list(self._namespaces.items()))

    def adopt(self, org: str, namespace: str, index: NamespaceIndex) -> None:
        """A namespace read from a snapshot (into an empty store)."""
        self._namespaces[(org, namespace)] = index

    def __len__(self) -> int:
        return sum(len(index) for index in self._namespaces.values())

    # -- ops ----------------------------------------------------------------------------------------

    def _upsert(self, op: UpsertVectors) -> dict[str, int]:
        dimension = int(op.vectors.shape[1])
        key = (op.org, op.namespace)
        index = self._namespaces.get(key)
        if index is None:
            index = self._namespaces[key] = NamespaceIndex(dimension, self.params)
        elif index.dimension != dimension:
            raise _wrong_dimension(op.namespace, index.dimension, dimension)
        index.upsert(op.ids, op.vectors, op.metadata)
        return {"upserted": len(op.ids)}

    def _delete(self, op: DeleteVectors) -> dict[str, int]:
        index = self._namespaces.get((op.org, op.namespace))
        deleted = index.delete(op.ids) if index is not None else 0
        if index is not None and len(index) == 0:
            del self._namespaces[(op.org, op.namespace)]  # an empty namespace is gone; its dimension too
        return {"deleted": deleted}

    def _query(self, op: QueryVectors) -> list[Match]:
        index = self._namespaces.get((op.org, op.namespace))
        if index is None:
            return []
        if index.dimension != op.vector.shape[-1]:
            raise _wrong_dimension(op.namespace, index.dimension, int(op.vector.shape[-1]))
        return index.query(op.vector, op.top_k, op.where)

    def _stats(self, op: MemoryStats) -> dict[str, Any]:
        return {"namespaces": len(self._namespaces), "vectors": len(self)}


def _wrong_dimension(namespace: str, expected: int, got: int) -> ValidationFailed:
    return ValidationFailed(
        f"namespace {namespace!r} holds vectors of dimension {expected}, not {got}",
        {"namespace": namespace, "expected_dimension": expected, "dimension": got},
        "Send vectors of the namespace's dimension, or use another namespace. Texts are embedded to "
        "the embedder's dimension.",
    )
