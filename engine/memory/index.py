"""One namespace of one organization's vector memory: a FAISS index plus the id <-> metadata map.

Vectors are L2-normalized before they go in, and the index measures inner product, so a score is
the cosine similarity. External ids are strings; FAISS holds int64 ids, handed out from a counter
and never reused, so a replaced or deleted vector's old id can never come back in a result.

Small namespaces use an exact index (`IndexIDMap2` over `IndexFlatIP`). Past `hnsw_above` vectors
a namespace is rebuilt as HNSW, which answers in roughly logarithmic time but approximately and
cannot remove vectors: deletes there leave tombstones that searches skip, and the graph is rebuilt
once tombstones pass a quarter of it.

An entry upserted with a text also has its text kept and indexed for BM25 (engine.memory.lexical),
under the same FAISS id, so a query can rank by meaning (`dense`), by words (`lexical`), or by both
fused (`hybrid`, engine.memory.fusion).

Metadata filters are on top-level keys: a value means equality, an object holds operators
(`$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$in`). Scalar metadata values are kept in an inverted
index, so equality and `$in` pick their candidates without scanning the namespace; the other
operators are checked on those candidates (or on every entry when there are none). The searches
then look only at the candidates (a FAISS ID selector, a tantivy key set).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from engine.errors import ValidationFailed

from .fusion import fuse
from .lexical import LexicalIndex

Scalar = str | int | float | bool | None
Where = Mapping[str, Any]  # key -> a scalar (equality) or {operator: operand}; checked by the API
Mode = Literal["dense", "lexical", "hybrid"]
Hits = list[tuple[int, float]]  # (FAISS id, score), best first
_RANGE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
OPERATORS = ("$eq", "$ne", "$in", *_RANGE)
_TOMBSTONE_REBUILD_FRACTION = 0.25
_THREADS = faiss.omp_get_max_threads()


@dataclass(slots=True, frozen=True)
class IndexParams:
    hnsw_above: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128


@dataclass(slots=True, frozen=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any]
    # How relevant the match is on a scale that does not depend on the other matches (0 to 1;
    # engine.memory.relevance); session memory gives it, other namespaces do not.
    relevance: float | None = None


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32. A zero or non-finite row is refused."""
    with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused below
        out = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1).copy()
    if not np.isfinite(out).all():
        raise ValidationFailed("vector values must be finite numbers", {"field": "values"})
    norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)  # no overflow for large values
    if (norms == 0).any():
        raise ValidationFailed(
            "a vector of all zeros has no direction", {"field": "values"}, "Send a non-zero vector."
        )
    out = (out / norms).astype(np.float32)
    return np.ascontiguousarray(out)


def _posting_key(key: str, value: Any) -> tuple[str, str, Any] | None:
    # The type is part of the key so that true, 1 and 1.0 are different values, as in JSON.
    if value is None or isinstance(value, str | bool | int | float):
        return (key, type(value).__name__, value)
    return None


class NamespaceIndex:
    def __init__(self, dimension: int, params: IndexParams) -> None:
        self.dimension = dimension
        self._params = params
        self._index = self._flat()
        self._hnsw = False
        self._internal: dict[str, int] = {}  # external id -> FAISS id of its live vector
        self._records: dict[int, tuple[str, dict[str, Any]]] = {}  # FAISS id -> (external id, metadata)
        self._postings: dict[tuple[str, str, Any], set[int]] = {}
        self._texts: dict[int, str] = {}  # FAISS id -> the text it was upserted with, if any
        self.lexical: LexicalIndex | None = None  # made with the first text
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._records)

    def has(self, external_id: str) -> bool:
        return external_id in self._internal

    def faiss_id(self, external_id: str) -> int | None:
        return self._internal.get(external_id)

    @property
    def next_id(self) -> int:
        """The FAISS id the next vector gets: every id handed out is below it, and none is reused."""
        return self._next_id

    def ids_below(self, mark: int) -> list[int]:
        """The FAISS ids of the live entries below `mark` (those there when next_id was `mark`)."""
        return [faiss_id for faiss_id in self._records if faiss_id < mark]

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw else "flat"

    @property
    def tombstones(self) -> int:
        return int(self._index.ntotal) - len(self._records)

    # -- writes -------------------------------------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        texts: Sequence[str | None] = (),
    ) -> None:
        """`vectors` are already normalized rows of this namespace's dimension; `texts`, when
        given, one per id (None: that one has none). An id given twice keeps its last vector; an
        existing id is replaced."""
        last = {external: row for row, external in enumerate(ids)}
        rows = sorted(last.values())
        self._forget([ids[row] for row in rows])
        faiss_ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
        self._next_id += len(rows)
        self._index.add_with_ids(vectors[rows], faiss_ids)
        for faiss_id, row in zip(faiss_ids.tolist(), rows, strict=True):
            self._remember(faiss_id, ids[row], metadata[row])
        if texts:
            self._add_texts(
                [(faiss_id, texts[row]) for faiss_id, row in zip(faiss_ids.tolist(), rows, strict=True)]
            )
        self._maybe_switch_to_hnsw()

    def _add_texts(self, pairs: Sequence[tuple[int, str | None]]) -> None:
        with_text = [(faiss_id, text) for faiss_id, text in pairs if text]
        if not with_text:
            return
        if self.lexical is None:
            self.lexical = LexicalIndex()
        self._texts.update(with_text)
        self.lexical.add(with_text)

    def delete_where(self, key: str, values: Collection[Scalar]) -> int:
        """Delete every entry whose metadata `key` is one of `values` (a session's turns, say)."""
        return self.delete([self._records[i][0] for value in values for i in self._posting(key, value)])

    def delete(self, ids: Sequence[str]) -> int:
        removed = self._forget(ids)
        if self._hnsw and self.tombstones > _TOMBSTONE_REBUILD_FRACTION * max(self._index.ntotal, 1):
            self._rebuild(hnsw=len(self._records) > self._params.hnsw_above)
        return removed

    def _forget(self, ids: Sequence[str]) -> int:
        gone = [self._internal.pop(external) for external in ids if external in self._internal]
        for faiss_id in gone:
            _, metadata = self._records.pop(faiss_id)
            for key, value in metadata.items():
                posting = _posting_key(key, value)
                if posting is not None:
                    holders = self._postings[posting]
                    holders.discard(faiss_id)
                    if not holders:
                        del self._postings[posting]
        if gone and not self._hnsw:
            self._index.remove_ids(np.asarray(gone, dtype=np.int64))
        if self._texts:
            with_text = [faiss_id for faiss_id in gone if self._texts.pop(faiss_id, None) is not None]
            if with_text and self.lexical is not None:
                self.lexical.remove(with_text)
        return len(gone)

    def _remember(self, faiss_id: int, external: str, metadata: dict[str, Any]) -> None:
        self._internal[external] = faiss_id
        self._records[faiss_id] = (external, metadata)
        for key, value in metadata.items():
            posting = _posting_key(key, value)
            if posting is not None:
                self._postings.setdefault(posting, set()).add(faiss_id)

    # -- reads --------------------------------------------------------------------------------------

    def query(
        self,
        vector: np.ndarray | None,
        top_k: int,
        where: Where | None = None,
        *,
        text: str | None = None,
        mode: Mode = "dense",
    ) -> list[Match]:
        """The best top_k entries. `dense`: by cosine similarity (the score); `lexical`: by BM25 on
        the entries' texts (the score is BM25's); `hybrid`: both lists fused (engine.memory.fusion,
        the score is the fused one, at most 1)."""
        candidates = self.select(where)
        if candidates is not None and not candidates:
            return []
        if mode == "dense":
            assert vector is not None
            if candidates is None:
                return self.query_many(vector.reshape(1, self.dimension), [top_k])[0]
            return self._to_matches(self.dense(vector, top_k, candidates))
        lexical = self.words(text or "", top_k if mode == "lexical" else _depth(top_k), candidates)
        if mode == "lexical":
            return self._to_matches(lexical)
        assert vector is not None
        dense = self.dense(vector, _depth(top_k), candidates)
        fused = fuse({"dense": dense, "lexical": lexical}, _EVEN)
        return self._to_matches(fused[:top_k])

    def dense(self, vector: np.ndarray, k: int, candidates: Collection[int] | None = None) -> Hits:
        """Up to k (FAISS id, cosine similarity), nearest first; `candidates`: only these."""
        if not self._records or k <= 0:
            return []
        query = vector.reshape(1, self.dimension).astype(np.float32, copy=False)
        if candidates is None:
            k = min(k + self.tombstones, int(self._index.ntotal))  # HNSW still holds deleted vectors
            selector = None
        else:
            k = min(k, len(candidates))
            selector = faiss.IDSelectorBatch(np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
        scores, found = self._raw_search(query, k, selector)
        return self._live(scores[0].tolist(), found[0].tolist())

    def _live(self, scores: list[float], ids: list[int]) -> Hits:
        """A FAISS answer's hits on live entries (HNSW also answers deleted ones, and -1 for none)."""
        return [(i, min(1.0, score)) for score, i in zip(scores, ids, strict=True) if i in self._records]

    def words(self, text: str, k: int, candidates: Collection[int] | None = None) -> Hits:
        """Up to k (FAISS id, BM25 score) of the entries that have a text; `candidates`: only these."""
        if self.lexical is None:
            return []
        return self.lexical.search(text, k, candidates)

    def select(self, where: Where | None) -> set[int] | None:
        """The FAISS ids whose metadata satisfies `where`; None when there is no filter (all)."""
        if not where:
            return None
        conditions = {
            key: value if isinstance(value, Mapping) else {"$eq": value} for key, value in where.items()
        }
        indexed: list[set[int]] = []
        for key, condition in conditions.items():
            if "$eq" in condition:
                indexed.append(self._posting(key, condition["$eq"]))
            if "$in" in condition:
                indexed.append(set().union(*(self._posting(key, value) for value in condition["$in"])))
        indexed.sort(key=len)
        pool: Collection[int] = set(indexed[0]).intersection(*indexed[1:]) if indexed else self._records
        checks = [
            (key, name, operand)
            for key, condition in conditions.items()
            for name, operand in condition.items()
            if name not in ("$eq", "$in")
        ]
        if not checks:
            return set(pool)
        return {faiss_id for faiss_id in pool if _satisfies(self._records[faiss_id][1], checks)}

    def _posting(self, key: str, value: Any) -> set[int]:
        posting = _posting_key(key, value)
        return self._postings.get(posting, set()) if posting is not None else set()

    def entry(self, faiss_id: int) -> tuple[str, dict[str, Any]] | None:
        """(external id, metadata) of a live entry."""
        return self._records.get(faiss_id)

    def text(self, faiss_id: int) -> str | None:
        return self._texts.get(faiss_id)

    def commit(self) -> None:
        """Make texts written so far searchable by words (the store calls it once per batch)."""
        if self.lexical is not None:
            self.lexical.commit()

    def _to_matches(self, hits: Sequence[tuple[int, float]]) -> list[Match]:
        return [
            Match(self._records[i][0], score, self._records[i][1]) for i, score in hits if i in self._records
        ]

    def query_many(self, vectors: np.ndarray, top_ks: Sequence[int]) -> list[list[Match]]:
        """Unfiltered queries (one row each) in one FAISS search: several queries cost little more
        than one, since FAISS spreads them over its threads."""
        if not self._records:
            return [[] for _ in top_ks]
        # HNSW still holds deleted vectors; ask for enough to fill top_k after skipping them.
        k = min(max(top_ks) + self.tombstones, int(self._index.ntotal))
        return self._search(vectors, k, None, top_ks)

    def _raw_search(self, queries: np.ndarray, k: int, selector: Any) -> tuple[np.ndarray, np.ndarray]:
        params = (
            faiss.SearchParametersHNSW(sel=selector, efSearch=max(self._params.hnsw_ef_search, k))  # type: ignore[attr-defined]
            if self._hnsw
            else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        )
        # One query on one thread: FAISS's threads would split a single search and cost more in
        # waking and waiting
        # (benchmarks/RESULTS.md#8-memory-queries-one-thread-for-one-query-one-faiss-call-for-several).
        faiss.omp_set_num_threads(1 if len(queries) == 1 else _THREADS)
        try:
            scores, found = self._index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(_THREADS)  # builds and batches use them all
        return scores, found

    def _search(self, queries: np.ndarray, k: int, selector: Any, top_ks: Sequence[int]) -> list[list[Match]]:
        scores, found = self._raw_search(queries, k, selector)
        return [
            self._to_matches(self._live(row_scores, row_ids)[:top_k])
            for row_scores, row_ids, top_k in zip(scores.tolist(), found.tolist(), top_ks, strict=True)
        ]

    def vector(self, external: str) -> np.ndarray | None:
        faiss_id = self._internal.get(external)
        return None if faiss_id is None else self._index.reconstruct(faiss_id)

    def vectors(self, faiss_ids: Sequence[int]) -> np.ndarray:
        """The stored (normalized) vectors of these live entries, one row each."""
        if not faiss_ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        rows: np.ndarray = self._index.reconstruct_batch(np.asarray(faiss_ids, dtype=np.int64))
        return rows

    # -- structure ----------------------------------------------------------------------------------

    def _flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

    def _hnsw_index(self) -> Any:
        inner = faiss.IndexHNSWFlat(self.dimension, self._params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self._params.hnsw_ef_construction
        inner.hnsw.efSearch = self._params.hnsw_ef_search
        return faiss.IndexIDMap2(inner)

    def _maybe_switch_to_hnsw(self) -> None:
        if not self._hnsw and len(self._records) > self._params.hnsw_above:
            self._rebuild(hnsw=True)

    def _rebuild(self, *, hnsw: bool) -> None:
        """A new index over the live vectors only (this drops tombstones)."""
        live = np.fromiter(self._records, dtype=np.int64, count=len(self._records))
        vectors = self._index.reconstruct_batch(live) if len(live) else None
        self._index = self._hnsw_index() if hnsw else self._flat()
        self._hnsw = hnsw
        if vectors is not None:
            self._index.add_with_ids(vectors, live)

    # -- persistence --------------------------------------------------------------------------------

    def to_parts(self) -> tuple[dict[str, Any], bytes]:
        """(JSON-able header, the FAISS index as bytes)."""
        header = {
            "dimension": self.dimension,
            "kind": self.kind,
            "next_id": self._next_id,
            "records": [
                [faiss_id, external, meta, *([self._texts[faiss_id]] if faiss_id in self._texts else [])]
                for faiss_id, (external, meta) in self._records.items()
            ],
        }
        return header, faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_parts(cls, header: dict[str, Any], index_bytes: bytes, params: IndexParams) -> NamespaceIndex:
        index = cls(int(header["dimension"]), params)
        index._index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        index._hnsw = header["kind"] == "hnsw"
        index._next_id = int(header["next_id"])
        texts = []
        for faiss_id, external, meta, *text in header["records"]:  # a text is there if it had one
            index._remember(int(faiss_id), external, meta)
            if text:
                texts.append((int(faiss_id), text[0]))
        index._add_texts(texts)
        index.commit()
        return index


def _depth(top_k: int) -> int:
    """How deep each list of a fused query looks: enough that an entry ranked low by one signal
    and high by the other is still seen by both."""
    return max(4 * top_k, 50)


_EVEN = {"dense": 1.0, "lexical": 1.0}


def _satisfies(metadata: Mapping[str, Any], checks: Sequence[tuple[str, str, Any]]) -> bool:
    for key, name, operand in checks:
        value = metadata.get(key)
        if name == "$ne":
            if _posting_key(key, value) == _posting_key(key, operand):
                return False
            continue
        if not _comparable(value, operand) or not _RANGE[name](value, operand):
            return False
    return True


def _comparable(value: Any, operand: Any) -> bool:
    """Numbers compare with numbers and strings with strings; true and false are not numbers."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return False
    numbers = (int, float)
    return (isinstance(value, numbers) and isinstance(operand, numbers)) or (
        isinstance(value, str) and isinstance(operand, str)
    )
