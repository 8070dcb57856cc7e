"""What one close costs: the records the job and its upgrade write to the session shard's log and
to the memory shard's log, and the calls they make outside the shard (each one Ray round trip from
the session shard; the summarizer pool's hand-off to a summarizer worker is one more, not counted
here). And what live memory's tick costs, and a close after it.

A real close of a real DurableSessions (its log in a temporary directory) through ClosingJobs,
with counting ports: the embedder is a function, the pool a real ModelPass around a function
that writes the model's text, the memory shard a real DurableMemory. engine.closing.job says why
each record and call is needed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.clock import ManualClock
from engine.closing.job import ClosingJobs
from engine.closing.live import LiveIndexer
from engine.closing.model_pass import Acceptance, ModelPass, Verdict
from engine.config import DurabilityConfig, LiveMemoryConfig, SummarizerConfig
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import MemoryOp
from engine.models.summarizer import Conversation, Summary
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession, DeleteSession, EndSession, SessionOp
from engine.sessions.session import NewMessage, SessionStatus, new_session_id


class Close:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        clock = ManualClock()
        self.sessions = DurableSessions(tmp_path / "sessions", DurabilityConfig(), clock, lock_wait_s=0.2)
        self.memory = DurableMemory(
            tmp_path / "memory", DurabilityConfig(), IndexParams(), clock, lock_wait_s=0.2
        )
        self.calls: Counter[str] = Counter()
        self.summaries_fail = 0
        self.embeds_fail = 0
        self.degenerate = False  # the model continues the dialogue instead of summarizing it
        config = SummarizerConfig.model_validate({"retry_backoff_s": 0.0, **settings})
        self.model_pass = ModelPass(
            Acceptance(config.model_pass, config.acceptance_window, "fake"), self.generate
        )
        self.jobs = ClosingJobs(self.record, self, config)

    async def record(self, ops: Sequence[SessionOp]) -> list[Any]:
        return self.sessions.commit(ops)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls["embed"] += 1
        if self.embeds_fail:
            self.embeds_fail -= 1
            raise RuntimeError("the embedder died")
        rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8) for text in texts]
        return np.asarray([row / np.linalg.norm(row) for row in rows], dtype=np.float32)

    async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
        self.calls["index"] += 1
        return self.memory.commit(ops)

    async def upgrade(self, conversation: Conversation) -> Verdict:
        self.calls["upgrade"] += 1
        return await self.model_pass.upgrade(conversation)

    async def generate(self, conversation: Conversation) -> Summary:
        if self.summaries_fail:
            self.summaries_fail -= 1
            raise RuntimeError("the model fell over")
        total = conversation.total
        text = f"They talked about {conversation.messages[0][2]}"
        if self.degenerate:
            text = "user: hello\nassistant: hi"
        return Summary(text, "fake-model", total, total, 10, 3)

    async def close(self, messages: int, *, live: int = 0) -> dict[str, Any]:
        """Close a session of `messages` messages, run its job, and count what the job cost. With
        `live`, that many of them went into memory by a live tick first (not counted)."""
        sid = new_session_id()
        said = tuple(NewMessage("user", f"message {i} about the lighthouse") for i in range(messages))
        self.sessions.commit(
            [CreateSession("acme", sid, "trip", 60, {}), AppendMessages("acme", sid, said[:live])]
        )
        if live:
            await self.tick()
            self.calls.clear()
        if said[live:]:
            self.sessions.commit([AppendMessages("acme", sid, said[live:])])
        self.sessions.commit([EndSession("acme", sid, SessionStatus.CLOSED)])
        session_lsn, memory_lsn = self.sessions.lsn, self.memory.lsn
        self.jobs.submit(self.sessions.store.take_summary_jobs())
        await self.jobs.drain()
        return {
            "session records": self.sessions.lsn - session_lsn,
            "memory records": self.memory.lsn - memory_lsn,
            "calls": dict(self.calls),
        }

    async def tick(self) -> dict[str, Any]:
        """One tick of live memory over what was appended, and what it cost."""
        live = LiveIndexer(self.record, self, LiveMemoryConfig(), take=self.sessions.store.take_live)
        session_lsn, memory_lsn = self.sessions.lsn, self.memory.lsn
        await live.tick()
        return {
            "session records": self.sessions.lsn - session_lsn,
            "memory records": self.memory.lsn - memory_lsn,
            "calls": dict(self.calls),
        }


async def test_a_first_attempt_that_succeeds_and_the_model_is_kept(tmp_path: Path) -> None:
    cost = await Close(tmp_path).close(messages=3)
    assert cost == {
        # StartSummary (running), FinishSummary (the extract, ready; upgrade and index queued),
        # MarkIndexed (searchable), UpgradeSummary (the model's text)
        "session records": 4,
        "memory records": 3,  # the turns with the session entry; the extract; the model's text
        # turns, extract, model's text; their upserts; the pool (which makes and judges the text)
        "calls": {"embed": 3, "index": 3, "upgrade": 1},
    }


async def test_a_first_attempt_whose_model_text_is_rejected(tmp_path: Path) -> None:
    close = Close(tmp_path)
    close.degenerate = True
    cost = await close.close(messages=3)
    assert cost == {
        "session records": 4,  # StartSummary, FinishSummary, MarkIndexed, UpgradeSummary (the rejection)
        "memory records": 2,  # the turns; the extract, which stays
        "calls": {"embed": 2, "index": 2, "upgrade": 1},
    }


async def test_a_first_attempt_with_the_model_pass_off(tmp_path: Path) -> None:
    cost = await Close(tmp_path, model_pass="off").close(messages=3)
    assert cost == {
        # StartSummary, FinishSummary (ready with the extract, no upgrade queued), MarkIndexed
        "session records": 3,
        "memory records": 2,
        "calls": {"embed": 2, "index": 2},
    }


async def test_a_failed_model_costs_no_summary_attempt(tmp_path: Path) -> None:
    close = Close(tmp_path, max_attempts=2)
    close.summaries_fail = 1
    cost = await close.close(messages=3)
    assert cost == {
        # StartSummary, FinishSummary, MarkIndexed; the upgrade's first try fails (nothing written),
        # its second writes UpgradeSummary
        "session records": 4,
        "memory records": 3,
        "calls": {"embed": 3, "index": 3, "upgrade": 2},
    }


async def test_a_retry_after_the_turns_failed_to_index(tmp_path: Path) -> None:
    close = Close(tmp_path, model_pass="off")
    close.embeds_fail = 1
    cost = await close.close(messages=3)
    assert cost == {
        # StartSummary, FinishSummary (the summary is not failed by its index); MarkIndexed
        "session records": 3,
        "memory records": 2,
        "calls": {"embed": 3, "index": 2},
    }


async def test_a_session_without_messages(tmp_path: Path) -> None:
    cost = await Close(tmp_path).close(messages=0)
    assert cost == {"session records": 1, "memory records": 0, "calls": {}}  # FailSummary


async def test_a_session_deleted_before_its_job_ran(tmp_path: Path) -> None:
    close = Close(tmp_path)
    sid = new_session_id()
    said = (NewMessage("user", "hi there"),)
    close.sessions.commit([CreateSession("acme", sid, "trip", 60, {}), AppendMessages("acme", sid, said)])
    close.sessions.commit([EndSession("acme", sid, SessionStatus.CLOSED)])
    jobs = close.sessions.store.take_summary_jobs()
    close.sessions.commit([DeleteSession("acme", sid)])
    lsn = close.sessions.lsn
    close.jobs.submit(jobs)
    await close.jobs.drain()
    assert (close.sessions.lsn - lsn, dict(close.calls)) == (0, {}), "the job's read finds nothing to do"


async def test_a_live_tick_over_several_sessions(tmp_path: Path) -> None:
    close = Close(tmp_path)
    for _ in range(3):
        sid = new_session_id()
        said = tuple(NewMessage("user", f"message {i}") for i in range(4))
        close.sessions.commit([CreateSession("acme", sid, "trip", 60, {}), AppendMessages("acme", sid, said)])
    cost = await close.tick()
    assert cost == {
        "session records": 1,  # MarkLive: every session's live_through
        "memory records": 1,  # the organization's turns and stand-ins, one batch
        "calls": {"embed": 1, "index": 1},
    }


async def test_a_close_after_live_memory_took_every_turn(tmp_path: Path) -> None:
    cost = await Close(tmp_path, model_pass="off").close(messages=3, live=3)
    assert cost == {
        "session records": 3,  # StartSummary, FinishSummary, MarkIndexed
        "memory records": 2,  # the session entry (no turn left to add); the extract
        # the extract only: the session entry's vector is the mean of the turns read back; reading
        # them, the upsert, the extract's upsert
        "calls": {"embed": 1, "index": 3},
    }


async def test_a_close_after_live_memory_took_some_turns(tmp_path: Path) -> None:
    cost = await Close(tmp_path, model_pass="off").close(messages=3, live=2)
    assert cost == {
        "session records": 3,
        "memory records": 2,  # the last turn with the session entry; the extract
        "calls": {"embed": 2, "index": 3},  # the last turn, the extract; a read and two upserts
    }
