"""Data an older release wrote is read by this one, and data a newer release wrote is refused in
one line: the fixture tests/fixtures/data-format-1 (made by make_data_format_1.py beside it) is
opened on a copy with the shards' own stores, without Ray."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.check import REFUSED, check_data_dir
from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import StartupError
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.snapshot import SNAPSHOT_MAGIC as MEMORY_MAGIC
from engine.memory.snapshot import SNAPSHOT_PREFIX as MEMORY_PREFIX
from engine.routing import shard_for
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import GetSession
from engine.sessions.snapshot import SNAPSHOT_MAGIC, SNAPSHOT_PREFIX
from engine.storage.frames import frame, read_frames
from engine.storage.layout import FORMAT_VERSION, LAYOUT_FILE, memory_directory, shard_directory
from engine.storage.snapshot import open_snapshot, snapshots
from engine.storage.wal import segments
from session_engine import cli

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data-format-1"
EXPECTED: dict[str, Any] = orjson.loads((FIXTURE / "expected.json").read_bytes())
SHARDS = int(EXPECTED["server_env"]["SESSION_ENGINE_SHARDS"])


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The fixture's data directory, copied: a start may write (a new epoch, a new log segment)."""
    return Path(shutil.copytree(FIXTURE / "data", tmp_path / "data"))


@pytest.fixture
def session_shards(copy: Path) -> Iterator[list[DurableSessions]]:
    # The clock of the day the fixture was made: its active sessions' deadlines have not passed.
    clock = ManualClock(EXPECTED["recorded_at"])
    shards = [
        DurableSessions(shard_directory(copy, i), DurabilityConfig(), clock, lock_wait_s=0.2)
        for i in range(SHARDS)
    ]
    yield shards
    for shard in shards:
        shard.close(snapshot=False)


def test_the_fixture_holds_a_snapshot_and_log_records_after_it_in_every_shard() -> None:
    data = FIXTURE / "data"
    for directory, prefix in [(shard_directory(data, i), SNAPSHOT_PREFIX) for i in range(SHARDS)] + [
        (memory_directory(data, 0), MEMORY_PREFIX)
    ]:
        (lsn, _), *_ = snapshots(directory, prefix)
        assert any(first > lsn for first, _ in segments(directory)), directory


def test_every_session_reads_back_as_the_api_answered(session_shards: list[DurableSessions]) -> None:
    for expected in EXPECTED["sessions"]:
        shard = session_shards[shard_for(expected["org"], expected["id"], SHARDS)]
        view = shard.store.apply(GetSession(expected["org"], expected["id"]), EXPECTED["recorded_at"])
        for field in ("id", "name", "status", "message_count", "context", "version", "expires_at"):
            assert view[field] == expected[field], (expected["name"], field)
        assert view["messages"] == expected["messages"], expected["name"]


def test_recovery_starts_from_the_fixtures_snapshot_and_sets_nothing_aside(
    session_shards: list[DurableSessions], copy: Path
) -> None:
    """An older snapshot passed over as damaged would still leave every session readable (the log
    holds them all): the store must start from the snapshot the older release wrote."""
    for i, shard in enumerate(session_shards):
        lsn, _ = snapshots(shard_directory(FIXTURE / "data", i), SNAPSHOT_PREFIX)[-1]  # the newest
        assert shard.recovery.snapshot_lsn == lsn
        assert shard.recovery.notes == {"damaged_snapshots": [], "cut_tails": []}
    memory = DurableMemory(memory_directory(copy, 0), DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    try:
        lsn, _ = snapshots(memory_directory(FIXTURE / "data", 0), MEMORY_PREFIX)[-1]
        assert memory.recovery.snapshot_lsn == lsn
        assert memory.recovery.notes == {"damaged_snapshots": [], "cut_tails": []}
    finally:
        memory.close(snapshot=False)


def test_the_indexed_sessions_summary_reads_back(session_shards: list[DurableSessions]) -> None:
    sid = EXPECTED["indexed"]["session_id"]
    shard = session_shards[shard_for("acme", sid, SHARDS)]
    view = shard.store.apply(GetSession("acme", sid), EXPECTED["recorded_at"])
    assert view["summary"] == EXPECTED["indexed"]["summary"]
    assert view["index_status"] == "ready"


def test_every_vector_reads_back_with_its_text_and_metadata(copy: Path) -> None:
    memory = DurableMemory(memory_directory(copy, 0), DurabilityConfig(), IndexParams(), lock_wait_s=0.2)
    try:
        namespaces = dict(memory.store.namespaces())
        for org, by_namespace in EXPECTED["vectors"].items():
            for namespace, ids in by_namespace.items():
                index = namespaces[(org, namespace)]
                for vector_id in ids:
                    faiss_id = index.faiss_id(vector_id)
                    assert faiss_id is not None, vector_id
                    assert index.entry(faiss_id) == (vector_id, EXPECTED["vector_metadata"][vector_id])
                    assert index.text(faiss_id), vector_id
        assert ("acme", "session-memory") in namespaces  # the closed session, indexed: no re-embedding
    finally:
        memory.close(snapshot=False)


def test_check_says_the_fixture_is_clean(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(copy)]) == 0
    assert capsys.readouterr().out.count("ok: ") == SHARDS + 1


def newer(data_dir: Path) -> str:
    layout = orjson.loads((data_dir / LAYOUT_FILE).read_bytes())
    (data_dir / LAYOUT_FILE).write_bytes(orjson.dumps({**layout, "format": FORMAT_VERSION + 1}))
    return (
        f"{data_dir / LAYOUT_FILE} was written by a newer release (format {FORMAT_VERSION + 1}); "
        f"this release reads format {FORMAT_VERSION}"
    )


def test_serve_refuses_a_newer_data_directory_in_one_line(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = newer(copy)
    assert cli.main(["serve", "--data-dir", str(copy)]) == 2
    assert capsys.readouterr().err == f"session-engine: {line}\n"


def test_check_refuses_a_newer_data_directory_with_the_same_line(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = newer(copy)
    assert cli.main(["check", str(copy)]) == REFUSED
    assert f"REFUSED: a start would stop here: {line}" in capsys.readouterr().out
    assert [r.kind for r in check_data_dir(copy)] == ["data directory"]


def with_newer_header(path: Path, magic: bytes) -> None:
    """Rewrite the snapshot's header as a newer release would have written it."""
    frames = list(read_frames(path, magic))
    header = {**orjson.loads(frames[0][1]), "format": FORMAT_VERSION + 1}
    path.write_bytes(magic + frame(orjson.dumps(header)) + b"".join(frame(p) for _, p in frames[1:]))


@pytest.mark.parametrize(
    ("place", "prefix", "magic"),
    [(shard_directory, SNAPSHOT_PREFIX, SNAPSHOT_MAGIC), (memory_directory, MEMORY_PREFIX, MEMORY_MAGIC)],
)
def test_a_snapshot_from_a_newer_release_is_refused_not_passed_over(
    copy: Path, capsys: pytest.CaptureFixture[str], place: Any, prefix: str, magic: bytes
) -> None:
    directory = place(copy, 0)
    (_, snap), *_ = snapshots(directory, prefix)
    with_newer_header(snap, magic)
    with pytest.raises(StartupError) as refused:
        open_snapshot(snap, magic, FORMAT_VERSION)
    line = str(refused.value)
    assert line == (
        f"{snap} was written by a newer release (format {FORMAT_VERSION + 1}); "
        f"this release reads format {FORMAT_VERSION}"
    )
    assert cli.main(["check", str(copy)]) == REFUSED
    out = capsys.readouterr().out
    assert f"REFUSED: a start would stop here: {line}" in out and "passed over" not in out
