from __future__ import annotations

import sys

from engine.memory.entries import Entries
from engine.memory.index import IndexParams, NamespaceIndex

from .test_index import DIM, random_rows


def test_replaced_entries_leave_nothing_behind_and_ids_stay_in_increasing_order() -> None:
    entries = Entries()
    for faiss_id in range(10_000):  # one entry replaced again and again, a new FAISS id each time
        entries.remove("stand-in")
        entries.add(faiss_id, "stand-in", {"session_id": "s"}, None)
    entries.add(10_000, "other", {}, b"text")
    assert list(entries) == [9_999, 10_000]
    assert sys.getsizeof(entries._rows) < 1_000, "storage follows the live entries, not the ids issued"
    assert list(entries.frozen().to_list()) == [
        (9_999, "stand-in", {"session_id": "s"}),
        (10_000, "other", {}, "text"),
    ]


def test_removed_entries_release_their_strings_and_key_tuples() -> None:
    """Nothing of a removed entry is held: its value strings (interned while it lives) are back to
    the references they had before, and the key tuples, postings and rows are gone. Counted by
    references, not by memory measured in the process: in a whole run, what other tests left
    behind moves any measurement."""
    entries = Entries()
    values = [f"a unique value {i} " * 40 for i in range(5_000)]
    keys = [f"key{i}" for i in range(5_000)]
    before = [sys.getrefcount(v) for v in values[:50]] + [sys.getrefcount(k) for k in keys[:50]]
    for i in range(5_000):
        entries.add(i, f"v{i}", {keys[i]: values[i]}, None)
    assert sys.getrefcount(values[0]) > before[0], "an entry holds its value"
    for i in range(5_000):
        entries.remove(f"v{i}")
    after = [sys.getrefcount(v) for v in values[:50]] + [sys.getrefcount(k) for k in keys[:50]]
    assert after == before
    assert not entries._shapes and not entries._postings and not entries._rows and len(entries) == 0


def test_entries_shared_key_tuples_are_one_object_while_any_entry_uses_them() -> None:
    entries = Entries()
    entries.add(0, "a", {"session_id": "s", "role": "user"}, None)
    entries.add(1, "b", {"session_id": "s", "role": "assistant"}, None)
    assert entries._rows[0][2] is entries._rows[1][2]
    entries.remove("a")
    entries.add(2, "c", {"session_id": "s", "role": "user"}, None)
    assert entries._rows[1][2] is entries._rows[2][2]


def test_as_of_ids_and_a_snapshot_after_churn_follow_the_live_entries() -> None:
    index = NamespaceIndex(DIM, IndexParams())
    rows = random_rows(3)
    for _ in range(50):
        index.upsert(["stand-in"], rows[:1], [{"n": 1}])
    index.upsert(["a", "b"], rows[1:], [{"n": 2}, {"n": 3}], ["alpha", None])
    mark = index.next_id
    index.upsert(["c"], rows[:1], [{"n": 4}])
    assert index.ids_below(mark) == [49, 50, 51]
    header, data = index.to_parts()
    again = NamespaceIndex.from_parts(header, data, IndexParams())
    assert again.ids_below(again.next_id) == [49, 50, 51, 52]
    assert again.text(50) == "alpha" and again.entry(52) == ("c", {"n": 4})
