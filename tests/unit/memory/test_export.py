"""A memory shard's export cursor: the organization's own namespaces as they were when it opened,
whatever upserts and deletes come after; bounded, lapsing, closed; and ImportVectors, which skips
an id the namespace holds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.clock import ManualClock
from engine.errors import QuotaExceeded, Unavailable, ValidationFailed
from engine.memory.export import VectorCursor
from engine.memory.index import IndexParams, normalized
from engine.memory.ops import (
    CloseVectorExport,
    DeleteVectors,
    ImportVectors,
    OpenVectorExport,
    OpenVectorExports,
    UpsertVectors,
    VectorExportPage,
)
from engine.memory.sessions import SESSION_MEMORY
from engine.memory.store import MemoryStore

DIM = 3
PARAMS = IndexParams(approximate_above=20, background=False)
IDLE_MS = 1000


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return normalized(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def upsert(ns: str, ids: list[str], seed: int = 0, org: str = "acme", **kwargs: Any) -> UpsertVectors:
    metadata = tuple({"n": i} for i in range(len(ids)))
    texts = tuple(f"text of {i}" for i in ids)
    return UpsertVectors(org, ns, tuple(ids), vectors(len(ids), seed), metadata, texts=texts, **kwargs)


def store_with(*ops: Any) -> tuple[MemoryStore, ManualClock]:
    clock = ManualClock()
    store = MemoryStore(PARAMS, clock=clock)
    for op in ops:
        store.apply(op)
    return store, clock


def open_export(store: MemoryStore, export_id: str = "e1", org: str = "acme", **bounds: int) -> Any:
    limits = {"max_open": 8, "idle_ms": IDLE_MS, "max_per_org": 2, **bounds}
    return store.apply(OpenVectorExport(org, export_id, **limits))


def drain(
    store: MemoryStore, export_id: str = "e1", page: int = 2, org: str = "acme"
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    while True:
        answer = store.apply(VectorExportPage("acme", export_id, page))
        lines += answer["lines"]
        if answer["done"]:
            return lines


def by_id(lines: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(line["namespace"], line["id"]): line for line in lines}


def test_an_export_pages_out_every_own_vector_with_its_text_and_metadata() -> None:
    store, _ = store_with(upsert("b", ["x", "y", "z"], 1), upsert("a", ["p"], 2))
    store.apply(upsert(SESSION_MEMORY, ["s1#1"], 3))
    store.apply(upsert("a", ["q"], 4, org="other"))
    assert open_export(store)["namespaces"] == 2  # session memory and the other organization are not its
    lines = drain(store)
    assert [(line["namespace"], line["id"]) for line in lines] == [
        ("a", "p"),
        ("b", "x"),
        ("b", "y"),
        ("b", "z"),
    ]
    y = by_id(lines)[("b", "y")]
    assert y["kind"] == "vector" and y["text"] == "text of y" and y["metadata"] == {"n": 1}
    assert np.allclose(y["values"], vectors(3, 1)[1])
    assert store.apply(OpenVectorExports()) == {"exports": 0}  # done: closed


def test_an_upsert_after_the_open_is_not_in_the_export() -> None:
    store, _ = store_with(upsert("a", ["x", "y", "z"], 1))
    open_export(store)
    first = store.apply(VectorExportPage("acme", "e1", 1))["lines"]
    store.apply(upsert("a", ["new"], 5))
    store.apply(upsert("a", ["x", "z"], 6))  # replaces one paged out and one not yet
    store.apply(upsert("fresh", ["n1"], 7))
    lines = first + drain(store)
    assert [line["id"] for line in lines] == ["x", "y", "z"]
    assert np.allclose(by_id(lines)[("a", "z")]["values"], vectors(3, 1)[2])  # as it was at the open


def test_a_delete_after_the_open_does_not_remove_a_vector_from_the_export() -> None:
    store, _ = store_with(upsert("a", ["x", "y"], 1), upsert("b", ["only"], 2))
    open_export(store)
    store.apply(DeleteVectors("acme", "a", ("y",)))
    store.apply(DeleteVectors("acme", "b", ("only",)))  # empties the namespace: it is dropped
    store.apply(upsert("b", ["later"], 3))  # a new namespace of the same name, ids from 0 again
    lines = by_id(drain(store))
    assert set(lines) == {("a", "x"), ("a", "y"), ("b", "only")}
    assert lines[("a", "y")]["text"] == "text of y"
    assert np.allclose(lines[("b", "only")]["values"], vectors(1, 2)[0])


def test_the_cut_holds_in_an_approximate_namespace() -> None:
    ids = [f"v{i}" for i in range(30)]  # past approximate_above
    store, _ = store_with(upsert("big", ids, 1))
    open_export(store)
    store.apply(DeleteVectors("acme", "big", tuple(ids[:10])))
    store.apply(upsert("big", ["v29", "extra"], 2))
    lines = drain(store, page=7)
    assert [line["id"] for line in lines] == ids
    # An ivf index keeps 8-bit codes: what is exported is read back from them, near what went in.
    assert np.allclose([line["values"] for line in lines], vectors(30, 1), atol=0.02)


def test_cursors_are_bounded_lapse_and_close() -> None:
    store, clock = store_with(upsert("a", ["x"], 1))
    open_export(store, "e1")
    open_export(store, "e2")
    with pytest.raises(Unavailable):
        open_export(store, "e3")  # two of one organization's
    open_export(store, "o1", org="other", max_open=3)
    with pytest.raises(Unavailable):
        open_export(store, "o2", org="other", max_open=3)  # three on the shard
    store.apply(CloseVectorExport("acme", "e1"))
    store.apply(CloseVectorExport("other", "e2"))  # another organization's id closes nothing
    assert store.apply(OpenVectorExports()) == {"exports": 2}
    clock.advance(IDLE_MS // 2)
    assert store.apply(VectorExportPage("acme", "e2", 0)) == {"lines": [], "done": False}  # kept alive
    clock.advance(IDLE_MS // 2 + 1)
    open_export(store, "e4")  # sweeps the lapsed one of "other"
    assert store.apply(OpenVectorExports()) == {"exports": 2}
    with pytest.raises(Unavailable, match="gone"):
        store.apply(VectorExportPage("other", "o1", 10))


def test_a_copy_holds_its_vector_as_a_float32_row_until_its_line_is_written() -> None:
    store, _ = store_with(upsert("a", ["x", "y"], 1))
    index = dict(store.namespaces())[("acme", "a")]
    cursor = VectorCursor("acme", [("a", index)], 0, 0, IDLE_MS)
    cursor.keep_before_change("a", index, [index.faiss_id("y")])
    (copy,) = cursor._namespaces["a"].saved.values()
    assert copy.values.dtype == np.float32 and copy.values.nbytes == DIM * 4
    assert copy.values.base is None  # its own row, not a view holding a batch read with it
    lines, _ = cursor.next_page(10)
    assert isinstance(lines[1]["values"], list) and np.allclose(lines[1]["values"], vectors(2, 1)[1])


def test_a_lapsed_cursor_copies_nothing_and_is_dropped_by_the_next_change() -> None:
    store, clock = store_with(upsert("a", ["x", "y"], 1))
    open_export(store, "e1")
    clock.advance(IDLE_MS + 1)
    store.apply(upsert("a", ["x", "y"], 2))  # replaces every vector the cursor had not reached
    assert store.apply(OpenVectorExports()) == {"exports": 0}


def test_the_watermark_names_the_record_after_the_ops_of_its_batch() -> None:
    store, _ = store_with()
    store.log_position = lambda: 41
    store.apply(upsert("a", ["x"]))
    assert open_export(store)["watermark"] == 42  # the upsert is in the next record


def imported(ids: list[str], seed: int = 0, dim: int = DIM, **kwargs: Any) -> ImportVectors:
    metadata = tuple({"imported": i} for i in ids)
    texts = tuple(None for _ in ids)
    return ImportVectors("acme", "a", tuple(ids), vectors(len(ids), seed, dim), metadata, texts, **kwargs)


def test_an_import_skips_the_ids_the_namespace_holds_and_is_not_logged_when_it_adds_nothing() -> None:
    store, _ = store_with(upsert("a", ["x"], 1))
    store.take_journal()
    assert store.apply(imported(["x", "y"], 2)) == {"imported": 1, "skipped": 1}
    index = dict(store.namespaces())[("acme", "a")]
    x = index.faiss_id("x")
    assert x is not None and index.entry(x) == ("x", {"n": 0})  # not replaced
    assert len(store.take_journal()) == 1
    assert store.apply(imported(["x", "y"], 2)) is None
    assert store.take_journal() == []


def test_an_import_is_held_to_the_namespace_dimension_and_quota() -> None:
    store, _ = store_with(upsert("a", ["x"], 1))
    with pytest.raises(ValidationFailed, match="dimension 3, not 4"):
        store.apply(imported(["y"], dim=4))
    refused = store.apply_batch([imported(["y", "z"], max_vectors=2)])[0]
    assert isinstance(refused, QuotaExceeded)
