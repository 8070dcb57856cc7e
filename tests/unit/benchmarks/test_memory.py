"""The session-memory benchmark's data (benchmarks/memory.py): the offline writer leaves a data
directory whose memory shard recovers, from its snapshot, with every turn and session entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.memory import session_memory_batches, write_session_memory
from engine.config import load_config
from engine.memory.durable import recover
from engine.memory.index import IndexParams, normalized
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY
from engine.routing import memory_shard_for
from engine.storage.layout import memory_directory, read_layout


def test_batches_write_every_turn_in_sessions_of_twenty() -> None:
    rng = np.random.default_rng(0)
    vectors = normalized(rng.standard_normal((45, 8), dtype=np.float32))
    batches = list(session_memory_batches("org", vectors, rng, chunk=20))
    turns = [op for ops in batches for op in ops if op.namespace == SESSION_MEMORY]
    sessions = [op for ops in batches for op in ops if op.namespace == SESSIONS_OF_MEMORY]
    assert [len(op.ids) for op in turns] == [20, 20, 5]
    assert turns[2].ids[-1] == "s2#5"
    assert {i for op in sessions for i in op.ids} == {"s0", "s1", "s2"}
    assert all(len(text.split()) == 12 for op in turns for text in op.texts)


def test_written_data_directory_recovers_its_turns_from_the_snapshot(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    probes, texts = write_session_memory(data_dir, 120, "bench", dimension=16, queries=4)
    config = load_config(None)
    assert read_layout(data_dir)["memory_shards"] == config.memory.shards  # type: ignore[index]
    directory = memory_directory(data_dir, memory_shard_for("bench", config.memory.shards))
    store, _, recovery = recover(directory, IndexParams(**config.memory.index.model_dump()), repair=False)
    held = {namespace: len(index) for (org, namespace), index in store.namespaces() if org == "bench"}
    assert held == {SESSION_MEMORY: 120, SESSIONS_OF_MEMORY: 6}
    assert recovery.records_replayed == 0  # all of it in the snapshot
    assert probes.shape == (4, 16)
    assert len(texts) == 4
