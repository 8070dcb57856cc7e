"""Everything under the data directory is private to the engine's user, whatever the umask: every
file 0600 and every directory 0700 after real shards wrote, snapshotted, recovered and repaired."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.keys import add_key
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import UpsertVectors
from engine.models import files
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.sessions.snapshot import SNAPSHOT_PREFIX
from engine.storage.layout import claim_layout, memory_directory, shard_directory
from engine.storage.snapshot import snapshots
from engine.storage.wal import segments
from tests.support.modes import umask_of, wrong_modes


@pytest.fixture(params=[0o000, 0o277], ids=["umask-000", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The most permissive umask, and one that takes the owner's own bits away."""
    with umask_of(request.param):
        yield request.param


def test_every_file_a_shard_writes_is_0600_and_every_directory_0700(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    claim_layout(data, 1, 1)
    add_key(data / "keys.json", "acme")
    shard = DurableSessions(shard_directory(data, 0), DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
    sid = new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 60, {"pad": "x" * 100})])
    shard.snapshot_now()
    shard.commit([AppendMessages("acme", sid, (NewMessage("user", "hi"),))])
    shard.begin_snapshot()
    while shard.snapshot_step():
        pass
    (temporary,) = shard.directory.glob("*.tmp")  # a snapshot before its rename
    assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
    shard.finish_snapshot_io()
    shard.complete_snapshot()
    shard.commit([AppendMessages("acme", sid, (NewMessage("user", "after"),))])
    shard.close(snapshot=False)
    memory = DurableMemory(memory_directory(data, 0), DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    memory.commit([UpsertVectors("acme", "n", ("a",), np.ones((1, 2), dtype=np.float32), ({},))])
    memory.snapshot_now()
    memory.commit([UpsertVectors("acme", "n", ("b",), np.ones((1, 2), dtype=np.float32), ({},))])
    memory.close(snapshot=False)

    # A damaged newest snapshot is set aside and a damaged last record quarantined at the next start.
    directory = shard_directory(data, 0)
    newest = snapshots(directory, SNAPSHOT_PREFIX)[-1][1]
    newest.write_bytes(newest.read_bytes()[:-5])
    _, last = segments(directory)[-1]
    last.write_bytes(last.read_bytes()[:-3])
    again = DurableSessions(directory, DurabilityConfig(), ManualClock(), lock_wait_s=0.2)
    assert again.recovery.notes["damaged_snapshots"] and again.recovery.notes["cut_tails"]
    again.close()

    names = {p.name for p in data.rglob("*")}
    assert {"engine.json", "keys.json", "IDENTITY", "EPOCH", "LOCK", "shards", "memory"} <= names
    assert any(n.endswith(".quarantine") for n in names) and any(n.endswith(".damaged") for n in names)
    assert any(n.startswith("memory-0") and n.endswith(".snap") for n in names)
    assert wrong_modes(data) == {}


def test_a_converted_model_in_the_data_directory_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default summarizer is converted once into <data_dir>/models by transformers'
    save_pretrained, which writes with the umask's modes; here a stand-in writes the same way."""
    import transformers

    class Saved:
        hf_quantizer = None
        config = SimpleNamespace()

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Saved:
            return cls()

        def save_pretrained(self, directory: str) -> None:
            # As a library writes: plain makedirs and open, with the umask's modes.
            os.makedirs(os.path.join(directory, "nested"), exist_ok=True)  # noqa: PTH103, PTH118
            for name in ("config.json", "nested/weights.bin"):
                with open(os.path.join(directory, name), "w") as f:  # noqa: PTH123, PTH118
                    f.write("{}")

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Saved)
    monkeypatch.setattr(transformers, "AutoTokenizer", Saved)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    data = tmp_path / "data"
    with umask_of(0o000):
        target = files.converted_gguf(gguf, data / "models")
    assert (target / "nested" / "weights.bin").is_file()
    assert wrong_modes(data) == {}
