from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ValidationFailed
from engine.memory import vectors as vectors_module
from engine.memory.index import IndexParams, NamespaceIndex, normalized
from engine.memory.ops import DeleteVectors, QueryVectors, UpsertVectors
from engine.memory.store import MemoryStore

DIM = 8


def unit(*values: float) -> np.ndarray:
    row = np.zeros(DIM, dtype=np.float32)
    row[: len(values)] = values
    return normalized(row.reshape(1, DIM))


def random_rows(n: int, seed: int = 0) -> np.ndarray:
    return normalized(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))


def filled(n: int, params: IndexParams | None = None, seed: int = 0) -> NamespaceIndex:
    index = NamespaceIndex(DIM, params or IndexParams())
    index.upsert(
        [f"v{i}" for i in range(n)], random_rows(n, seed), [{"i": i, "even": i % 2 == 0} for i in range(n)]
    )
    return index


def brute_force(rows: np.ndarray, live: list[int], query: np.ndarray, k: int) -> list[str]:
    scores = rows[live] @ query.reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [f"v{live[i]}" for i in order]


def test_the_closest_vector_comes_first_with_its_cosine_score_and_metadata() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    index.upsert(["a", "b"], np.vstack([unit(1, 0), unit(0, 1)]), [{"topic": "x"}, {"topic": "y"}])
    matches = index.query(unit(1, 0.1), top_k=2)
    assert [m.id for m in matches] == ["a", "b"]
    assert matches[0].score == pytest.approx(1 / np.sqrt(1.01), abs=1e-5)
    assert matches[0].metadata == {"topic": "x"}


def test_an_upsert_replaces_an_existing_id_and_the_last_duplicate_in_a_batch_wins() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    index.upsert(["a"], unit(1, 0), [{"n": 1}])
    index.upsert(["a", "a"], np.vstack([unit(0, 1), unit(0, 0, 1)]), [{"n": 2}, {"n": 3}])
    assert len(index) == 1 and index.tombstones == 0
    [match] = index.query(unit(0, 0, 1), top_k=5)
    assert (match.id, match.metadata) == ("a", {"n": 3})
    assert index.query(unit(1, 0), top_k=5)[0].score < 0.01


def test_deleted_ids_never_come_back_and_unknown_ids_count_nothing() -> None:
    index = filled(10)
    assert index.delete(["v1", "v2", "nope", "v1"]) == 2
    assert len(index) == 8
    found = {m.id for m in index.query(unit(1), top_k=100)}
    assert found == {f"v{i}" for i in range(10)} - {"v1", "v2"}


def test_filters_are_equality_on_every_key_and_keep_json_types_apart() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    meta: list[dict[str, Any]] = [
        {"k": 1},
        {"k": True},
        {"k": 1.5},
        {"k": "1"},
        {"k": None},
        {"k": 1, "z": "a"},
    ]
    index.upsert([f"m{i}" for i in range(6)], random_rows(6), meta)
    ids = lambda where: sorted(m.id for m in index.query(unit(1), 10, where))  # noqa: E731
    assert ids({"k": 1}) == ["m0", "m5"]
    assert ids({"k": True}) == ["m1"]
    assert ids({"k": 1.5}) == ["m2"]
    assert ids({"k": "1"}) == ["m3"]
    assert ids({"k": None}) == ["m4"]
    assert ids({"k": 1, "z": "a"}) == ["m5"]
    assert ids({"k": 2}) == [] and ids({"missing": 1}) == []


def test_a_filter_still_returns_top_k_when_its_matches_are_far_down_the_ranking() -> None:
    index = filled(500)
    rows = random_rows(500)
    query = unit(1, 1)
    expected = brute_force(rows, [i for i in range(500) if i % 2 == 0], query, 5)
    assert [m.id for m in index.query(query, 5, {"even": True})] == expected


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    deletes=st.sets(st.integers(0, 59)),
    k=st.integers(1, 70),
    seed=st.integers(0, 1000),
)
def test_flat_results_equal_brute_force(n: int, deletes: set[int], k: int, seed: int) -> None:
    index = filled(n, seed=seed)
    index.delete([f"v{i}" for i in deletes])
    rows = random_rows(n, seed)
    live = [i for i in range(n) if i not in deletes]
    query = random_rows(1, seed + 1)
    assert [m.id for m in index.query(query, k)] == brute_force(rows, live, query, k)


def test_a_namespace_past_the_threshold_becomes_ivf_and_still_finds_neighbours() -> None:
    params = IndexParams(approximate_above=200, background=False)
    index = filled(150, params)
    assert index.kind == "flat"
    index.upsert(
        [f"v{i}" for i in range(150, 400)], random_rows(400)[150:], [{"i": i} for i in range(150, 400)]
    )
    assert index.kind == "ivf" and len(index) == 400
    rows = random_rows(400)
    hits = 0
    for q in range(20):
        query = random_rows(1, 100 + q)
        hits += index.query(query, 1)[0].id == brute_force(rows, list(range(400)), query, 1)[0]
    assert hits >= 18, "8-bit codes are approximate, but on 400 vectors they should almost always agree"
    read_back = index.vectors([index.faiss_id("v7")])[0]  # type: ignore[list-item]
    assert float(read_back @ rows[7]) > 0.99  # read back from 8 bits a dimension


def test_ivf_deletes_are_real_and_a_filter_on_few_entries_is_searched_exactly() -> None:
    index = filled(400, IndexParams(approximate_above=200, background=False))
    index.delete([f"v{i}" for i in range(40)])
    assert index.kind == "ivf" and index.tombstones == 0 and len(index) == 360
    found = index.query(unit(1), top_k=400)
    assert not {m.id for m in found} & {f"v{i}" for i in range(40)}
    rows = random_rows(400)
    query = random_rows(1, 7)
    live_odd = [i for i in range(40, 400) if i % 2]
    expected = brute_force(rows, live_odd, query, 5)
    assert [m.id for m in index.query(query, 5, {"even": False})] == expected  # 180: exact


def test_a_namespace_shrunk_far_below_the_threshold_is_exact_again() -> None:
    index = filled(400, IndexParams(approximate_above=200, background=False))
    index.delete([f"v{i}" for i in range(310)])
    assert index.kind == "flat" and len(index) == 90


class HeldBuild:
    """Holds every background build until released, so a test can write while one runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.release = threading.Event()
        make = vectors_module._make

        def held(*args: Any) -> Any:
            self.release.wait(10)
            if fail:
                raise RuntimeError("the build failed")
            return make(*args)

        monkeypatch.setattr(vectors_module, "_make", held)


def test_writes_during_a_background_build_are_replayed_onto_the_new_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = HeldBuild(monkeypatch)
    rows = random_rows(500)
    index = filled(250, IndexParams(approximate_above=200))
    assert index.building and index.kind == "flat"
    index.upsert([f"v{i}" for i in range(250, 500)], rows[250:], [{"i": i} for i in range(250, 500)])
    index.delete([f"v{i}" for i in range(0, 500, 10)])
    index.upsert(["v1"], unit(1), [{"moved": True}])
    assert index.query(rows[3], 1)[0].id == "v3"  # answered by the flat index meanwhile
    held.release.set()
    assert index.wait_for_build() and index.kind == "ivf" and not index.building
    assert len(index) == 450 and index.tombstones == 0
    for i in (3, 261, 499):
        assert index.query(rows[i], 1)[0].id == f"v{i}"
    assert index.query(unit(1), 1)[0].id == "v1"
    assert not {m.id for m in index.query(rows[10], 20)} & {"v10", "v20"}
    assert "v1" not in {m.id for m in index.query(rows[1], 3)}  # its old vector is gone


def test_a_failed_build_leaves_the_old_index_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    held = HeldBuild(monkeypatch, fail=True)
    index = filled(250, IndexParams(approximate_above=200))
    held.release.set()
    assert not index.wait_for_build()
    assert index.kind == "flat" and len(index) == 250
    assert index.query(random_rows(250)[5], 1)[0].id == "v5"


def test_a_failed_build_is_logged_counted_and_not_retried_until_the_namespace_grows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    builds: list[int] = []

    def failing(*args: Any) -> Any:
        builds.append(len(args[3].ids))
        raise RuntimeError("the build failed")

    monkeypatch.setattr(vectors_module, "_make", failing)
    failures = vectors_module.build_failures
    index = filled(250, IndexParams(approximate_above=200, background=False))
    rows = random_rows(400, seed=1)
    for i in range(62):  # each write would have copied every row for a new try
        index.upsert([f"w{i}"], rows[i : i + 1], [{}])
    assert builds == [250] and vectors_module.build_failures == failures + 1
    assert [r.message for r in caplog.records].count(
        "memory index build failed; the current index keeps answering"
    ) == 1
    assert index.kind == "flat" and index.query(rows[3], 1)[0].id == "w3"
    index.upsert(["x"], rows[100:101], [{}])  # 313 rows: grown by a quarter since the failure
    assert builds == [250, 313]


def test_a_background_build_adds_its_niceness_to_the_shards_own(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[int] = []
    monkeypatch.setattr(vectors_module.os, "getpriority", lambda which, who: 5)
    monkeypatch.setattr(vectors_module.os, "setpriority", lambda which, who, value: set_to.append(value))
    vectors_module._yield_to_queries()
    monkeypatch.setattr(vectors_module.os, "getpriority", lambda which, who: 12)
    vectors_module._yield_to_queries()
    assert set_to == [15, 19]


def test_an_upsert_refused_midway_changes_neither_faiss_nor_the_entries() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    rows = random_rows(3)
    index.upsert(["a"], rows[:1], [{"n": 1}], ["first"])
    with pytest.raises(ValidationFailed):
        index.upsert(["a", "b"], rows[1:], [{"n": 2}, {"n": 3}], ["fine", "lone \ud800 surrogate"])
    assert len(index) == 1 and index.tombstones == 0 and index.next_id == 1
    assert index.text(0) == "first" and index.entry(0) == ("a", {"n": 1})
    assert [m.id for m in index.query(rows[0], 5)] == ["a"]
    assert [m.id for m in index.query(None, 5, text="first", mode="lexical")] == []  # not committed yet
    index.commit()
    assert [m.id for m in index.query(None, 5, text="first", mode="lexical")] == ["a"]


def legacy_hnsw_parts(n: int) -> tuple[dict[str, Any], bytes]:
    """A namespace as an earlier engine wrote it past its threshold: HNSW, and v0 deleted (a tombstone)."""
    inner = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw = faiss.IndexIDMap2(inner)
    hnsw.add_with_ids(random_rows(n), np.arange(n, dtype=np.int64))
    records = [[i, f"v{i}", {"i": i}] for i in range(1, n)]
    header = {"dimension": DIM, "kind": "hnsw", "next_id": n, "records": records}
    return header, faiss.serialize_index(hnsw).tobytes()


def test_an_older_snapshots_hnsw_index_loads_and_is_converted_on_its_first_write() -> None:
    header, data = legacy_hnsw_parts(300)
    index = NamespaceIndex.from_parts(header, data, IndexParams(approximate_above=200, background=False))
    assert index.kind == "hnsw" and index.tombstones == 1 and len(index) == 299
    rows = random_rows(300)
    assert index.query(rows[0], 3)[0].id != "v0"
    assert index.query(rows[5], 1)[0].id == "v5"
    index.delete(["v9"])
    assert index.kind == "ivf" and index.tombstones == 0 and len(index) == 298
    assert index.query(rows[5], 1)[0].id == "v5"


def test_a_namespace_survives_serialization_with_its_ids_metadata_and_counter() -> None:
    index = filled(30)
    index.delete(["v3"])
    header, data = index.to_parts()
    again = NamespaceIndex.from_parts(header, data, IndexParams())
    query = random_rows(1, 9)
    assert [(m.id, m.metadata) for m in again.query(query, 30)] == [
        (m.id, m.metadata) for m in index.query(query, 30)
    ]
    again.upsert(["new"], unit(1), [{}])
    assert again.query(unit(1), 1)[0].id == "new"
    assert len(again) == 30


def test_zero_and_non_finite_vectors_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="zeros"):
        normalized(np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(ValidationFailed, match="finite"):
        normalized(np.array([[np.nan] * DIM], dtype=np.float32))
    huge = normalized(np.full((1, DIM), 3e38, dtype=np.float32))
    assert np.linalg.norm(huge) == pytest.approx(1.0, abs=1e-5)


def filled_store(params: IndexParams) -> MemoryStore:
    store = MemoryStore(params)
    ids = tuple(f"v{i}" for i in range(300))
    metadata = tuple({"i": i % 3} for i in range(300))
    for org in ("acme", "globex"):
        store.apply(UpsertVectors(org, "docs", ids, random_rows(300), metadata))
    store.apply(DeleteVectors("acme", "docs", ("v1", "v2", "v3")))
    return store


@pytest.mark.parametrize("approximate_above", [10_000, 100], ids=["flat", "ivf"])
def test_queries_in_one_batch_answer_as_they_would_one_at_a_time(approximate_above: int) -> None:
    # A store searches a run of unfiltered queries on a namespace in one FAISS call; the answers,
    # errors included, must be those of applying each query alone, in order.
    params = IndexParams(approximate_above=approximate_above, background=False)
    store, alone = filled_store(params), filled_store(params)
    queries = [random_rows(1, 50 + i)[0] for i in range(6)]
    ops = [
        QueryVectors("acme", "docs", queries[0], 5),
        QueryVectors("acme", "docs", queries[1], 12),
        QueryVectors("globex", "docs", queries[2], 3),
        QueryVectors("acme", "docs", queries[3], 4, {"i": 1}),
        QueryVectors("acme", "nowhere", queries[4], 4),
        QueryVectors("acme", "docs", np.ones(DIM + 1, dtype=np.float32), 4),
        DeleteVectors("acme", "docs", ("v4",)),
        QueryVectors("acme", "docs", queries[5], 5),
        QueryVectors("acme", "docs", queries[0], 5),
    ]
    batched = store.apply_batch(ops)
    expected = [alone.apply_batch([op])[0] for op in ops]
    assert [type(r) for r in batched] == [type(r) for r in expected]
    for got, want in zip(batched, expected, strict=True):
        if isinstance(want, list):
            assert [(m.id, round(m.score, 5), m.metadata) for m in got] == [
                (m.id, round(m.score, 5), m.metadata) for m in want
            ]
        else:
            assert str(got) == str(want)
    assert all(m.id != "v4" for m in batched[-1]), "a query after a delete in the same batch sees it"
    assert len(batched[1]) == 12 and len(batched[2]) == 3


def test_filters_with_operators() -> None:
    index = filled(20)
    ids = lambda where: {m.id for m in index.query(random_rows(1, 7)[0], 50, where)}  # noqa: E731
    assert ids({"i": {"$gte": 15}}) == {f"v{i}" for i in range(15, 20)}
    assert ids({"i": {"$gt": 3, "$lte": 5}}) == {"v4", "v5"}
    assert ids({"i": {"$in": [1, 2, 99]}, "even": True}) == {"v2"}
    assert ids({"i": {"$ne": 0}, "even": {"$eq": True}}) == {f"v{i}" for i in range(2, 20, 2)}
    assert ids({"i": {"$lt": "x"}}) == set(), "a number never compares with a string"
    assert ids({"even": {"$gte": 0}}) == set(), "true and false are not numbers"
    assert ids({"missing": {"$gte": 0}}) == set()


def test_hybrid_and_lexical_queries_over_upserted_texts() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    rows = np.vstack([unit(1), unit(0, 1), unit(0, 0, 1)])
    index.upsert(["a", "b", "c"], rows, [{}, {}, {}], ["red kayak on the lake", None, "blue bicycle"])
    index.commit()
    assert [m.id for m in index.query(None, 5, text="kayak", mode="lexical")] == ["a"]
    near_c = unit(0.2, 0, 1)[0]
    assert [m.id for m in index.query(near_c, 3)] == ["c", "a", "b"]
    hybrid = index.query(near_c, 3, text="kayak", mode="hybrid")
    # dense scaled: c 1, a ~0.2, b 0; lexical: a 1. Halved: a ~0.6, c 0.5, b 0.
    assert [m.id for m in hybrid] == ["a", "c", "b"]
    assert [round(m.score, 2) for m in hybrid] == [0.6, 0.5, 0.0]
    index.upsert(["a"], random_rows(1, 9), [{}])  # replaced without a text: its words go
    index.commit()
    assert index.query(None, 5, text="kayak", mode="lexical") == []
