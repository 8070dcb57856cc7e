"""Driving a DurableSessions's snapshot a step at a time, as property tests' scripts do."""

from __future__ import annotations

from engine.sessions.durable import DurableSessions


def snapshot_action(shard: DurableSessions, kind: str) -> None:
    """`snapshot-begin` starts one (if none is under way), `snapshot-step` writes one more chunk
    of it, `snapshot-finish` writes the rest and completes it; others do nothing."""
    if kind == "snapshot-begin" and not shard.snapshot_in_progress:
        shard.begin_snapshot()
    elif kind in ("snapshot-step", "snapshot-finish") and shard.snapshot_in_progress:
        while shard.snapshot_step():
            if kind == "snapshot-step":
                return
        shard.finish_snapshot_io()
        shard.complete_snapshot()
