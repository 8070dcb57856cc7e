"""MemoryStore: the namespaces of every organization placed on one memory shard. Pure Python and
FAISS, no Ray, no I/O.

Like the session shard, `apply(op)` is the one entry point and every mutating op that succeeds is
appended to `journal`, which the durability layer writes to the log before answering. Every op
names its organization, and an organization's namespaces are keyed by it, so nothing one
organization does can reach another's vectors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from typing import Any

import numpy as np

from engine.clock import Clock, SystemClock
from engine.errors import QuotaExceeded, ValidationFailed, apply_each
from engine.idempotency import IdempotencyRecords, Idempotent
from engine.storage.cursors import Cursors

from . import sessions
from .export import VectorCursor
from .index import IndexParams, Match, NamespaceIndex
from .ops import (
    MEMORY_OPS,
    CloseVectorExport,
    DeleteVectors,
    ForgetSessions,
    ImportVectors,
    MemoryOp,
    MemoryStats,
    OpenVectorExport,
    OpenVectorExports,
    QueryVectors,
    SessionTurnVectors,
    UpsertVectors,
    VectorExportPage,
)
from .sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY, SessionIndexes

# Open tantivy writers a store keeps (each holds a thread and its heap, _WRITER_HEAP_BYTES in
# engine/memory/lexical.py); the least recently written namespace's is closed past this, and
# opened again by its next write.
MAX_OPEN_WRITERS = 8


ORG_SCOPE = ""  # idempotency keys of vector writes are scoped to the organization


class MemoryStore:
    def __init__(
        self, params: IndexParams, idempotency: IdempotencyRecords | None = None, clock: Clock | None = None
    ) -> None:
        self.params = params
        self.idempotency = idempotency if idempotency is not None else IdempotencyRecords()
        self.replaying = False  # set while the log is replayed: logged ops are applied as they were
        self.condition: dict[str, Any] = {}  # set by the durability layer; stats answer it
        self._clock = clock or SystemClock()
        self._namespaces: dict[tuple[str, str], NamespaceIndex] = {}
        self._unsearchable: set[tuple[str, str]] = set()  # texts written, not yet committed
        self._writers: OrderedDict[tuple[str, str], None] = OrderedDict()  # open, least recent first
        self.journal: list[MemoryOp | Idempotent] = []
        self._exports: Cursors[VectorCursor] = Cursors("a memory shard")
        # The last log record written, read by an export cursor for its watermark; the durability
        # layer sets it (a store on its own has no log).
        self.log_position: Callable[[], int] = lambda: 0
        self._handlers: dict[type, Callable[[Any], Any]] = MEMORY_OPS.handlers(self)

    def apply(self, op: MemoryOp | Idempotent, now_ms: int | None = None) -> Any:
        """`now_ms`: when the op runs (replay passes its record's time); None: now."""
        if type(op) is Idempotent:
            return self._apply_once(op, now_ms)
        result = self._handlers[type(op)](op)
        spec = MEMORY_OPS.spec(op)
        if spec.logged and (result is not None or spec.log_without_result):
            self.journal.append(op)
        return result

    def _apply_once(self, once: Idempotent, now_ms: int | None) -> Any:
        """A vector write under an idempotency key (see engine.idempotency); scope: its organization."""
        op = once.op

        def run() -> Any:
            result = self._handlers[type(op)](op)
            self.journal.append(once)
            return result

        now = self._clock.now_ms() if now_ms is None else now_ms
        return self.idempotency.apply_once(once, ORG_SCOPE, now, replaying=self.replaying, run=run)

    def apply_batch(self, ops: Sequence[MemoryOp | Idempotent], now_ms: int | None = None) -> list[Any]:
        """In order; one op's error is its own result and never fails the others. Unfiltered
        queries that follow one another are searched together, one FAISS call per namespace:
        they only read, so answering them together is the same as one after another."""
        results: list[Any] = []
        for queries, run in groupby(ops, key=lambda op: isinstance(op, QueryVectors)):
            ops_run = list(run)
            together = queries and len(ops_run) > 1
            results += (
                self._queries(ops_run)  # type: ignore[arg-type]
                if together
                else apply_each(lambda op: self.apply(op, now_ms), ops_run)
            )
        # Replay leaves commits to the first query (one a record would be slow), but still keeps
        # no more writers open than a running shard does.
        self._make_searchable(commit=not self.replaying)
        return results

    def _make_searchable(self, only: tuple[str, str] | None = None, *, commit: bool = True) -> None:
        """Commit the texts written so far (of one namespace, or all), then close the writers
        past MAX_OPEN_WRITERS, least recently written first (closing one commits it)."""
        for key in ([only] if only is not None else list(self._unsearchable)) if commit else ():
            if key in self._unsearchable:
                self._unsearchable.discard(key)
                index = self._namespaces.get(key)
                if index is not None:
                    index.commit()
        while len(self._writers) > MAX_OPEN_WRITERS:
            key, _ = self._writers.popitem(last=False)
            index = self._namespaces.get(key)
            if index is not None and index.lexical is not None:
                index.lexical.close_writer()

    def _wrote_texts(self, key: tuple[str, str]) -> None:
        self._unsearchable.add(key)
        self._writers[key] = None
        self._writers.move_to_end(key)

    def take_journal(self) -> list[MemoryOp | Idempotent]:
        taken, self.journal = self.journal, []
        return taken

    def namespaces(self) -> Iterator[tuple[tuple[str, str], NamespaceIndex]]:
        return iter(list(self._namespaces.items()))

    def adopt(self, org: str, namespace: str, index: NamespaceIndex) -> None:
        """A namespace read from a snapshot (into an empty store)."""
        self._namespaces[(org, namespace)] = index

    def __len__(self) -> int:
        return sum(len(index) for index in self._namespaces.values())

    def drop_stored_windows(self) -> int:
        """Delete the window entries (kind `window`) one earlier engine wrote into session memory at
        each close; windows are made at query time now (engine.memory.sessions). Not logged: run
        after every recovery, it deletes what the snapshot or the log brought back, until a snapshot
        without them is written. The number deleted."""
        deleted = 0
        for key, index in self.namespaces():
            if key[1] == SESSION_MEMORY:
                deleted += self._after_delete(key, index.delete_where("kind", ["window"]))
        return deleted

    # -- ops ----------------------------------------------------------------------------------------

    def _upsert(self, op: UpsertVectors) -> dict[str, int]:
        dimension = int(op.vectors.shape[1])
        key = (op.org, op.namespace)
        index = self._namespaces.get(key)
        if index is None:
            index = self._namespaces[key] = NamespaceIndex(dimension, self.params)
        elif index.dimension != dimension:
            raise _wrong_dimension(op.namespace, index.dimension, dimension)
        if op.max_vectors is not None and not self.replaying:
            added = sum(1 for i in set(op.ids) if not index.has(i))
            if len(index) + added > op.max_vectors:
                if not len(index):
                    del self._namespaces[key]
                raise QuotaExceeded(
                    "max_vectors_per_namespace",
                    op.max_vectors,
                    f"The namespace holds {len(index)} vectors. Delete some, use another namespace, or "
                    "ask the operator to raise limits.max_vectors_per_namespace.",
                )
        had_texts = index.lexical is not None
        self._before_change(key, index, op.ids)
        index.upsert(op.ids, op.vectors, op.metadata, op.texts)
        if index.lexical is not None and (had_texts or op.texts):
            self._wrote_texts(key)
        return {"upserted": len(op.ids)}

    def _before_change(self, key: tuple[str, str], index: NamespaceIndex, ids: Sequence[str]) -> None:
        """Before entries are replaced or deleted: each open export of the organization copies
        those it has not paged out yet (engine.memory.export); a lapsed one is swept first."""
        cursors = self._exports.of_org(key[0], self._clock.now_ms()) if self._exports else []
        if not cursors:
            return
        held = [faiss_id for faiss_id in map(index.faiss_id, ids) if faiss_id is not None]
        for cursor in cursors:
            cursor.keep_before_change(key[1], index, held)

    def _import(self, op: ImportVectors) -> dict[str, int] | None:
        index = self._namespaces.get((op.org, op.namespace))
        dimension = int(op.vectors.shape[1])
        if index is not None and index.dimension != dimension:
            raise _wrong_dimension(op.namespace, index.dimension, dimension)
        last = {external: row for row, external in enumerate(op.ids)}
        rows = sorted(row for external, row in last.items() if index is None or not index.has(external))
        if not rows:
            return None  # every id held: skipped, and not logged
        self._upsert(
            UpsertVectors(
                op.org,
                op.namespace,
                tuple(op.ids[row] for row in rows),
                op.vectors[rows],
                tuple(op.metadata[row] for row in rows),
                op.max_vectors,
                tuple(op.texts[row] for row in rows) if op.texts else (),
            )
        )
        return {"imported": len(rows), "skipped": len(op.ids) - len(rows)}

    def _delete(self, op: DeleteVectors) -> dict[str, int]:
        key = (op.org, op.namespace)
        index = self._namespaces.get(key)
        if index is not None:
            self._before_change(key, index, op.ids)
        deleted = index.delete(op.ids) if index is not None else 0
        return {"deleted": self._after_delete(key, deleted)}

    def _forget_sessions(self, op: ForgetSessions) -> dict[str, int]:
        deleted = 0
        for key in ((op.org, SESSION_MEMORY), (op.org, SESSIONS_OF_MEMORY)):
            index = self._namespaces.get(key)
            gone = index.delete_where("session_id", op.session_ids) if index is not None else 0
            deleted += self._after_delete(key, gone)
        return {"deleted": deleted}

    def _after_delete(self, key: tuple[str, str], deleted: int) -> int:
        index = self._namespaces.get(key)
        if index is None or not deleted:
            return deleted
        if len(index) == 0:
            del self._namespaces[key]  # an empty namespace is gone; its dimension too
            self._unsearchable.discard(key)
            if key in self._writers:
                del self._writers[key]
        elif index.lexical is not None:
            self._wrote_texts(key)
        return deleted

    def _queries(self, ops: Sequence[QueryVectors]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        together: dict[tuple[str, str], list[int]] = {}
        for i, op in enumerate(ops):
            index = self._namespaces.get((op.org, op.namespace))
            if (
                op.mode == "dense"
                and op.vector is not None
                and not op.where
                and op.namespace != SESSION_MEMORY
                and index is not None
                and index.dimension == op.vector.shape[-1]
            ):
                together.setdefault((op.org, op.namespace), []).append(i)
        for key, positions in together.items():
            vectors = np.stack([ops[i].vector for i in positions]).astype(np.float32, copy=False)  # type: ignore[misc]
            try:
                found = self._namespaces[key].query_many(vectors, [ops[i].top_k for i in positions])
            except Exception:  # noqa: BLE001 - answered one by one below, each with its own error
                continue
            for i, matches in zip(positions, found, strict=True):
                results[i] = matches
        alone = [i for i, result in enumerate(results) if result is None]
        for i, result in zip(alone, apply_each(self.apply, [ops[i] for i in alone]), strict=True):
            results[i] = result
        return results

    def _query(self, op: QueryVectors) -> list[Match]:
        if op.namespace == SESSION_MEMORY:
            indexes = SessionIndexes(
                self._searchable(op, (op.org, SESSION_MEMORY)),
                self._searchable(op, (op.org, SESSIONS_OF_MEMORY)),
            )
            return sessions.search(
                indexes,
                op.vector,
                op.text,
                op.top_k,
                op.where,
                op.mode,
                min_relevance=op.min_relevance,
                as_of=op.as_of,
            )
        index = self._searchable(op, (op.org, op.namespace))
        if index is None:
            return []
        return index.query(op.vector, op.top_k, op.where, text=op.text, mode=op.mode)

    def _searchable(self, op: QueryVectors, key: tuple[str, str]) -> NamespaceIndex | None:
        """The namespace, its texts committed, after checking the query's dimension against it."""
        index = self._namespaces.get(key)
        if index is None:
            return None
        if op.vector is not None and index.dimension != op.vector.shape[-1]:
            raise _wrong_dimension(op.namespace, index.dimension, int(op.vector.shape[-1]))
        self._make_searchable(key)
        return index

    def _session_turn_vectors(self, op: SessionTurnVectors) -> dict[str, Any]:
        index = self._namespaces.get((op.org, SESSION_MEMORY))
        if index is None:
            return {"seqs": [], "vectors": None}
        selected = index.select({"session_id": op.session_id}) or set()
        selected -= index.select({"session_id": op.session_id, "kind": "window"}) or set()  # not turns
        turns = sorted(  # (seq, FAISS id)
            (int(entry[1]["seq"]), faiss_id)
            for faiss_id in selected
            if (entry := index.entry(faiss_id)) is not None
        )
        vectors = index.vectors([faiss_id for _, faiss_id in turns]) if turns else None
        return {"seqs": [seq for seq, _ in turns], "vectors": vectors}

    def _stats(self, op: MemoryStats) -> dict[str, Any]:
        return {"namespaces": len(self._namespaces), "vectors": len(self), **self.condition}

    # -- export (engine.memory.export) ---------------------------------------------------------------

    def _open_export(self, op: OpenVectorExport) -> dict[str, int]:
        own = [(namespace, index) for (org, namespace), index in self._namespaces.items() if org == op.org]
        # Ops earlier in this batch are in the journal: the log's next record will hold them.
        watermark = self.log_position() + (1 if self.journal else 0)
        now_ms = self._clock.now_ms()
        cursor = self._exports.open(
            op.export_id,
            op.org,
            (op.max_open, op.max_per_org),
            now_ms,
            lambda: VectorCursor(op.org, own, watermark, now_ms, op.idle_ms),
        )
        return {"watermark": watermark, "namespaces": len(cursor)}

    def _export_page(self, op: VectorExportPage) -> dict[str, Any]:
        cursor = self._exports.page(op.export_id, op.org, self._clock.now_ms())
        if op.max_lines == 0:
            return {"lines": [], "done": False}  # a keep-alive: the cursor waits for its turn
        lines, done = cursor.next_page(op.max_lines)
        if done:
            self._exports.close(op.export_id, op.org)
        return {"lines": lines, "done": done}

    def _close_export(self, op: CloseVectorExport) -> None:
        self._exports.close(op.export_id, op.org)

    def _open_exports(self, op: OpenVectorExports) -> dict[str, int]:
        return {"exports": len(self._exports)}


def _wrong_dimension(namespace: str, expected: int, got: int) -> ValidationFailed:
    return ValidationFailed(
        f"namespace {namespace!r} holds vectors of dimension {expected}, not {got}",
        {"namespace": namespace, "expected_dimension": expected, "dimension": got},
        "Send vectors of the namespace's dimension, or use another namespace. Texts are embedded to "
        "the embedder's dimension.",
    )
