"""Closing jobs over a real SessionStore and a real session memory (a MemoryStore behind the index
port), with the models replaced by functions that succeed, fail, or delete the session mid-run. The
model's upgrades go through a real ModelPass (the pool's judge and acceptance window) around a fake
generate."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.clock import ManualClock
from engine.closing import job as job_module
from engine.closing.indexing import index_live, live_session
from engine.closing.job import ClosingJobs
from engine.closing.model_pass import Acceptance, ModelPass, Verdict
from engine.config import DurabilityConfig, SummarizerConfig
from engine.errors import SessionNotEnded, Unavailable
from engine.memory.index import IndexParams
from engine.memory.ops import ForgetSessions, MemoryOp, QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY
from engine.memory.store import MemoryStore
from engine.models.summarizer import Conversation, Summary
from engine.sessions.codec import decode_session, encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    FailSummary,
    GetSession,
    ImportSession,
    LiveTurns,
    MarkIndexed,
    MarkLive,
    RequestSummary,
    SessionOp,
    UpgradeSummary,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.store import SessionStore

T0 = 1_700_000_000_000


def told(c: Conversation) -> str:
    """What the fake model writes: grounded in the conversation, so it is kept as the model's."""
    return f"They talked about {c.messages[0][2]}"


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.store = SessionStore()
        self.config = SummarizerConfig.model_validate({"retry_backoff_s": 1.0, **settings})
        self.jobs: list[Conversation] = []
        self.failures_left = 0  # of the model
        self.sleeps: list[float] = []
        self.during: Any = None
        self.while_indexing: Any = None
        self.memory = MemoryStore(IndexParams())
        self.durable: DurableSessions | None = None  # when set, ops go through its log
        self.embed_failures_left = 0
        self.embeds = 0
        self.embed_fails_at: set[int] = set()  # the embed calls (1-based, in order) that fail
        self.upserts: list[str] = []  # the namespace of each upsert, in order
        self.outcomes: list[tuple[str, float | None]] = []
        self.text = told  # what the model writes
        self.model = "fake-model"
        self.acceptance = Acceptance(self.config.model_pass, self.config.acceptance_window, "fake")
        self.model_pass = ModelPass(self.acceptance, self.generate)
        self.closing = ClosingJobs(
            self.record,
            self,
            self.config,
            writable=lambda: self.durable is None or self.durable.takes_changes,
            sleep=self.sleep,
            outcome=lambda *o: self.outcomes.append(o),
        )

    async def record(self, ops: Sequence[SessionOp]) -> list[Any]:
        if self.durable is not None:
            return self.durable.commit(ops)
        return self.store.apply_batch(list(ops), T0)

    async def upgrade(self, c: Conversation) -> Verdict:
        return await self.model_pass.upgrade(c)

    async def generate(self, c: Conversation) -> Summary:
        self.jobs.append(c)
        if self.during is not None:
            self.during()
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("model fell over\nTraceback (most recent call last): ...")
        return Summary(self.text(c), self.model, len(c.messages), c.total, 10, 3)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.while_indexing is not None:
            self.while_indexing()
        self.embeds += 1
        if self.embed_failures_left or self.embeds in self.embed_fails_at:
            self.embed_failures_left = max(0, self.embed_failures_left - 1)
            raise RuntimeError("the embedder died")
        rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8) for text in texts]
        return np.asarray([row / np.linalg.norm(row) for row in rows], dtype=np.float32)

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        self.upserts += [op.namespace for op in ops if isinstance(op, UpsertVectors)]
        results = self.memory.apply_batch(list(ops))
        self.memory.take_journal()
        return results

    def memory_ids(self) -> set[str]:
        """Every entry session memory holds: turns, whole sessions and summaries."""
        namespaces = dict(self.memory.namespaces())
        held = [namespaces.get(("acme", name)) for name in (SESSION_MEMORY, SESSIONS_OF_MEMORY)]
        return {
            found[0]
            for index in held
            if index is not None
            for faiss_id in index.ids_below(index.next_id)
            if (found := index.entry(faiss_id)) is not None
        }

    def summary_entry(self, sid: str) -> tuple[str | None, str | None]:
        """(text, method) of the session's `#summary` entry in session memory."""
        index = dict(self.memory.namespaces())[("acme", SESSIONS_OF_MEMORY)]
        for faiss_id in index.ids_below(index.next_id):
            found = index.entry(faiss_id)
            if found is not None and found[0] == f"{sid}#summary":
                return index.text(faiss_id), found[1].get("method")
        return None, None

    def found(self, text: str) -> list[str]:
        (matches,) = self.memory.apply_batch(
            [QueryVectors("acme", SESSION_MEMORY, None, 5, None, text, "lexical")]
        )
        return [m.id for m in matches]

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def closed_session(self, messages: int = 3, content: str = "message {i}", name: str = "trip") -> str:
        sid = new_session_id()
        ops: list[SessionOp] = [CreateSession("acme", sid, name, 60, {})]
        if messages:
            ops.append(
                AppendMessages(
                    "acme", sid, tuple(NewMessage("user", content.format(i=i)) for i in range(messages))
                )
            )
        ops.append(EndSession("acme", sid, SessionStatus.CLOSED))
        if self.durable is not None:
            self.durable.commit(ops)
        else:
            self.store.apply_batch(ops, T0)
        return sid

    def delete(self, sid: str) -> None:
        """As the route does: forget the session's memory, then delete it. With live memory off (as
        here) the shard sends no forget of its own after the delete."""
        self.memory.apply_batch([ForgetSessions("acme", (sid,))])
        self.memory.take_journal()
        self.store.apply(DeleteSession("acme", sid), T0)

    async def run_queued(self) -> None:
        self.closing.submit(self.store.take_summary_jobs())
        await self.closing.drain()

    def view(self, sid: str) -> dict[str, Any]:
        return dict(self.store.apply(GetSession("acme", sid), T0))


async def test_a_closed_session_is_ready_with_its_extract_before_any_model_call() -> None:
    h = Harness()
    sid = h.closed_session(messages=3, content="Maya adopted a beagle named Biscuit in Lisbon, day {i}.")
    assert h.view(sid)["summary_status"] == "pending"
    at_model: list[dict[str, Any]] = []
    h.during = lambda: at_model.append(h.view(sid))
    await h.run_queued()
    [first] = at_model  # the session as the model is called: ready already
    assert (first["summary_status"], first["summary_attempts"], first["summary_error"]) == ("ready", 1, None)
    assert first["summary"].startswith("Maya adopted a beagle named Biscuit")
    assert first["summary_provenance"] == {
        "model": "extractive",
        "method": "extractive",
        "reason": "first pass",
        "messages_covered": 3,
        "messages_total": 3,
        "created_at": T0,
        "upgrade": "pending",
    }
    assert h.outcomes[0] == ("ready", 0.0)
    assert len(h.view(sid)["messages"]) == 3, "raw messages are never dropped"


async def test_with_the_model_pass_off_the_extract_stays_and_no_model_runs() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=3)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_provenance"]["method"]) == ("ready", "extractive")
    assert "upgrade" not in view["summary_provenance"] and h.jobs == []
    assert h.store.pending_upgrades() == []


async def test_a_kept_upgrade_replaces_the_extract_and_its_memory_entry() -> None:
    h = Harness()
    sid = h.closed_session(messages=3)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary"], view["summary_attempts"]) == (
        "ready", "They talked about message 0", 1,
    )  # fmt: skip
    provenance = view["summary_provenance"]
    assert provenance == {
        "model": "fake-model",
        "method": "model",
        "messages_covered": 3,
        "messages_total": 3,
        "created_at": T0,
    }
    [job] = h.jobs
    assert [content for _, _, content in job.messages] == [f"message {i}" for i in range(3)]
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", f"{sid}#3", sid, f"{sid}#summary"}, "one summary entry"
    (matches,) = h.memory.apply_batch(
        [QueryVectors("acme", SESSIONS_OF_MEMORY, None, 5, None, "talked", "lexical")]
    )
    assert [m.id for m in matches] == [f"{sid}#summary"], "the entry holds the model's text now"
    assert h.outcomes == [("ready", 0.0), ("upgrade_kept", None)]
    assert h.store.pending_upgrades() == []


async def test_a_rejected_upgrade_keeps_the_extract_and_says_why() -> None:
    h = Harness()
    h.text = lambda c: "user: hello there\nassistant: hi again"
    sid = h.closed_session(messages=2, content="Maya adopted a beagle named Biscuit in Lisbon, day {i}.")
    await h.run_queued()
    view = h.view(sid)
    assert view["summary_status"] == "ready" and view["summary"].startswith("Maya adopted a beagle")
    provenance = view["summary_provenance"]
    assert provenance["model_rejected"] == "dialogue" and provenance["model"] == "fake-model"
    assert (provenance["method"], provenance["reason"]) == ("extractive", "first pass")
    assert "upgrade" not in provenance
    assert h.outcomes == [("ready", 0.0), ("upgrade_rejected", None)]


async def test_a_summary_asked_for_again_during_its_upgrade_supersedes_it() -> None:
    h = Harness()
    sid = h.closed_session(messages=2)
    seen: list[str] = []

    def asked_again() -> None:
        h.during = None
        h.store.apply(RequestSummary("acme", sid), T0)
        seen.append(h.view(sid)["summary_status"])
        h.closing.submit(h.store.take_summary_jobs())  # as the shard does after the request's commit

    h.during = asked_again
    await h.run_queued()
    assert seen == ["pending"]
    view = h.view(sid)
    assert (view["summary_status"], view["summary_provenance"]["method"]) == ("ready", "model")
    assert len(h.jobs) == 2, "the first upgrade was cancelled; the new summary's own ran"
    assert [o for o, _ in h.outcomes] == ["ready", "ready", "upgrade_kept"]


async def test_an_upgrade_that_is_no_longer_the_sessions_changes_nothing() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session()
    await h.run_queued()
    h.store.apply(RequestSummary("acme", sid), T0)
    stale = UpgradeSummary("acme", sid, "kept", "fake-model", "They talked", None, 1, 1)
    assert h.store.apply(stale, T0) is None
    assert h.view(sid)["summary_status"] == "pending"
    assert h.store.take_journal()[-1] == RequestSummary("acme", sid), "the stale verdict is not logged"


async def test_the_model_pass_pauses_after_a_window_with_nothing_kept() -> None:
    h = Harness(acceptance_window=2)
    h.text = lambda c: "user: hello there\nassistant: hi again"
    for _ in range(4):
        h.closed_session()
        await h.run_queued()
    assert len(h.jobs) == 2, "two rejections fill the window; no model call after"
    upgrades = [o for o, _ in h.outcomes if o.startswith("upgrade")]
    # The third close's upgrade was queued before the shard heard of the pause; the fourth's was not.
    assert upgrades == ["upgrade_rejected", "upgrade_rejected", "upgrade_skipped"]
    assert not h.acceptance.active and h.acceptance.describe()["state"] == "paused"
    assert h.store.pending_upgrades() == []


async def test_a_restart_resumes_a_pending_upgrade(tmp_path: Path) -> None:
    h = durable_harness(tmp_path, max_attempts=1)
    h.failures_left = 1  # the model fails: the upgrade stays queued in the session
    sid = h.closed_session(messages=2)
    await h.run_queued()
    assert h.view(sid)["summary_provenance"]["upgrade"] == "pending"
    assert h.durable is not None
    h.durable.close(snapshot=False)  # the log alone must bring the mark back
    again = durable_harness(tmp_path)
    assert again.store.pending_upgrades() == [("acme", sid)]
    again.closing.submit_upgrades(again.store.pending_upgrades())
    await again.closing.drain()
    view = again.view(sid)
    assert (view["summary_provenance"]["method"], view["summary"]) == ("model", "They talked about message 0")
    assert again.store.pending_upgrades() == []


def extract_fails(monkeypatch: pytest.MonkeyPatch, times: int, also: Any = None) -> None:
    """The extract raises at its first `times` calls (calling `also` first): a fault in the
    summary's own step, which the embedder no longer takes part in."""
    left = [times]
    real = job_module.extract_of

    def extract(c: Conversation) -> str:
        if left[0]:
            left[0] -= 1
            if also is not None:
                also()
            raise RuntimeError("the extract fell over")
        return real(c)

    monkeypatch.setattr(job_module, "extract_of", extract)


async def test_failed_attempts_are_retried_with_doubling_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(max_attempts=3, model_pass="off")
    extract_fails(monkeypatch, 2)
    sid = h.closed_session()
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["summary_error"]) == ("ready", 3, None)
    assert h.sleeps == [1.0, 2.0]


async def test_the_last_failure_is_final_and_keeps_a_one_line_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(max_attempts=2)
    extract_fails(monkeypatch, 5)
    sid = h.closed_session()
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"]) == ("failed", 2)
    assert view["summary_error"] == "RuntimeError: the extract fell over"
    assert view["summary"] is None and h.sleeps == [1.0]


async def test_a_summary_that_fails_for_good_still_puts_the_session_into_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(max_attempts=2)  # no live memory: the job is all that indexes the session
    extract_fails(monkeypatch, 5)
    sid = h.closed_session(messages=3)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["index_status"]) == ("failed", "ready")
    assert view["indexed_at"] is not None
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", f"{sid}#3", sid}, "its turns and session, no summary"
    assert h.store.unfinished_summaries() == [] and h.jobs == [], "no upgrade of a summary it has not"


async def test_a_summary_that_fails_for_good_is_recorded_at_once_and_its_index_retried_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(max_attempts=1)
    extract_fails(monkeypatch, 1)
    h.embed_failures_left = 2  # the embedder is down: the failure is told all the same
    seen: list[tuple[str, str]] = []
    h.while_indexing = lambda: seen.append((h.view(sid)["summary_status"], h.view(sid)["index_status"]))
    sid = h.closed_session(messages=2)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["index_status"]) == ("failed", "ready")
    assert h.sleeps == [1.0, 2.0] and [o for o, _ in h.outcomes] == ["failed"] + ["index_retried"] * 2
    assert seen[0] == ("failed", "pending"), "one record: the failure, and the index it queued"
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", sid}


async def test_a_failed_summarys_index_is_resumed_from_the_log_after_a_crash(tmp_path: Path) -> None:
    h = durable_harness(tmp_path, max_attempts=1)
    sid = h.closed_session(messages=2)
    assert h.durable is not None
    h.durable.commit([FailSummary("acme", sid, "the extract fell over", True, index=True)])
    h.durable.close(snapshot=False)
    again = durable_harness(tmp_path, max_attempts=1)  # the crash came before the index: replayed
    assert again.view(sid)["index_status"] == "pending"
    assert again.store.unfinished_summaries() == [("acme", sid)]
    again.closing.submit(again.store.unfinished_summaries())
    await again.closing.drain()
    view = again.view(sid)
    assert (view["summary_status"], view["index_status"]) == ("failed", "ready")
    assert again.memory_ids() == {f"{sid}#1", f"{sid}#2", sid} and again.jobs == []


def turn_texts(h: Harness) -> dict[str, str]:
    """Each turn entry of session memory, and the words of its turn (after the session's name)."""
    index = dict(h.memory.namespaces())[("acme", SESSION_MEMORY)]
    return {
        found[0]: index.text(i).rsplit("\n", 1)[-1]
        for i in index.ids_below(index.next_id)
        if (found := index.entry(i)) is not None
    }


async def test_a_mark_made_for_a_deleted_session_does_not_mark_the_one_imported_under_its_id() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=4, content="the old session, turn {i}")
    deleted = [False]

    def replaced_before_the_upsert() -> None:
        # Deleted (the route's forget first) and imported again under its id while its job indexed,
        # before the job's upsert lands: an earlier export of it, with two turns of other words.
        h.while_indexing = None
        deleted[0] = True
        assert h.view(sid)["index_status"] == "pending"
        new = decode_session(encode_session(h.store._sessions[("acme", sid)]))
        new.messages = [
            m._replace(content=f"the new session, turn {i}") for i, m in enumerate(new.messages[:2])
        ]
        h.delete(sid)
        h.store.apply(ImportSession("acme", sid, encode_session(new)), T0)
        h.store.take_summary_jobs()  # queued while this job runs: this run takes it over

    h.while_indexing = replaced_before_the_upsert
    await h.run_queued()
    assert deleted[0]
    view = h.view(sid)
    assert (view["index_status"], view["message_count"]) == ("ready", 2)
    assert turn_texts(h) == {f"{sid}#1": "the new session, turn 0", f"{sid}#2": "the new session, turn 1"}, (
        "nothing of the deleted session's four turns is left"
    )


async def test_summarize_runs_a_failed_or_finished_summary_again(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(max_attempts=1)
    extract_fails(monkeypatch, 1)
    sid = h.closed_session()
    await h.run_queued()
    assert h.view(sid)["summary_status"] == "failed"
    h.store.apply(RequestSummary("acme", sid), T0)
    assert (h.view(sid)["summary_status"], h.view(sid)["summary_error"]) == ("pending", None)
    await h.run_queued()
    assert h.view(sid)["summary_status"] == "ready"
    h.store.apply(RequestSummary("acme", sid), T0)
    h.store.apply(RequestSummary("acme", sid), T0)  # while one is queued, asking again adds nothing
    assert h.store.take_summary_jobs() == [("acme", sid)]


async def test_an_active_session_cannot_be_summarized() -> None:
    h = Harness()
    sid = new_session_id()
    h.store.apply(CreateSession("acme", sid, "live", 60, {}), T0)
    with pytest.raises(SessionNotEnded):
        h.store.apply(RequestSummary("acme", sid), T0)


async def test_a_session_without_messages_fails_at_once_without_the_model() -> None:
    h = Harness()
    sid = h.closed_session(messages=0)
    await h.run_queued()
    view = h.view(sid)
    assert view["summary_status"] == "failed" and "no messages" in view["summary_error"]
    assert h.jobs == []


async def test_a_session_deleted_during_its_upgrade_leaves_nothing_in_memory() -> None:
    h = Harness()
    sid = h.closed_session()
    h.during = lambda: h.store.apply(DeleteSession("acme", sid), T0)
    await h.run_queued()
    assert h.memory_ids() == set()


async def test_a_closed_session_is_searchable_before_its_upgrade_is_made() -> None:
    h = Harness()
    sid = h.closed_session(messages=2, content="we talked about the lighthouse {i}")
    seen: list[Any] = []
    h.during = lambda: seen.append((h.view(sid)["index_status"], h.found("lighthouse")))
    await h.run_queued()
    assert seen == [("ready", [sid])], "indexed and searchable while the model still works"
    view = h.view(sid)
    assert view["index_status"] == "ready" and view["indexed_at"] == T0
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", sid, f"{sid}#summary"}
    assert h.found("trip") == [sid], "the summary and the name are searchable too"


async def test_an_embedder_failure_leaves_the_summary_ready_and_the_retry_indexes_everything() -> None:
    h = Harness(max_attempts=3)
    h.embed_failures_left = 1
    sid = h.closed_session(messages=3)
    assert h.view(sid)["index_status"] == "pending"
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["index_status"]) == ("ready", 1, "ready")
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", f"{sid}#3", sid, f"{sid}#summary"}
    assert h.sleeps == [1.0] and [o for o, _ in h.outcomes] == ["ready", "index_retried", "upgrade_kept"], (
        "the index is retried; the summary is not failed"
    )


async def test_a_retried_index_replaces_what_went_in_and_nothing_doubles() -> None:
    h = Harness(max_attempts=2, model_pass="off")
    h.embed_fails_at = {2}  # the summary's embed fails after the turns were indexed
    sid = h.closed_session(messages=2)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["index_status"]) == ("ready", 1, "ready")
    assert h.upserts == [SESSION_MEMORY, SESSIONS_OF_MEMORY] * 2 + [SESSIONS_OF_MEMORY]
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", sid, f"{sid}#summary"}
    namespaces = dict(h.memory.namespaces())
    held = [namespaces[("acme", name)] for name in (SESSION_MEMORY, SESSIONS_OF_MEMORY)]
    entries = [i for index in held for i in index.ids_below(index.next_id) if index.entry(i) is not None]
    assert len(entries) == 2 + 2, "the retry replaced the turns: none doubled"


async def test_an_index_that_fails_past_max_attempts_is_still_retried_and_ends_ready() -> None:
    h = Harness(max_attempts=2)
    h.embed_failures_left = 8  # a memory outage that outlasts the summary's attempts many times over
    seen: list[Any] = []
    h.during = lambda: seen.append(h.view(sid)["index_status"])
    sid = h.closed_session()
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["summary_error"]) == ("ready", 1, None)
    assert view["index_status"] == "ready" and seen == ["ready"], "the upgrade waited for the index"
    assert h.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0], "the backoff doubles up to its cap"
    assert [o for o, _ in h.outcomes] == ["ready", *["index_retried"] * 8, "upgrade_kept"]
    assert h.store.unfinished_summaries() == [] and h.summary_entry(sid) == (view["summary"], "model")


def test_the_backoff_is_capped_however_many_attempts_failed() -> None:
    config = SummarizerConfig(retry_backoff_s=2.0)
    assert [job_module.backoff_s(config, n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert job_module.backoff_s(config, 10**6, job_module.MAX_INDEX_BACKOFF_S) == 60.0


async def test_index_retries_wait_and_double_even_with_no_backoff() -> None:
    h = Harness(retry_backoff_s=0.0, model_pass="off")
    h.embed_failures_left = 4  # a memory shard that fails every attempt for a while
    sid = h.closed_session()
    await h.run_queued()
    assert h.view(sid)["index_status"] == "ready"
    floor = job_module.MIN_INDEX_BACKOFF_S
    assert h.sleeps == [floor, 2 * floor, 4 * floor, 8 * floor], "never a busy loop against memory"


async def test_an_index_retried_for_a_session_deleted_meanwhile_ends() -> None:
    h = Harness()
    sid = h.closed_session()

    failures = [0]

    def deleted_after_a_few_failures() -> None:
        failures[0] += 1
        if failures[0] == 3:
            h.store.apply(DeleteSession("acme", sid), T0)
        raise RuntimeError("the embedder died")

    h.while_indexing = deleted_after_a_few_failures
    await h.run_queued()
    assert len(h.sleeps) == 3 and h.jobs == [] and h.memory_ids() == set()


async def test_a_session_deleted_while_it_is_indexed_leaves_nothing_in_memory() -> None:
    h = Harness()
    sid = h.closed_session()

    def deleted() -> None:
        h.while_indexing = None
        h.store.apply(DeleteSession("acme", sid), T0)

    h.while_indexing = deleted
    await h.run_queued()
    assert h.upserts == [SESSION_MEMORY, SESSIONS_OF_MEMORY, SESSIONS_OF_MEMORY], (
        "indexed before the delete was seen"
    )
    assert h.memory_ids() == set() and h.jobs == [], "then taken out again, and no upgrade made"


async def test_a_session_deleted_between_its_summary_and_its_index_is_not_indexed() -> None:
    h = Harness()
    sid = h.closed_session()
    real = h.record

    async def deleted_after_the_summary(ops: Sequence[SessionOp]) -> list[Any]:
        answers = await real(ops)
        if type(ops[0]).__name__ == "FinishSummary":
            h.store.apply(DeleteSession("acme", sid), T0)
        return answers

    h.closing = ClosingJobs(deleted_after_the_summary, h, h.config, sleep=h.sleep)
    await h.run_queued()
    assert (h.upserts, h.embeds, h.jobs) == ([], 0, []), "nothing went into memory, no upgrade ran"


async def test_the_summary_is_ready_before_any_embed_and_the_index_pending_until_marked() -> None:
    h = Harness()
    sid = h.closed_session()
    seen: list[tuple[str, str]] = []
    h.while_indexing = lambda: seen.append((h.view(sid)["summary_status"], h.view(sid)["index_status"]))
    h.during = lambda: seen.append((h.view(sid)["summary_status"], h.view(sid)["index_status"]))
    await h.run_queued()
    # The turns' embed, the summary's; then the model's call and its text's embed (the upgrade).
    assert seen == [("ready", "pending"), ("ready", "pending"), ("ready", "ready"), ("ready", "ready")]


async def test_a_slow_embedder_does_not_hold_up_ready_summaries() -> None:
    h = Harness(concurrent_jobs=1, model_pass="off")
    sids = [h.closed_session() for _ in range(4)]
    gate = asyncio.Event()
    real_embed = h.embed

    async def slow_embed(texts: Sequence[str]) -> np.ndarray:
        await gate.wait()  # the embedder's backlog: nothing is embedded until the gate opens
        return await real_embed(texts)

    h.embed = slow_embed  # type: ignore[method-assign]
    h.closing.submit(h.store.take_summary_jobs())
    for _ in range(50):
        await asyncio.sleep(0.01)
        if all(h.view(sid)["summary_status"] == "ready" for sid in sids):
            break
    views = [h.view(sid) for sid in sids]
    assert [(v["summary_status"], v["index_status"]) for v in views] == [("ready", "pending")] * 4
    assert h.closing.active == 4, "each waits for the index; only one holds an indexing slot"
    gate.set()
    await h.closing.drain()
    assert [h.view(sid)["index_status"] for sid in sids] == ["ready"] * 4


async def test_no_more_summaries_than_concurrent_summaries_are_made_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(concurrent_summaries=2, model_pass="off")
    sids = [h.closed_session() for _ in range(6)]
    running, most = [0], [0]
    lock = threading.Lock()
    real = job_module.extract_of

    def slow_extract(c: Conversation) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # a slow extract, in the job's thread
        with lock:
            running[0] -= 1
        return real(c)

    monkeypatch.setattr(job_module, "extract_of", slow_extract)
    await h.run_queued()
    assert most[0] == 2, "two at a time, never more, and the slots were used"
    assert [h.view(sid)["summary_status"] for sid in sids] == ["ready"] * 6


async def test_empty_model_text_is_rejected_and_an_empty_extract_fails_the_attempt() -> None:
    h = Harness(max_attempts=1)
    h.text = lambda c: ""
    replaced, blank = h.closed_session(), h.closed_session(messages=1, content=" ")
    await h.run_queued()
    assert h.view(replaced)["summary_provenance"]["model_rejected"] == "empty"
    view = h.view(blank)
    assert (view["summary_status"], view["summary_error"]) == (
        "failed", "SummaryFailed: the conversation has no text to summarize",
    )  # fmt: skip


async def test_a_summary_the_log_refuses_fails_the_job_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness()
    h.durable = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0), lock_wait_s=0.2)
    h.store = h.durable.store
    sid = h.closed_session()
    # Not UTF-8: the log cannot hold it. An extract is made of what the log held, so only a fault
    # could make one so; the job must end all the same.
    monkeypatch.setattr(job_module, "extract_of", lambda c: "broken \ud800")

    async def into_memory(*args: Any) -> None:
        """Session memory takes it (it is the log under test here)."""

    monkeypatch.setattr(job_module, "index_summary", into_memory)
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"]) == ("failed", 1)
    assert view["summary_error"].startswith("the summary was refused: ")
    assert h.outcomes == [("failed", None)]


async def test_an_upgrade_the_log_refuses_leaves_the_extract_and_the_upgrade_queued(tmp_path: Path) -> None:
    h = durable_harness(tmp_path, max_attempts=1)
    sid = h.closed_session()
    h.model = "fake-\ud800"  # not UTF-8: the log cannot hold the upgrade's provenance
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_provenance"]["method"]) == ("ready", "extractive")
    assert h.store.pending_upgrades() == [("acme", sid)], "the next start tries again"
    assert h.summary_entry(sid) == (view["summary"], "extractive"), "memory says what the session does"


async def test_an_upgrade_kept_while_the_shard_is_drained_leaves_memory_with_the_extract(
    tmp_path: Path,
) -> None:
    h = durable_harness(tmp_path, max_attempts=1)
    sid = h.closed_session()
    assert h.durable is not None
    durable = h.durable
    h.during = lambda: durable.drain(Unavailable("drained", {}))  # while the model writes
    await h.run_queued()
    view = h.view(sid)
    assert view["summary_provenance"]["method"] == "extractive"
    assert h.summary_entry(sid) == (view["summary"], "extractive")
    assert h.store.pending_upgrades() == [("acme", sid)]


async def test_a_resumed_upgrade_that_is_rejected_puts_the_extract_back_into_memory(tmp_path: Path) -> None:
    h = durable_harness(tmp_path)
    sid = h.closed_session()
    assert h.durable is not None
    durable = h.durable
    refuse = durable.commit

    def crashed_before_the_verdict_was_logged(ops: Any) -> list[Any]:
        if isinstance(ops[0], UpgradeSummary):
            raise RuntimeError("the shard died")
        return refuse(ops)

    h.durable = None  # the harness records through the patched commit below
    h.record = lambda ops: _async(crashed_before_the_verdict_was_logged(ops))  # type: ignore[method-assign]
    h.closing = ClosingJobs(h.record, h, h.config, sleep=h.sleep)
    await h.run_queued()
    assert h.summary_entry(sid)[1] == "model", "the kept text went in; its record did not"
    durable.close(snapshot=False)
    again = durable_harness(tmp_path)
    again.memory = h.memory  # session memory outlives the session shard
    again.text = lambda c: "user: hello there\nassistant: hi again"  # rejected this time
    again.closing.submit_upgrades(again.store.pending_upgrades())
    await again.closing.drain()
    view = again.view(sid)
    assert view["summary_provenance"]["model_rejected"] == "dialogue"
    assert again.summary_entry(sid) == (view["summary"], "extractive")


async def _async(value: Any) -> Any:
    return value


def durable_harness(tmp_path: Path, **settings: Any) -> Harness:
    h = Harness(**settings)
    h.durable = DurableSessions(tmp_path, DurabilityConfig(), ManualClock(T0), lock_wait_s=0.2)
    h.store = h.durable.store
    return h


async def test_a_drained_shard_puts_its_jobs_off_without_indexing_or_counting(tmp_path: Path) -> None:
    h = durable_harness(tmp_path)
    sid = h.closed_session()
    assert h.durable is not None
    h.durable.drain(Unavailable("drained", {}))
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["index_status"]) == (
        "pending",
        0,
        "pending",
    )
    assert (h.upserts, h.jobs, h.outcomes, h.sleeps) == ([], [], [], [])
    h.durable.drain(None)  # the shard hands its unfinished jobs over again (HostedShard.drain)
    h.closing.submit(h.store.unfinished_summaries())
    await h.closing.drain()
    assert (h.view(sid)["summary_status"], h.view(sid)["summary_attempts"]) == ("ready", 1)


async def test_a_shard_drained_during_an_attempt_neither_fails_it_nor_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = durable_harness(tmp_path)
    sid = h.closed_session()
    assert h.durable is not None
    durable = h.durable
    extract_fails(monkeypatch, 1, also=lambda: durable.drain(Unavailable("drained", {})))
    await h.run_queued()
    assert (h.view(sid)["summary_status"], h.view(sid)["summary_attempts"]) == ("running", 1)
    assert (h.outcomes, h.sleeps) == ([], [])  # its FailSummary was refused: nothing counted, no backoff
    assert h.store.unfinished_summaries() == [("acme", sid)]


async def test_a_shard_drained_while_the_session_is_indexed_leaves_its_index_pending(tmp_path: Path) -> None:
    h = durable_harness(tmp_path)
    sid = h.closed_session()
    assert h.durable is not None
    durable = h.durable

    def drained_and_embedder_gone() -> None:
        durable.drain(Unavailable("drained", {}))
        raise RuntimeError("the embedder died")

    h.while_indexing = drained_and_embedder_gone
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["summary_attempts"], view["index_status"]) == ("ready", 1, "pending")
    assert (h.jobs, h.outcomes, h.sleeps) == ([], [("ready", 0.0)], []), "no retry while drained"
    h.while_indexing = None
    durable.drain(None)
    h.closing.submit(h.store.unfinished_summaries())
    await h.closing.drain()
    assert (h.view(sid)["summary_status"], h.view(sid)["index_status"]) == ("ready", "ready")


async def test_each_attempt_tells_how_it_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(max_attempts=2, model_pass="off")
    extract_fails(monkeypatch, 1)
    retried = h.closed_session()
    await h.run_queued()
    extract_fails(monkeypatch, 2)
    failed = h.closed_session()
    await h.run_queued()
    assert h.outcomes == [("retried", None), ("ready", 0.0), ("retried", None), ("failed", None)]
    assert h.view(retried)["summary_status"] == "ready" and h.view(failed)["summary_status"] == "failed"


async def test_a_job_that_was_running_at_a_crash_is_resumed() -> None:
    h = Harness()
    sid = h.closed_session()
    h.store.take_summary_jobs()
    session = h.store._sessions[("acme", sid)]
    session.start_summary()  # running when the shard died
    restored = SessionStore()
    restored._sessions[("acme", sid)] = decode_session(encode_session(session))
    assert restored.unfinished_summaries() == [("acme", sid)]
    h.store = restored
    h.closing.submit(restored.unfinished_summaries())
    await h.closing.drain()
    assert (h.view(sid)["summary_status"], h.view(sid)["summary_attempts"]) == ("ready", 2)


async def test_long_conversations_are_precut_before_they_leave_the_shard() -> None:
    h = Harness(max_input_tokens=64, keep_first_messages=1)
    h.closed_session(messages=200, content="{i} " + "w" * 200, name="long")
    await h.run_queued()
    [job] = h.jobs
    positions = [p for p, _, _ in job.messages]
    assert positions[0] == 0 and positions[-1] == 199 and job.total == 200
    assert sum(len(c) for _, _, c in job.messages) <= 64 * 12


async def test_summary_state_survives_the_log_and_snapshot_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(max_attempts=1)
    ready, failed = h.closed_session(), h.closed_session()
    h.closing.submit([("acme", ready)])
    await h.closing.drain()
    extract_fails(monkeypatch, 1)
    h.closing.submit([("acme", failed)])
    await h.closing.drain()
    for sid in (ready, failed):
        session = h.store._sessions[("acme", sid)]
        assert decode_session(encode_session(session)).view_with_messages() == session.view_with_messages()


async def test_a_restart_resumes_the_index_of_a_ready_summary_then_its_upgrade(tmp_path: Path) -> None:
    h = durable_harness(tmp_path, max_attempts=1)
    assert h.durable is not None
    durable = h.durable

    def stopping() -> None:  # the shard stops with the summary ready and its index pending
        durable.drain(Unavailable("stopping", {}))
        raise RuntimeError("the embedder died")

    h.while_indexing = stopping
    sid = h.closed_session(messages=2)
    await h.run_queued()
    assert (h.view(sid)["summary_status"], h.view(sid)["index_status"]) == ("ready", "pending")
    h.durable.close(snapshot=False)  # the log alone must bring the pending index back
    again = durable_harness(tmp_path)
    assert again.store.unfinished_summaries() == [("acme", sid)]
    assert again.store.pending_upgrades() == [], "the upgrade waits for the summary's entry"
    again.closing.submit(again.store.unfinished_summaries())
    await again.closing.drain()
    view = again.view(sid)
    assert (view["index_status"], view["summary_attempts"], view["summary_provenance"]["method"]) == (
        "ready", 1, "model",
    )  # fmt: skip
    assert again.jobs != [] and again.summary_entry(sid) == (view["summary"], "model")
    assert again.memory_ids() == {f"{sid}#1", f"{sid}#2", sid, f"{sid}#summary"}


def gone_at_the_mark(h: Harness, sid: str) -> dict[str, Any]:
    """A job whose MarkIndexed finds its session deleted (as the route deletes: forget first); the
    session's export line is kept, to import it again under its id."""
    real = h.record
    state: dict[str, Any] = {"line": None}

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        if isinstance(ops[0], MarkIndexed) and state["line"] is None:
            state["line"] = encode_session(h.store._sessions[("acme", sid)])
            h.delete(sid)
        return await real(ops)

    h.closing = ClosingJobs(record, h, h.config, sleep=h.sleep)
    return state


def import_again(h: Harness, sid: str, line: Any) -> None:
    """An import under the id, its job handed over after the log write (as the shard does)."""
    h.store.apply(ImportSession("acme", sid, line), T0)
    h.closing.submit(h.store.take_summary_jobs())


async def test_an_import_while_the_job_forgets_its_deleted_session_is_indexed() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=2)
    state = gone_at_the_mark(h, sid)
    real_index = h.index

    async def index(org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        if any(isinstance(op, ForgetSessions) for op in ops) and not state.get("imported"):
            state["imported"] = True
            results = await real_index(org, ops)  # the job's forget lands, then the import
            import_again(h, sid, state["line"])
            return results
        return await real_index(org, ops)

    h.index = index  # type: ignore[method-assign]
    await h.run_queued()
    await h.closing.drain()
    assert state.get("imported")
    assert h.view(sid)["index_status"] == "ready", "the import's job ran once the job it met ended"
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", sid, f"{sid}#summary"}


async def test_a_job_does_not_forget_a_session_imported_under_its_id_before_its_forget() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=2)
    state = gone_at_the_mark(h, sid)
    real_index = h.index
    forgets: list[int] = []

    async def index(org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        forgets.extend(1 for op in ops if isinstance(op, ForgetSessions))
        return await real_index(org, ops)

    def imported_as_the_mark_is_answered() -> None:
        if state["line"] is not None and "imported" not in state:
            state["imported"] = True
            import_again(h, sid, state["line"])

    real_record = h.closing._record

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        answers = await real_record(ops)
        imported_as_the_mark_is_answered()
        return answers

    h.closing._record = record
    h.index = index  # type: ignore[method-assign]
    await h.run_queued()
    await h.closing.drain()
    # What memory holds under the id may be the deleted session's: forgotten before the import's own
    # index, which puts it back.
    assert state.get("imported") and forgets == [1]
    assert h.view(sid)["index_status"] == "ready"
    assert h.memory_ids() == {f"{sid}#1", f"{sid}#2", sid, f"{sid}#summary"}


def an_earlier_export(h: Harness, sid: str, *, active: bool = False) -> Any:
    """An export of the session with its first two turns only, in other words (made before its last
    turns were appended); `active`: exported while it was still open."""
    new = decode_session(encode_session(h.store._sessions[("acme", sid)]))
    new.messages = [m._replace(content=f"the new session, turn {i}") for i, m in enumerate(new.messages[:2])]
    if active:
        new.status, new.ended_at, new.summary_status = SessionStatus.ACTIVE, None, None
    return encode_session(new)


async def test_an_import_between_a_missed_mark_and_its_check_loses_the_deleted_sessions_extra_turns() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=4, content="the old session, turn {i}")
    line = an_earlier_export(h, sid)
    real = h.record
    state: dict[str, bool] = {}

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        answers = await real(ops)
        if isinstance(ops[0], MarkIndexed) and "imported" not in state:
            state["imported"] = True
            import_again(h, sid, line)  # after the mark found it gone, before the job looks again
        return answers

    def deleted_while_embedded() -> None:
        h.while_indexing = None
        h.delete(sid)  # the route's forget first, then the delete: the job's upsert lands after

    h.closing = ClosingJobs(record, h, h.config, sleep=h.sleep)
    h.while_indexing = deleted_while_embedded
    await h.run_queued()
    await h.closing.drain()
    assert state.get("imported")
    view = h.view(sid)
    assert (view["index_status"], view["message_count"]) == ("ready", 2)
    assert turn_texts(h) == {f"{sid}#1": "the new session, turn 0", f"{sid}#2": "the new session, turn 1"}


async def test_an_active_session_imported_while_the_job_indexed_gets_its_live_turns_back() -> None:
    h = Harness(model_pass="off")
    sid = h.closed_session(messages=4, content="the old session, turn {i}")
    line = an_earlier_export(h, sid, active=True)
    real = h.record
    state: dict[str, bool] = {}

    def replaced_while_embedded() -> None:
        h.while_indexing = None
        h.delete(sid)
        h.store.apply(ImportSession("acme", sid, line), T0)  # open: live memory's, no job
        assert h.store.take_summary_jobs() == []
        state["imported"] = True

    async def live_tick() -> None:
        live = h.store.apply(LiveTurns("acme", sid, 100), T0)
        await index_live(h, {"acme": [(live_session(sid, live, live.messages), live.message_count)]})
        mark = (sid, live.live_through, len(live.messages), False, live.name)
        h.store.apply(MarkLive("acme", (mark,)), T0)

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        if isinstance(ops[0], MarkIndexed) and state.pop("imported", False):
            await live_tick()  # the import's turns into live memory before the job's mark misses
        return await real(ops)

    h.closing = ClosingJobs(record, h, h.config, sleep=h.sleep)
    h.while_indexing = replaced_while_embedded
    await h.run_queued()
    await h.closing.drain()
    assert h.store._sessions[("acme", sid)].live_through == 0, "live memory puts its turns in again"
    assert h.store.take_live() == [("acme", sid)]
    await live_tick()
    assert turn_texts(h) == {f"{sid}#1": "the new session, turn 0", f"{sid}#2": "the new session, turn 1"}


async def test_a_summary_asked_for_again_while_its_job_indexes_is_made_indexed_and_upgraded() -> None:
    h = Harness()
    sid = h.closed_session(messages=2)
    real = h.record

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        await asyncio.sleep(0)  # as a call to the shard does: other callbacks run meanwhile
        return await real(ops)

    h.closing = ClosingJobs(record, h, h.config, sleep=h.sleep)

    def asked_again() -> None:
        h.while_indexing = None
        h.store.apply(RequestSummary("acme", sid), T0)
        h.closing.submit(h.store.take_summary_jobs())  # as the shard does: its job is running

    h.while_indexing = asked_again
    await h.run_queued()
    view = h.view(sid)
    assert (view["summary_status"], view["index_status"]) == ("ready", "ready")
    assert view["summary_provenance"]["method"] == "model", "the new summary's upgrade ran"
    assert h.store.pending_upgrades() == [] and h.summary_entry(sid)[1] == "model"


async def test_an_open_session_imported_as_a_deleted_sessions_upgrade_missed_keeps_no_model_text() -> None:
    h = Harness()
    sid = h.closed_session(messages=4, content="the old session, turn {i}")
    line = an_earlier_export(h, sid, active=True)
    real = h.record
    state: dict[str, bool] = {}

    async def record(ops: Sequence[SessionOp]) -> list[Any]:
        answers = await real(ops)
        if isinstance(ops[0], UpgradeSummary) and "imported" not in state:
            state["imported"] = True
            h.store.apply(ImportSession("acme", sid, line), T0)  # open: live memory's, no job
        return answers

    def deleted_while_the_model_runs() -> None:
        h.during = None
        h.delete(sid)  # the route's forget first: the model's text lands after it

    h.closing = ClosingJobs(record, h, h.config, sleep=h.sleep, outcome=lambda *o: h.outcomes.append(o))
    h.during = deleted_while_the_model_runs
    await h.run_queued()
    await h.closing.drain()
    assert state.get("imported")
    assert h.memory_ids() == set(), "nothing of the deleted session's summary is the import's"
    assert h.store._sessions[("acme", sid)].live_through == 0 and h.store.take_live() == [("acme", sid)]


async def test_an_open_session_imported_while_a_deleted_sessions_upgrade_ran_keeps_no_model_text() -> None:
    h = Harness()
    sid = h.closed_session(messages=4, content="the old session, turn {i}")
    line = an_earlier_export(h, sid, active=True)

    def replaced_while_the_model_runs() -> None:
        h.during = None
        h.delete(sid)  # the route's forget first: the model's text lands after it
        h.store.apply(ImportSession("acme", sid, line), T0)  # open: live memory's, no job

    h.during = replaced_while_the_model_runs
    await h.run_queued()
    await h.closing.drain()
    assert h.memory_ids() == set(), "nothing of the deleted session's summary is the import's"
    assert h.store._sessions[("acme", sid)].live_through == 0 and h.store.take_live() == [("acme", sid)]
