"""An imported session goes back into session memory as its source had it (engine.closing.job, step
2): over a real SessionStore and a real MemoryStore, an export of one harness's session imported
into another's, with the model and the memory shard replaced by functions that count or fail."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import Unavailable
from engine.memory.ops import MemoryOp, QueryVectors
from engine.memory.sessions import SESSIONS_OF_MEMORY
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.export import ImportedSession, message_lines, session_line
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    EndSession,
    FailSummary,
    ImportSession,
    RequestSummary,
    SessionOp,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id

from .test_job import T0, Harness, extract_fails

# What a re-index must leave as its source had it; indexed_at is when this store indexed it.
KEPT = ("summary", "summary_status", "summary_error", "summary_attempts", "summary_provenance")


class Importer(Harness):
    """A harness whose memory shard is unavailable for its first `index_failures_left` calls."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.index_failures_left = 0
        self.seen_while_waiting: list[dict[str, Any]] = []

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        if self.index_failures_left:
            self.index_failures_left -= 1
            raise Unavailable("the memory shard is restarting", {})
        return await super().index(org, ops)

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.seen_while_waiting += [self.view(sid) for _, sid in self.store.unfinished_summaries()]

    def take(self, source: Harness, sid: str) -> None:
        """Import `sid` as `source` exports it; with a log when this harness has one."""
        session = source.store._sessions[("acme", sid)]
        messages = message_lines(session, 1, len(session.messages))
        imported = ImportedSession(1, session_line(session), messages).to_session("acme")
        op = ImportSession("acme", sid, encode_session(imported))
        if self.durable is not None:
            self.durable.commit([op])
        else:
            self.store.apply(op, T0)


async def summarized(**settings: Any) -> tuple[Harness, str]:
    source = Harness(**settings)
    sid = source.closed_session(messages=3, content="Lisbon trams, day {i}")
    await source.run_queued()
    assert source.view(sid)["index_status"] == "ready"
    return source, sid


def summary_found(h: Harness, text: str) -> list[str]:
    (matches,) = h.memory.apply_batch(
        [QueryVectors("acme", SESSIONS_OF_MEMORY, None, 5, None, text, "lexical")]
    )
    return [m.id for m in matches]


def kept(view: dict[str, Any]) -> dict[str, Any]:
    return {key: view[key] for key in KEPT}


async def test_an_imported_ready_session_is_reindexed_with_its_own_summary_and_no_model_call() -> None:
    source, sid = await summarized()
    target = Importer()
    target.take(source, sid)
    assert target.view(sid)["index_status"] == "pending"
    await target.run_queued()
    assert target.jobs == [] and target.outcomes == [], "no summary made, none counted"
    view = target.view(sid)
    assert kept(view) == kept(source.view(sid)) and view["index_status"] == "ready"
    assert (
        target.memory_ids()
        == source.memory_ids()
        == {f"{sid}#1", f"{sid}#2", f"{sid}#3", sid, f"{sid}#summary"}
    )
    assert sid in {i.split("#")[0] for i in target.found("Lisbon trams")}
    assert summary_found(target, view["summary"])[0] == f"{sid}#summary"


async def test_an_imported_session_whose_summary_was_pending_is_summarized() -> None:
    source = Harness()
    sid = source.closed_session(messages=2)  # exported before its job ran
    target = Importer()
    target.take(source, sid)
    await target.run_queued()
    assert len(target.jobs) == 1
    view = target.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["index_status"]) == ("ready", 1, "ready")


async def test_a_failed_summary_is_kept_and_its_indexed_turns_put_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = Harness(max_attempts=1, model_pass="off")
    sid = source.closed_session(messages=2)
    await source.run_queued()  # indexed with its summary
    source.store.apply(RequestSummary("acme", sid), T0)
    extract_fails(monkeypatch, 1)  # the summary asked for again fails; the turns stay indexed
    await source.run_queued()
    assert (source.view(sid)["summary_status"], source.view(sid)["index_status"]) == ("failed", "ready")
    target = Importer()
    target.take(source, sid)
    await target.run_queued()
    assert target.jobs == []
    assert kept(target.view(sid)) == kept(source.view(sid)) and target.view(sid)["index_status"] == "ready"
    assert target.memory_ids() == {f"{sid}#1", f"{sid}#2", sid}


async def test_a_completed_session_with_a_requested_summary_is_reindexed() -> None:
    source = Harness()
    sid = new_session_id()
    said = (NewMessage("user", "Lisbon trams"), NewMessage("assistant", "Take the 28"))
    source.store.apply_batch(
        [
            CreateSession("acme", sid, "chat", 60, {}),
            AppendMessages("acme", sid, said),
            EndSession("acme", sid, SessionStatus.COMPLETED),
        ],
        T0,
    )
    source.store.apply(RequestSummary("acme", sid), T0)
    await source.run_queued()
    assert (source.view(sid)["summary_status"], source.view(sid)["index_status"]) == ("ready", "ready")
    target = Importer()
    target.take(source, sid)
    await target.run_queued()
    assert target.jobs == [] and kept(target.view(sid)) == kept(source.view(sid))
    assert target.view(sid)["index_status"] == "ready" and target.memory_ids() == source.memory_ids()


@pytest.mark.parametrize("status", [SessionStatus.COMPLETED, SessionStatus.ACTIVE])
async def test_a_session_never_indexed_is_queued_for_nothing(status: SessionStatus) -> None:
    source = Harness()
    sid = new_session_id()
    ops: list[SessionOp] = [CreateSession("acme", sid, "chat", 60, {})]
    if status is not SessionStatus.ACTIVE:
        ops.append(EndSession("acme", sid, status))
    source.store.apply_batch(ops, T0)
    target = Importer()
    target.take(source, sid)
    assert target.store.take_summary_jobs() == [] and target.view(sid)["index_status"] is None


async def test_memory_unavailable_is_retried_and_the_ready_summary_never_changes() -> None:
    source, sid = await summarized()
    target = Importer(max_attempts=3)
    target.index_failures_left = 2
    target.take(source, sid)
    await target.run_queued()
    assert target.sleeps == [1.0, 2.0], "the closing job's backoff"
    assert [(v["index_status"], kept(v)) for v in target.seen_while_waiting] == [
        ("pending", kept(source.view(sid)))
    ] * 2
    assert kept(target.view(sid)) == kept(source.view(sid)) and target.view(sid)["index_status"] == "ready"
    assert target.jobs == [] and target.outcomes == [("index_retried", None)] * 2, "no summary attempt"


async def test_a_reindex_past_max_attempts_is_still_retried_until_memory_takes_it() -> None:
    source, sid = await summarized()
    target = Importer(max_attempts=2)
    target.index_failures_left = 5
    target.take(source, sid)
    await target.run_queued()
    view = target.view(sid)
    assert kept(view) == kept(source.view(sid)) and view["index_status"] == "ready"
    assert target.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0] and target.jobs == []
    assert target.store.unfinished_summaries() == []


async def test_a_summary_asked_for_during_the_reindex_is_made_by_the_same_run() -> None:
    source, sid = await summarized()
    target = Importer()
    asked: list[Any] = []

    def ask_once() -> None:
        if not asked:
            asked.append(target.store.apply(RequestSummary("acme", sid), T0))
            target.closing.submit(target.store.take_summary_jobs())  # this job runs: not queued again

    target.while_indexing = ask_once
    target.take(source, sid)
    await target.run_queued()
    view = target.view(sid)
    assert len(target.jobs) == 1 and (view["summary_status"], view["summary_attempts"]) == ("ready", 1)
    assert view["index_status"] == "ready"


@pytest.mark.parametrize("snapshot", [False, True], ids=["log", "snapshot"])
async def test_a_restart_at_any_point_reaches_the_same_state(tmp_path: Path, snapshot: bool) -> None:
    source, sid = await summarized()

    def restarted(h: Importer) -> None:
        assert h.durable is not None
        if snapshot:
            h.durable.snapshot_now()
        h.durable.close(snapshot=False)
        h.durable = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0 + 1), lock_wait_s=0.2)
        h.store = h.durable.store
        h.store.take_summary_jobs()  # what replay queued; a start resumes the unfinished instead

    target = Importer()
    target.durable = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0), lock_wait_s=0.2)
    target.store = target.durable.store
    target.take(source, sid)
    restarted(target)  # before the job ran: the re-index is still to do
    assert target.store.unfinished_summaries() == [("acme", sid)]
    assert target.view(sid)["index_status"] == "pending"
    target.closing.submit(target.store.unfinished_summaries())
    await target.closing.drain()
    live = target.view(sid)
    restarted(target)  # after MarkIndexed: replayed to the same state, nothing left to do
    assert target.view(sid) == live and live["index_status"] == "ready"
    assert target.store.unfinished_summaries() == [] and target.jobs == []
    assert kept(live) == kept(source.view(sid))
    target.durable.close()


async def test_a_failure_recorded_by_a_summary_job_does_not_end_a_reindex() -> None:
    # A final FailSummary (a summary asked for, then failed) leaves the turns still to put back.
    source, sid = await summarized()
    target = Importer()
    target.take(source, sid)
    target.store.apply_batch([RequestSummary("acme", sid), FailSummary("acme", sid, "gave up", True)], T0)
    assert target.view(sid)["index_status"] == "pending"
    await target.run_queued()
    assert target.view(sid)["index_status"] == "ready" and target.view(sid)["summary_status"] == "failed"
