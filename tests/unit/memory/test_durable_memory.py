from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DurabilityConfig
from engine.errors import CorruptFile, ValidationFailed
from engine.memory import snapshot as memory_snapshot
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams, normalized
from engine.memory.ops import DeleteVectors, MemoryStats, QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY
from engine.memory.snapshot import SNAPSHOT_PREFIX
from engine.memory.store import MemoryStore
from engine.storage.layout import FORMAT_VERSION
from engine.storage.snapshot import SnapshotFile, open_snapshot, snapshots
from engine.storage.wal import segments

DIM = 4
PARAMS = IndexParams(approximate_above=20, background=False)


def rows(n: int, seed: int) -> np.ndarray:
    return normalized(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))


def upsert(org: str, ns: str, ids: list[str], seed: int = 0, dim: int = DIM) -> UpsertVectors:
    vectors = normalized(np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32))
    return UpsertVectors(org, ns, tuple(ids), vectors, tuple({"id": i} for i in ids))


def query(org: str, ns: str, k: int = 100, seed: int = 99) -> QueryVectors:
    return QueryVectors(org, ns, rows(1, seed)[0], k)


def everything(store: MemoryStore) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """Every namespace's full ranking for one probe: equal iff the same vectors and ids."""
    return {
        key: [(m.id, round(m.score, 5)) for m in index.query(rows(1, 99)[0], 1000)]
        for key, index in store.namespaces()
    }


def open_memory(path: Path, config: DurabilityConfig | None = None) -> DurableMemory:
    return DurableMemory(path, config or DurabilityConfig(), PARAMS, lock_wait_s=0.2)


def test_organizations_with_the_same_namespace_and_ids_never_see_each_other() -> None:
    store = MemoryStore(PARAMS)
    store.apply(upsert("acme", "notes", ["a", "b"], seed=1))
    store.apply(upsert("globex", "notes", ["a"], seed=2))
    assert {m.id for m in store.apply(query("acme", "notes"))} == {"a", "b"}
    assert [m.metadata for m in store.apply(query("globex", "notes"))] == [{"id": "a"}]
    store.apply(DeleteVectors("globex", "notes", ("a", "b")))
    assert len(store.apply(query("acme", "notes"))) == 2
    assert store.apply(query("globex", "notes")) == []


def test_a_namespace_keeps_its_dimension_until_it_is_empty() -> None:
    store = MemoryStore(PARAMS)
    store.apply(upsert("acme", "n", ["a"]))
    [wrong] = store.apply_batch([upsert("acme", "n", ["b"], dim=DIM + 1)])
    assert isinstance(wrong, ValidationFailed) and wrong.details["expected_dimension"] == DIM
    with pytest.raises(ValidationFailed):
        store.apply(QueryVectors("acme", "n", rows(1, 0)[0][:2], 3))
    assert store.apply(DeleteVectors("acme", "n", ("a",))) == {"deleted": 1}
    assert store.apply(upsert("acme", "n", ["b"], dim=DIM + 1)) == {"upserted": 1}
    assert store.apply(MemoryStats()) == {"namespaces": 1, "vectors": 1}
    assert len(store.take_journal()) == 3, "only the writes that succeeded are journaled"


ops = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "delete", "snapshot"]),
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["n1", "n2"]),
        st.lists(st.integers(0, 30), min_size=1, max_size=12),
        st.integers(0, 10_000),
    ),
    max_size=25,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_state_recovered_from_snapshots_and_log_equals_the_live_state(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, str, list[int], int]]
) -> None:
    path = tmp_path_factory.mktemp("memory")
    memory = open_memory(path)
    for kind, org, ns, numbers, seed in ops:
        ids = [f"v{n}" for n in numbers]
        if kind == "upsert":
            memory.commit([upsert(org, ns, ids, seed)])
        elif kind == "delete":
            memory.commit([DeleteVectors(org, ns, tuple(ids))])
        else:
            memory.snapshot_now()
    live = everything(memory.store)
    memory.close(snapshot=False)  # as if killed: the log since the last snapshot must replay
    again = open_memory(path)
    assert everything(again.store) == live
    again.close()
    assert everything(open_memory(path).store) == live  # and from the final snapshot alone


def test_a_snapshot_drops_the_log_and_older_snapshots_it_covers(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    memory.commit([upsert("acme", "n", [f"v{i}" for i in range(50)])])  # past approximate_above
    first = memory.snapshot_now()
    memory.commit([DeleteVectors("acme", "n", ("v1",))])
    second = memory.snapshot_now()
    memory.commit([DeleteVectors("acme", "n", ("v2",))])
    third = memory.snapshot_now()  # the one before it stays, as the fallback; older ones go
    assert [lsn for lsn, _ in snapshots(tmp_path, SNAPSHOT_PREFIX)] == [second.lsn, third.lsn]
    assert all(first_lsn > second.lsn for first_lsn, _ in segments(tmp_path)) and first.lsn < second.lsn
    memory.close()
    recovered = open_memory(tmp_path)
    assert recovered.recovery.records_replayed == 0 and len(recovered.store) == 48
    assert dict(recovered.store.namespaces())[("acme", "n")].kind == "ivf"


def test_a_torn_log_tail_loses_only_the_unacknowledged_record(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    memory.commit([upsert("acme", "n", ["a", "b"])])
    memory.commit([upsert("acme", "n", ["c"], seed=3)])
    memory.close(snapshot=False)
    [(_, segment)] = segments(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the last record was cut mid-write: it never returned
    recovered = open_memory(tmp_path)
    assert {m.id for m in recovered.store.apply(query("acme", "n"))} == {"a", "b"}
    recovered.commit([upsert("acme", "n", ["d"], seed=4)])  # the log goes on after the cut
    recovered.close(snapshot=False)
    assert {m.id for m in open_memory(tmp_path).store.apply(query("acme", "n"))} == {"a", "b", "d"}


def test_a_damaged_memory_snapshot_falls_back_to_the_one_before_it(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    memory.commit([upsert("acme", "n", ["a"])])
    memory.snapshot_now()
    memory.commit([upsert("acme", "n", ["b"], seed=2)])
    memory.close()
    _, (_, newest) = snapshots(tmp_path, SNAPSHOT_PREFIX)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    recovered = open_memory(tmp_path)
    assert {m.id for m in recovered.store.apply(query("acme", "n"))} == {"a", "b"}
    assert recovered.recovery.notes["damaged_snapshots"][0]["file"] == newest.name
    recovered.close()


def test_a_damaged_memory_snapshot_without_the_log_before_it_is_refused(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    memory.commit([upsert("acme", "n", ["a"])])
    memory.close()
    [(_, snap)] = snapshots(tmp_path, SNAPSHOT_PREFIX)
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    for _, segment in segments(tmp_path):
        if segment.stat().st_size > 8:
            segment.unlink()  # the records the snapshot held are gone with it
    with pytest.raises(CorruptFile, match=snap.name):
        open_memory(tmp_path)


def test_vectors_come_back_bit_for_bit(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    op = upsert("acme", "n", ["a", "b", "c"], seed=7)
    memory.commit([op])
    memory.close(snapshot=False)
    index: Any = dict(open_memory(tmp_path).store.namespaces())[("acme", "n")]
    assert np.array_equal(np.vstack([index.vector(i) for i in ("a", "b", "c")]), op.vectors)


def words(index_owner: Any, org: str, ns: str, text: str) -> list[str]:
    (found,) = index_owner.commit([QueryVectors(org, ns, None, 10, None, text, "lexical")])
    return sorted(m.id for m in found)


def test_texts_and_their_word_index_survive_snapshot_and_log(tmp_path: Path) -> None:
    memory = open_memory(tmp_path)
    texts = upsert("acme", "notes", ["a", "b", "c"], seed=1)
    texts = UpsertVectors(texts.org, texts.namespace, texts.ids, texts.vectors, texts.metadata,
                          texts=("lisbon trams", None, "porto wine"))  # fmt: skip
    memory.commit([texts])
    memory.snapshot_now()
    later = UpsertVectors("acme", "notes", ("d",), rows(1, 5), ({},), texts=("lisbon castle",))
    memory.commit([later, DeleteVectors("acme", "notes", ("a",))])
    assert words(memory, "acme", "notes", "lisbon") == ["d"]
    memory.close(snapshot=False)
    again = open_memory(tmp_path)  # snapshot with texts, then the log after it
    assert words(again, "acme", "notes", "lisbon") == ["d"] and words(again, "acme", "notes", "porto") == [
        "c"
    ]
    again.close(snapshot=True)
    third = open_memory(tmp_path)  # a snapshot alone
    assert words(third, "acme", "notes", "lisbon wine") == ["c", "d"]
    third.close()


def test_a_snapshot_the_disk_refuses_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = open_memory(tmp_path)
    memory.commit([upsert("acme", "n", ["a", "b"])])

    def refused(self: object, payload: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SnapshotFile, "write_bytes", refused)
    with pytest.raises(OSError, match="No space"):
        memory.snapshot_now()
    assert not list(tmp_path.glob("*.tmp")) and snapshots(tmp_path, SNAPSHOT_PREFIX) == []
    monkeypatch.undo()
    memory.snapshot_now()  # the next one goes through
    assert len(snapshots(tmp_path, SNAPSHOT_PREFIX)) == 1
    memory.close(snapshot=False)


def test_a_namespaces_records_past_a_frames_share_are_split_over_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"turn-{i}" for i in range(40)]
    texts = tuple(f"words of turn {i} " * (1 + i % 5) for i in range(40))
    written = upsert("acme", "big", ids, seed=3)
    written = UpsertVectors("acme", "big", written.ids, written.vectors, written.metadata, texts=texts)
    small = upsert("acme", "small", ["a", "b"], seed=4)
    memory = open_memory(tmp_path)
    memory.commit([written, small, DeleteVectors("acme", "big", ("turn-7",))])
    before = everything(memory.store)
    monkeypatch.setattr(memory_snapshot, "_RECORDS_PER_CHUNK", 3)
    monkeypatch.setattr(memory_snapshot, "_RECORD_BYTES", 600)
    memory.snapshot_now()
    memory.close(snapshot=False)
    [(_, path)] = snapshots(tmp_path, SNAPSHOT_PREFIX)
    _, frames = open_snapshot(path, memory_snapshot.SNAPSHOT_MAGIC, FORMAT_VERSION)
    headers = [orjson.loads(payload) for _, payload in frames if payload.startswith(b'{"org"')]
    split = {header["namespace"]: header.get("record_frames", 0) for header in headers}
    assert split["big"] > 1 and split["small"] == 0
    assert all(len(orjson.dumps(header["records"])) <= 600 for header in headers)
    again = open_memory(tmp_path)
    assert everything(again.store) == before
    assert words(again, "acme", "big", "39") == ["turn-39"] and words(again, "acme", "big", "7") == []
    index = dict(again.store.namespaces())[("acme", "big")]
    assert index.text(index.faiss_id("turn-39") or 0) == texts[39] and len(index) == 39
    again.close()


def test_records_in_one_frame_are_written_as_every_engine_has() -> None:
    records = [(i, f"id{i}", {"k": "v" * (i % 7)}, "text " * i) for i in range(50)]
    assert memory_snapshot._record_arrays(records) == [orjson.dumps(records)]
    assert memory_snapshot._record_arrays([]) == [b"[]"]


def test_an_earlier_engines_stored_windows_are_gone_after_recovery(tmp_path: Path) -> None:
    """Windows of turns are made at query time; the window entries one earlier engine wrote into
    session memory are dropped when a shard recovers, from its snapshot and from its log, and a
    snapshot taken after that holds none."""
    memory = open_memory(tmp_path)

    def turns(ids: list[str], kind: str) -> UpsertVectors:
        metadata = tuple({"session_id": "s", "kind": kind, "seq": int(i.split("#")[1])} for i in ids)
        return UpsertVectors("acme", SESSION_MEMORY, tuple(ids), rows(len(ids), 1), metadata)

    memory.commit([turns(["s#1", "s#2"], "turn"), turns(["s#1#window"], "window")])
    memory.snapshot_now()
    user = UpsertVectors("acme", "n", ("w",), rows(1, 2), ({"kind": "window", "session_id": "s"},))
    memory.commit([turns(["s#2#window"], "window"), user])
    memory.close()
    recovered = open_memory(tmp_path)
    index = dict(recovered.store.namespaces())[("acme", SESSION_MEMORY)]
    assert {index.entry(i)[0] for i in index.ids_below(index.next_id)} == {"s#1", "s#2"}  # type: ignore[index]
    assert len(recovered.store) == 3, "a user namespace's entries of kind window are left as they were"
    recovered.snapshot_now()
    recovered.close()
    assert len(open_memory(tmp_path).store) == 3
