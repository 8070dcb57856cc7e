"""A closing job's records in the session log, replayed: logs written by the job as it is, and logs
that hold the records of the job as it was (StartSummary before indexing, then MarkIndexed), give
the same state, with every attempt counted once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    EndSession,
    FailSummary,
    FinishSummary,
    GetSession,
    MarkIndexed,
    SessionOp,
    StartSummary,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id


def replayed(directory: Path, job: list[SessionOp], sid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The session's view after `job`'s records, live and after the log is replayed."""
    clock = ManualClock()
    shard = DurableSessions(directory, DurabilityConfig(), clock, lock_wait_s=0.2)
    said = (NewMessage("user", "hi"), NewMessage("assistant", "hello"))
    shard.commit([CreateSession("acme", sid, "a", 60, {}), AppendMessages("acme", sid, said)])
    shard.commit([EndSession("acme", sid, SessionStatus.CLOSED)])
    for op in job:
        clock.advance(1)
        shard.commit([op])
    (live,) = shard.commit([GetSession("acme", sid)])
    shard.close(snapshot=False)
    again = DurableSessions(directory, DurabilityConfig(), clock, lock_wait_s=0.2)
    (read,) = again.commit([GetSession("acme", sid)])
    again.close(snapshot=False)
    return live, read


def summary_state(view: dict[str, Any]) -> tuple[Any, ...]:
    return (view["summary_status"], view["summary_attempts"], view["index_status"], view["summary_error"])


def test_an_attempt_started_then_failed_counts_once(tmp_path: Path) -> None:
    sid = new_session_id()
    older = [
        StartSummary("acme", sid),
        FailSummary("acme", sid, "model busy", False),
        StartSummary("acme", sid),
        MarkIndexed("acme", sid, 3),
        FinishSummary("acme", sid, "they said hi", "tiny", 2, 2, method="model"),
    ]
    live, read = replayed(tmp_path / "older", older, sid)
    assert summary_state(live) == summary_state(read) == ("ready", 2, "ready", None)


def test_an_attempt_that_failed_before_it_started_counts_too(tmp_path: Path) -> None:
    sid = new_session_id()
    now = [
        FailSummary("acme", sid, "the embedder died", False),  # indexing failed
        StartSummary("acme", sid, 3),
        FailSummary("acme", sid, "model busy", False),
        StartSummary("acme", sid),
        FinishSummary("acme", sid, "they said hi", "tiny", 2, 2, method="model"),
    ]
    live, read = replayed(tmp_path / "now", now, sid)
    assert summary_state(live) == summary_state(read) == ("ready", 3, "ready", None)
    assert live["indexed_at"] == read["indexed_at"] is not None


def test_a_final_failure_before_any_start_is_one_attempt(tmp_path: Path) -> None:
    sid = new_session_id()
    live, read = replayed(tmp_path, [FailSummary("acme", sid, "no messages", True)], sid)
    assert summary_state(live) == summary_state(read) == ("failed", 1, "failed", "no messages")
