"""Durability costs on one shard's DurableSessions directly (no Ray, no HTTP), for the suite's
`snapshot` scenario: N sessions of 10 messages of ~100 characters written through the log, then
the shard is opened the way a SessionShard actor opens it (recovery from the log alone),
snapshotted (size, time, and the longest step: the pause the shard's traffic sees), and opened
again (recovery from the snapshot).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.config import DurabilityConfig
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id

MESSAGE = "an agent turn of about one hundred characters, the size the targets assume for each message."


def build(path: Path, sessions: int) -> int:
    """Write N sessions of 10 messages through the log (no snapshot); returns the log's size."""
    shard = DurableSessions(path, DurabilityConfig(fsync="never"))
    batch: list[Any] = []
    for i in range(sessions):
        sid = new_session_id()
        batch.append(CreateSession("bench", sid, f"s{i}", 86_400, {"i": i}))
        batch.append(AppendMessages("bench", sid, tuple(NewMessage("user", MESSAGE) for _ in range(10))))
        if len(batch) >= 500:
            shard.commit(batch)
            batch = []
    shard.commit(batch)
    shard.close(snapshot=False)
    return sum(p.stat().st_size for p in path.glob("wal-*.log"))


def open_as_actor(path: Path) -> tuple[DurableSessions, float]:
    """Open the shard the way a SessionShard actor does; returns it and how long recovery took."""
    started = time.perf_counter()
    shard = DurableSessions(path, DurabilityConfig(snapshot_chunk_sessions=500), own_process=True)
    return shard, time.perf_counter() - started


def measure_recovery(sessions: int, work: Path) -> dict[str, Any]:
    path = work / f"shard-{sessions}"
    log_bytes = build(path, sessions)
    shard, from_log_s = open_as_actor(path)
    taken = shard.snapshot_now()
    shard.close(snapshot=False)
    shard, from_snapshot_s = open_as_actor(path)
    shard.close(snapshot=False)
    return {
        "sessions": sessions,
        "log_only_bytes": log_bytes,
        "recover_from_log_s": round(from_log_s, 2),
        "snapshot_bytes": taken.bytes,
        "snapshot_s": round(taken.seconds, 2),
        "snapshot_longest_pause_ms": round(taken.longest_step_ms, 1),
        "recover_from_snapshot_s": round(from_snapshot_s, 2),
    }
