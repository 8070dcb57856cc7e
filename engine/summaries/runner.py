"""The summary runner of one session shard: takes the shard's queued summary jobs and sees each
through to `ready` or `failed`.

A job is durable because its state is the session's: closing a session (or a summarize request)
sets `summary_status: pending` in the shard's log, and a restarted shard resumes every job that is
pending or was running. Each step is a logged op of the shard: StartSummary (running, attempt + 1),
then FinishSummary (ready) or FailSummary (back to pending and retried after a backoff that
doubles, or failed with the reason once the attempts are used up).

A job goes one way: first the session's messages into its organization's session memory
(`memory.index_session`, then MarkIndexed: searchable, without waiting for the slow model), then
the summary from the summarizer pool (`summarize`), then the summary into session memory
(`memory.index_summary`), then FinishSummary. Each step that fails fails the attempt; a retry
skips the indexing that is already done. If the session was deleted meanwhile, what was just
indexed is taken out again (`memory.forget`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from engine.config import SummarizerConfig
from engine.errors import EngineError, SessionNotFound
from engine.memory.sessions import ClosedSession
from engine.models.summarizer import Conversation, Summary, precut
from engine.sessions.ops import FailSummary, FinishSummary, MarkIndexed, SessionOp, StartSummary, SummaryInput

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


Apply = Callable[[Sequence[SessionOp]], Awaitable[list[Any]]]
Summarize = Callable[[Conversation], Awaitable[Summary]]  # the text, from the summarizer pool
# Told how each attempt ended ("ready", "extractive": ready with an extract because the model's
# text was degenerate, "retried", "failed") and, once ready, the seconds since the session ended.
Outcome = Callable[[str, float | None], None]


class SessionMemory(Protocol):
    """engine.memory.indexer.SessionIndexer, as the runner uses it."""

    async def index_session(self, org: str, session: ClosedSession) -> int: ...

    async def index_summary(self, org: str, session_id: str, text: str, method: str) -> None: ...

    async def forget(self, org: str, session_ids: Sequence[str]) -> None: ...


class _Gone(Exception):
    """The session was deleted while its job ran."""


def failure_reason(exc: BaseException) -> str:
    """One line a client can read: the original error's message, not a traceback."""
    cause = getattr(exc, "cause", None) or exc  # Ray wraps an actor's exception; .cause is the original
    text = str(cause).strip().splitlines()
    line = text[0] if text else type(cause).__name__
    return f"{type(cause).__name__}: {line}"[:MAX_REASON_CHARS]


class SummaryRunner:
    def __init__(
        self,
        apply: Apply,
        summarize: Summarize,
        memory: SessionMemory,
        config: SummarizerConfig,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        outcome: Outcome | None = None,
    ) -> None:
        self._apply = apply
        self._outcome = outcome or (lambda name, lag_s: None)
        self._summarize = summarize
        self._memory = memory
        self._config = config
        self._sleep = sleep
        self._slots = asyncio.Semaphore(config.concurrent_jobs)
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, jobs: Sequence[tuple[str, str]]) -> None:
        for key in jobs:
            if key not in self._active:  # queued twice (closed, then asked again): one run does both
                task = asyncio.get_running_loop().create_task(self._run(*key))
                self._active[key] = task

    async def drain(self) -> None:
        """Wait for every job in flight (tests, benchmarks)."""
        while self._active:
            await asyncio.gather(*list(self._active.values()), return_exceptions=True)

    def cancel(self) -> None:
        # Cancelled jobs stay pending or running in the log, so the next start resumes them.
        for task in list(self._active.values()):
            task.cancel()

    async def _run(self, org: str, session_id: str) -> None:
        try:
            async with self._slots:
                await self._attempts(org, session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The shard itself failed (it restarts and resumes the job); nothing to record here.
            log.exception("summary job interrupted", extra={"org": org, "session_id": session_id})
        finally:
            # Here, with no await after it, so a job queued again as this one ends gets a new run.
            self._active.pop((org, session_id), None)

    async def _attempts(self, org: str, session_id: str) -> None:
        config = self._config
        for attempt in range(1, config.max_attempts + 1):
            (started,) = await self._apply([StartSummary(org, session_id)])
            if started is None or isinstance(started, EngineError):
                return  # deleted, or nothing queued any more
            if not started.messages:
                await self._apply(
                    [FailSummary(org, session_id, "the session has no messages to summarize", True)]
                )
                return
            try:
                await self._attempt(org, session_id, started)
                return
            except _Gone:
                await self._memory.forget(org, [session_id])  # deleted while the job ran
                return
            except Exception as exc:  # noqa: BLE001 - whatever failed, the attempt failed; its reason is kept
                final = attempt == config.max_attempts
                reason = failure_reason(exc)
                log.warning(
                    "summary attempt failed",
                    extra={
                        "org": org,
                        "session_id": session_id,
                        "attempt": attempt,
                        "final": final,
                        "reason": reason,
                    },
                )
                await self._apply([FailSummary(org, session_id, reason, final)])
                self._outcome("failed" if final else "retried", None)
                if final:
                    return
                await self._sleep(config.retry_backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, org: str, session_id: str, started: SummaryInput) -> None:
        config = self._config
        messages = started.messages
        if not started.indexed:
            closed = ClosedSession(
                session_id, started.name, started.created_at, started.ended_at, [m[:2] for m in messages]
            )
            entries = await self._memory.index_session(org, closed)
            await self._step(MarkIndexed(org, session_id, entries))
        conversation = Conversation(
            started.name,
            precut(messages, keep_first=config.keep_first_messages, max_input_tokens=config.max_input_tokens),
            len(messages),
        )
        summary = await self._summarize(conversation)
        await self._memory.index_summary(org, session_id, summary.text, summary.method)
        done = await self._step(
            FinishSummary(
                org,
                session_id,
                summary.text,
                summary.model,
                summary.messages_covered,
                summary.messages_total,
                method=summary.method,
                reason=summary.reason,
            )
        )
        if isinstance(done, EngineError):
            # The summary could not be stored (the log refused its text): a failed job, not one
            # left running for ever.
            await self._apply([FailSummary(org, session_id, f"the summary was refused: {done}", True)])
            self._outcome("failed", None)
            return
        lag_s = (
            None
            if started.ended_at is None
            else max(0.0, (done["summary_provenance"]["created_at"] - started.ended_at) / 1000)
        )
        self._outcome("ready" if summary.method in (None, "model") else "extractive", lag_s)

    async def _step(self, op: SessionOp) -> Any:
        """Apply one op of the job; raises _Gone if its session was deleted meanwhile."""
        (result,) = await self._apply([op])
        if isinstance(result, SessionNotFound):
            raise _Gone
        return result
