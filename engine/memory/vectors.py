"""The FAISS side of one namespace: which index holds its vectors, and building a new one in a
thread while the old one keeps answering.

Kinds:
- `flat`: exact inner product over float32 rows (`IndexIDMap2` over `IndexFlatIP`), for
  namespaces up to `approximate_above` vectors, so small namespaces (and every benchmark of
  ranking quality) are searched exactly. Past it a flat search scans more than an ivf search
  costs (benchmarks/README.md, "Session memory at scale").
- `ivf`: past that, an inverted file over 8-bit scalar-quantized rows (`IndexIVFScalarQuantizer`,
  not by residual, with a hash-table direct map so that single rows can be read back and removed).
  A row costs a quarter of its float32 size; a search scans the `nprobe` lists nearest the query.
  Removals are real (no tombstones).
- `hnsw`: the graph earlier engines built past the threshold (`IndexHNSWFlat`); only loaded from
  their snapshots, searched with tombstones for its deletes, and rebuilt as `ivf` in the background.

A build (flat to ivf, a grown ivf trained again, an old hnsw converted) copies the live rows on the
caller's thread (a memory copy; an ivf's codes, not decoded), then trains and fills the new index in
a thread of its own: FAISS releases the GIL there, so the shard goes on answering from the old
index. Every change made meanwhile is applied to the old index at once and kept in a list, which
is replayed onto the new index before it takes the old one's place (`adopt_build`, called by every
read and write). A build that fails leaves the old index as it was; it is logged and counted
(`build_failures`), and the next one waits until the namespace has grown by `_RETRY_GROWTH` or
`_RETRY_S` have passed, so a build that cannot succeed does not copy every row at every write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

_THREADS = faiss.omp_get_max_threads()
_KMEANS_ITERATIONS = 10  # FAISS's default is 25; the lists only steer the search, scanning is exact on codes
_TRAIN_PER_LIST = 40  # rows sampled per list to train on (FAISS warns below 39)
_BUILD_NICENESS = 10  # added to the shard's own for a background build (19 at most)
_RETRY_GROWTH = 0.25  # after a failed build, the next waits for this much growth ...
_RETRY_S = 600.0  # ... or this long
_RANGE_MARGIN = 0.2
_CHUNK = 65_536  # rows decoded and added at a time by a build, so it never holds all of them as float32

log = logging.getLogger(__name__)
# Failed builds in this process (a memory shard is a process of its own): its metrics expose it.
build_failures = 0


@dataclass(slots=True, frozen=True)
class IndexParams:
    approximate_above: int = 20_000  # past this many vectors a namespace is rebuilt as ivf
    ivf_nprobe: int = 16  # lists scanned by a search
    ivf_lists: int = 0  # 0: twice the square root of the rows at build time
    rebuild_growth: float = 4.0  # an ivf is trained again once it holds this many times its training rows
    exact_candidates: int = 2048  # a filter keeping at most this many rows is searched exactly
    build_threads: int = 1  # FAISS threads a background build uses; the rest answer queries
    lexical_prune_above: int = 50_000  # texts past which the most common query words are left out
    lexical_prune_share: float = 0.5  # ... those in more than this share of the texts
    hnsw_ef_search: int = 128  # for hnsw indexes read from older snapshots, until rebuilt
    background: bool = True  # False: builds run on the caller's thread (deterministic tests)


@dataclass(slots=True)
class _Build:
    """A new index being built in a thread, and the changes made to the old one since it began."""

    kind: str
    rows: int
    thread: threading.Thread | None = None
    index: Any = None
    error: BaseException | None = None
    changes: list[tuple[np.ndarray, np.ndarray | None]] = field(
        default_factory=list
    )  # (ids, rows or None: removed)


class Vectors:
    """A namespace's FAISS index: `flat`, `ivf` or (read from an older snapshot) `hnsw`."""

    def __init__(self, dimension: int, params: IndexParams) -> None:
        self.dimension = dimension
        self.params = params
        self.index: Any = _flat(dimension)
        self.kind = "flat"
        self.trained_rows = 0  # rows an ivf was trained with (its lists were sized for)
        self._build: _Build | None = None
        self._failed: tuple[int, float] | None = None  # the last failed build's (rows, monotonic time)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def building(self) -> bool:
        return self._build is not None

    # -- changes ------------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)
        if self._build is not None:
            self._build.changes.append((ids, vectors))

    def remove(self, ids: np.ndarray) -> None:
        """Gone from flat and ivf; an hnsw keeps them as tombstones (the caller skips them)."""
        if self.kind != "hnsw":
            self.index.remove_ids(ids)
        if self._build is not None:
            self._build.changes.append((ids, None))

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored rows of these ids (an ivf's decoded from 8 bits: near, not equal, to what went in)."""
        rows: np.ndarray = self.index.reconstruct_batch(ids)
        return rows

    # -- search -------------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, selector: Any = None, share: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's answer. `share`: the fraction of rows `selector` keeps; an ivf scans that many
        times more lists, so a filter still finds about as many rows as it would unfiltered."""
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.params.hnsw_ef_search, k))  # type: ignore[attr-defined]
        elif self.kind == "ivf":
            nlist = int(self.index.nlist)
            nprobe = min(nlist, math.ceil(self.params.ivf_nprobe / max(share, 1e-9)))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]
        else:
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        # One query on one thread: FAISS's threads would split a single search and cost more in
        # waking and waiting
        # (benchmarks/RESULTS.md#8-memory-queries-one-thread-for-one-query-one-faiss-call-for-several).
        faiss.omp_set_num_threads(1 if len(queries) == 1 else _THREADS)
        try:
            scores, found = self.index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(_THREADS)  # batches use them all
        return scores, found

    # -- builds -------------------------------------------------------------------------------------

    def due(self, live: int) -> str | None:
        """The kind a build should make now, if one is due: flat past the threshold, an ivf grown
        `rebuild_growth` times past its training, an hnsw from an older snapshot; else None."""
        if self._build is not None or self._backing_off(live):
            return None
        if self.kind == "flat":
            return "ivf" if live > self.params.approximate_above else None
        if self.kind == "hnsw":
            return "ivf" if live > self.params.approximate_above else "flat"
        if live <= self.params.approximate_above // 2:
            return "flat"  # shrunk far below the threshold: exact again
        return "ivf" if live > self.params.rebuild_growth * max(self.trained_rows, 1) else None

    def _backing_off(self, live: int) -> bool:
        if self._failed is None:
            return False
        rows, at = self._failed
        if live < rows * (1 + _RETRY_GROWTH) and time.monotonic() - at < _RETRY_S:
            return True
        self._failed = None
        return False

    def start_build(self, kind: str, live_ids: np.ndarray, *, background: bool = True) -> None:
        """Build a `kind` index over the rows of `live_ids` (every live row), in a thread unless
        `background` is False; `adopt_build` swaps it in once done."""
        source = self._copy_rows(live_ids)
        build = _Build(kind, len(live_ids))
        self._build = build

        def run() -> None:
            faiss.omp_set_num_threads(self.params.build_threads)  # this thread's own setting
            if background:
                _yield_to_queries()
            try:
                build.index = _make(kind, self.dimension, self.params, source)
            except BaseException as e:  # noqa: BLE001 - kept, and the old index stays
                build.error = e

        if background:
            build.thread = threading.Thread(target=run, name="faiss-build", daemon=True)
            build.thread.start()
        else:
            run()
        self.adopt_build(wait=not background)

    def adopt_build(self, *, wait: bool = False) -> bool:
        """Swap in a finished build, its missed changes replayed first; True if one was swapped.
        `wait`: wait for a build in progress."""
        build = self._build
        if build is None:
            return False
        if build.thread is not None:
            if wait:
                build.thread.join()
            elif build.thread.is_alive():
                return False
        self._build = None
        if build.error is not None or build.index is None:
            self._build_failed(build)  # the old index answers still
            return False
        for ids, rows in build.changes:
            if rows is None:
                build.index.remove_ids(ids)
            else:
                build.index.add_with_ids(rows, ids)
        self.index = build.index
        self.kind = build.kind
        self.trained_rows = build.rows if build.kind == "ivf" else 0
        return True

    def _build_failed(self, build: _Build) -> None:
        global build_failures  # the process's count, read by the shard's metrics
        build_failures += 1
        self._failed = (build.rows, time.monotonic())
        log.warning(
            "memory index build failed; the current index keeps answering",
            extra={
                "from_kind": self.kind,
                "to_kind": build.kind,
                "rows": build.rows,
                "retry_at_rows": math.ceil(build.rows * (1 + _RETRY_GROWTH)),
                "retry_after_s": _RETRY_S,
            },
            exc_info=build.error,
        )

    def _copy_rows(self, live_ids: np.ndarray) -> _Source:
        """What a build reads, copied now so the thread never touches the index being changed: an
        ivf's codes as they are (decoded in the thread), any other kind's rows as float32."""
        if self.kind == "ivf":
            ivf = self.index
            lists = ivf.invlists
            codes, ids = [], []
            for number in range(ivf.nlist):
                size = lists.list_size(number)
                if size:
                    codes.append(faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy())
                    ids.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
            quantizer = faiss.ScalarQuantizer(self.dimension, ivf.sq.qtype)
            quantizer.trained = ivf.sq.trained  # a copy of the vector
            return _Source(
                np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
                None,
                np.concatenate(codes).reshape(-1, lists.code_size) if codes else None,
                quantizer,
            )
        rows = self.index.reconstruct_batch(live_ids) if len(live_ids) else None
        return _Source(live_ids.copy(), rows, None, None)

    # -- persistence --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self.index).tobytes())

    @classmethod
    def from_bytes(
        cls, dimension: int, params: IndexParams, kind: str, data: bytes, trained_rows: int
    ) -> Vectors:
        vectors = cls(dimension, params)
        vectors.index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        vectors.kind = kind
        vectors.trained_rows = trained_rows or vectors.ntotal if kind == "ivf" else 0
        return vectors


@dataclass(slots=True)
class _Source:
    """A build's input: ids, with either float32 rows or 8-bit codes and the quantizer that made them."""

    ids: np.ndarray
    rows: np.ndarray | None
    codes: np.ndarray | None
    quantizer: Any

    def chunks(self) -> Any:
        for start in range(0, len(self.ids), _CHUNK):
            yield self.ids[start : start + _CHUNK], self.decoded(start, start + _CHUNK)

    def decoded(self, start: int, end: int) -> np.ndarray:
        if self.rows is not None:
            return np.ascontiguousarray(self.rows[start:end])
        assert self.codes is not None
        rows: np.ndarray = self.quantizer.decode(np.ascontiguousarray(self.codes[start:end]))
        return rows

    def sample(self, count: int) -> np.ndarray:
        picked = np.sort(
            np.random.default_rng(0).choice(len(self.ids), min(count, len(self.ids)), replace=False)
        )
        if self.rows is not None:
            return np.ascontiguousarray(self.rows[picked])
        assert self.codes is not None
        sampled: np.ndarray = self.quantizer.decode(np.ascontiguousarray(self.codes[picked]))
        return sampled


def _yield_to_queries() -> None:
    """Lower this thread's CPU priority, so that the shard's queries go first while a build runs.
        Linux gives each thread its own niceness, which starts as the shard's: the build's is that
    plus `_BUILD_NICENESS`. Where that is refused, the build keeps the shard's."""
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness + _BUILD_NICENESS))


def _flat(dimension: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _make(kind: str, dimension: int, params: IndexParams, source: _Source) -> Any:
    """A new index of `kind` holding every row of `source` (run in a build's thread)."""
    if kind == "flat":
        index = _flat(dimension)
    else:
        lists = params.ivf_lists or max(1, round(2 * math.sqrt(max(len(source.ids), 1))))
        lists = min(lists, max(1, len(source.ids) // _TRAIN_PER_LIST))
        coarse = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFScalarQuantizer(
            coarse, dimension, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
        )
        index.cp.niter = _KMEANS_ITERATIONS
        # Each dimension's 8 bits span the sample's range widened by a fifth on both sides, so that
        # rows added later, beyond the sample, are seldom clipped (the next build fits them again).
        index.sq.rangestat_arg = _RANGE_MARGIN
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        index.train(source.sample(lists * _TRAIN_PER_LIST))
    for ids, rows in source.chunks():
        index.add_with_ids(rows, ids)
    return index
