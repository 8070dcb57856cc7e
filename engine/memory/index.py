"""One namespace of one organization's vector memory: a FAISS index plus the id <-> metadata map.

Vectors are L2-normalized before they go in, and the index measures inner product, so a score is
the cosine similarity. External ids are strings; FAISS holds int64 ids, handed out from a counter
and never reused, so a replaced or deleted vector's old id can never come back in a result.

Small namespaces use an exact index; past `approximate_above` vectors a namespace is rebuilt as an
inverted file over 8-bit codes (engine.memory.vectors), in a thread while the exact index keeps
answering. The entries' external ids, metadata and texts are kept compactly (engine.memory.entries).

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

import itertools
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from engine.errors import ValidationFailed

from .entries import Entries, Records
from .fusion import fuse
from .lexical import LexicalIndex
from .vectors import IndexParams, Vectors

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
__all__ = ["IndexParams", "Match", "NamespaceIndex", "normalized"]


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
        self._vectors = Vectors(dimension, params)
        self._entries = Entries()
        self.lexical: LexicalIndex | None = None  # made with the first text
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, external_id: str) -> bool:
        return self._entries.faiss_id(external_id) is not None

    def faiss_id(self, external_id: str) -> int | None:
        return self._entries.faiss_id(external_id)

    @property
    def next_id(self) -> int:
        """The FAISS id the next vector gets: every id handed out is below it, and none is reused."""
        return self._next_id

    def ids_below(self, mark: int) -> list[int]:
        """The FAISS ids of the live entries below `mark` (those there when next_id was `mark`)."""
        return list(itertools.takewhile(lambda faiss_id: faiss_id < mark, self._entries))  # ascending

    @property
    def kind(self) -> str:
        """flat, ivf, or hnsw (an older snapshot's, until its rebuild): engine.memory.vectors."""
        return self._vectors.kind

    @property
    def building(self) -> bool:
        """A new FAISS index is being built in the background (engine.memory.vectors)."""
        return self._vectors.building

    @property
    def tombstones(self) -> int:
        return self._vectors.ntotal - len(self._entries)

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
        self._vectors.adopt_build()
        last = {external: row for row, external in enumerate(ids)}
        rows = sorted(last.values())
        # Everything that can fail is done before FAISS or the entries change, so a refused upsert
        # leaves the two in step.
        encoded = [_encoded(texts[row]) if texts else None for row in rows]
        added = np.ascontiguousarray(vectors[rows])
        self._forget([ids[row] for row in rows])
        faiss_ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
        self._next_id += len(rows)
        self._vectors.add(added, faiss_ids)
        with_text = []
        for faiss_id, row, text in zip(faiss_ids.tolist(), rows, encoded, strict=True):
            self._entries.add(faiss_id, ids[row], metadata[row], text)
            if text is not None:
                with_text.append((faiss_id, str(texts[row])))
        self._add_texts(with_text)
        self._maybe_rebuild()

    def _add_texts(self, pairs: Sequence[tuple[int, str]]) -> None:
        if not pairs:
            return
        if self.lexical is None:
            self.lexical = LexicalIndex(self._params.lexical_prune_above, self._params.lexical_prune_share)
        self.lexical.add(pairs)

    def delete_where(self, key: str, values: Collection[Scalar]) -> int:
        """Delete every entry whose metadata `key` is one of `values` (a session's turns, say)."""
        held = {faiss_id for value in values for faiss_id in self._entries.posting(key, value)}
        return self.delete(
            [entry[0] for entry in map(self._entries.entry, sorted(held)) if entry is not None]
        )

    def delete(self, ids: Sequence[str]) -> int:
        self._vectors.adopt_build()
        removed = self._forget(ids)
        if removed:
            self._maybe_rebuild()  # an older hnsw is converted; a namespace shrunk far is exact again
        return removed

    def _forget(self, ids: Sequence[str]) -> int:
        gone, with_text = [], []
        for external in ids:
            removed = self._entries.remove(external)
            if removed is not None:
                gone.append(removed[0])
                if removed[1]:
                    with_text.append(removed[0])
        if gone:
            self._vectors.remove(np.asarray(gone, dtype=np.int64))
        if with_text and self.lexical is not None:
            self.lexical.remove(with_text)
        return len(gone)

    # -- the FAISS index: background builds ---------------------------------------------------------

    def _maybe_rebuild(self) -> None:
        kind = self._vectors.due(len(self._entries))
        if kind is not None:
            live = np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))
            self._vectors.start_build(kind, live, background=self._params.background)

    def wait_for_build(self) -> bool:
        """Wait for a build in progress and swap it in; True if one was (tests, benchmarks)."""
        return self._vectors.adopt_build(wait=True)

    def rebuild(self, *, background: bool = True) -> None:
        """Build the index of this namespace's kind anew over its live rows (a benchmark's rebuild;
        engine code rebuilds by itself as the namespace grows)."""
        self._vectors.adopt_build(wait=True)
        kind = "ivf" if len(self._entries) > self._params.approximate_above else "flat"
        live = np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))
        self._vectors.start_build(kind, live, background=background)

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
        """Up to k (FAISS id, cosine similarity), nearest first; `candidates`: only these. A few
        candidates in an approximate index are compared with the query one by one, exactly on
        their stored rows: the index's lists would hold too few of them."""
        self._vectors.adopt_build()
        if not len(self._entries) or k <= 0:
            return []
        query = vector.reshape(1, self.dimension).astype(np.float32, copy=False)
        if candidates is None:
            k = min(k + self.tombstones, self._vectors.ntotal)  # HNSW still holds deleted vectors
            scores, found = self._vectors.search(query, k)
            return self._live(scores[0].tolist(), found[0].tolist())
        if self.kind != "flat" and len(candidates) <= self._params.exact_candidates:
            return self._exact(query[0], k, candidates)
        k = min(k, len(candidates))
        selector = faiss.IDSelectorBatch(np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
        scores, found = self._vectors.search(query, k, selector, len(candidates) / max(len(self._entries), 1))
        return self._live(scores[0].tolist(), found[0].tolist())

    def _exact(self, query: np.ndarray, k: int, candidates: Collection[int]) -> Hits:
        ids = [faiss_id for faiss_id in candidates if faiss_id in self._entries]
        if not ids:
            return []
        cosines = self.vectors(ids) @ query
        best = np.argsort(-cosines, kind="stable")[:k]
        return [(ids[i], min(1.0, float(cosines[i]))) for i in best.tolist()]

    def _live(self, scores: list[float], ids: list[int]) -> Hits:
        """A FAISS answer's hits on live entries (HNSW also answers deleted ones, and -1 for none)."""
        return [(i, min(1.0, score)) for score, i in zip(scores, ids, strict=True) if i in self._entries]

    def words(self, text: str, k: int, candidates: Collection[int] | None = None) -> Hits:
        """Up to k (FAISS id, BM25 score) of the entries that have a text; `candidates`: only these."""
        if self.lexical is None:
            return []
        return self.lexical.search(text, k, candidates)

    def holding(self, key: str, value: Any) -> Collection[int]:
        """The FAISS ids whose metadata `key` equals `value`: the index's own set, not to be changed
        (`select` copies it)."""
        return self._entries.posting(key, value)

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
                indexed.append(self._entries.posting(key, condition["$eq"]))
            if "$in" in condition:
                indexed.append(
                    set().union(*(self._entries.posting(key, value) for value in condition["$in"]))
                )
        indexed.sort(key=len)
        pool: Iterable[int] = set(indexed[0]).intersection(*indexed[1:]) if indexed else self._entries
        checks = [
            (key, name, operand)
            for key, condition in conditions.items()
            for name, operand in condition.items()
            if name not in ("$eq", "$in")
        ]
        if not checks:
            return set(pool)
        return {faiss_id for faiss_id in pool if _satisfies(self._entries.metadata(faiss_id), checks)}

    def entry(self, faiss_id: int) -> tuple[str, dict[str, Any]] | None:
        """(external id, metadata) of a live entry (the metadata is shared: not to be changed)."""
        return self._entries.entry(faiss_id)

    def text(self, faiss_id: int) -> str | None:
        return self._entries.text(faiss_id)

    def commit(self) -> None:
        """Make texts written so far searchable by words (the store calls it once per batch)."""
        if self.lexical is not None:
            self.lexical.commit()

    def _to_matches(self, hits: Sequence[tuple[int, float]]) -> list[Match]:
        matches = []
        for faiss_id, score in hits:
            entry = self._entries.entry(faiss_id)
            if entry is not None:
                matches.append(Match(entry[0], score, entry[1]))
        return matches

    def query_many(self, vectors: np.ndarray, top_ks: Sequence[int]) -> list[list[Match]]:
        """Unfiltered queries (one row each) in one FAISS search: several queries cost little more
        than one, since FAISS spreads them over its threads."""
        self._vectors.adopt_build()
        if not len(self._entries):
            return [[] for _ in top_ks]
        # HNSW still holds deleted vectors; ask for enough to fill top_k after skipping them.
        k = min(max(top_ks) + self.tombstones, self._vectors.ntotal)
        scores, found = self._vectors.search(vectors, k)
        return [
            self._to_matches(self._live(row_scores, row_ids)[:top_k])
            for row_scores, row_ids, top_k in zip(scores.tolist(), found.tolist(), top_ks, strict=True)
        ]

    def vector(self, external: str) -> np.ndarray | None:
        faiss_id = self._entries.faiss_id(external)
        return None if faiss_id is None else self.vectors([faiss_id])[0]

    def vectors(self, faiss_ids: Sequence[int]) -> np.ndarray:
        """The stored (normalized) vectors of these live entries, one row each; an ivf index's are
        read back from 8 bits (engine.memory.vectors)."""
        if not faiss_ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._vectors.reconstruct(np.asarray(faiss_ids, dtype=np.int64))

    # -- persistence --------------------------------------------------------------------------------

    def to_parts(self) -> tuple[dict[str, Any], bytes]:
        """(JSON-able header, the FAISS index as bytes), taken at once; the header's `records` is
        a `Records` that the snapshot's writer turns into a list off the shard's thread
        (`records_of`). A build in progress is not in them: the index read back builds again when
        it is due."""
        header = {
            "dimension": self.dimension,
            "kind": self.kind,
            "trained_rows": self._vectors.trained_rows,
            "next_id": self._next_id,
            "records": self._entries.frozen(),
        }
        return header, self._vectors.to_bytes()

    @classmethod
    def from_parts(cls, header: dict[str, Any], index_bytes: bytes, params: IndexParams) -> NamespaceIndex:
        """Also reads the headers of earlier engines (kind `hnsw`, no `trained_rows`); a kind
        other than this engine's builds is rebuilt in the background when next written to."""
        dimension = int(header["dimension"])
        index = cls(dimension, params)
        index._vectors = Vectors.from_bytes(
            dimension, params, str(header["kind"]), index_bytes, int(header.get("trained_rows", 0))
        )
        index._next_id = int(header["next_id"])
        texts = []
        # In increasing FAISS id, the order the entries keep (every engine has written them so).
        records = sorted(records_of(header), key=lambda record: int(record[0]))
        for faiss_id, external, meta, *text in records:  # a text is there if it had one
            index._entries.add(int(faiss_id), external, meta, _encoded(text[0]) if text else None)
            if text and text[0]:
                texts.append((int(faiss_id), text[0]))
        index._add_texts(texts)
        index.commit()
        return index


def records_of(header: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """A header's records as a list: as read from a file, or frozen by `to_parts`."""
    records = header["records"]
    return records.to_list() if isinstance(records, Records) else list(records)


def _encoded(text: str | None) -> bytes | None:
    """A text as the entries keep it (UTF-8); None for none or an empty one. A text that is not
    valid Unicode (a lone surrogate) is refused."""
    if not text:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError as e:
        raise ValidationFailed(
            "text must be valid Unicode (it holds a lone surrogate)", {"field": "text"}
        ) from e


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
