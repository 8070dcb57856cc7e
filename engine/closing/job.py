"""ClosingJobs: a session shard's closing jobs, each seen through to a summary `ready` or `failed`
and the session in session memory, and the model's upgrades of the summaries they made.

A job is durable because its state is the session's: closing a session (or a summarize request)
sets `summary_status: pending` in the shard's log, a summary made sets `reindex` (the session still
has to go into session memory, `index_status: pending`) until MarkIndexed, and a restarted shard
resumes every job that is pending, was running, or has its index pending. An imported session whose
summary is kept (`reindex`, in the session's log record and snapshot) has a job too, that only puts
it back into session memory. A job is two parts, top to bottom: its summary (steps 1-5, `_attempt`),
then its index (step 6, `_index`). No model and no embedding run before the summary is recorded,
so a summary is `ready` as soon as its extract is made, whatever the embedder's backlog:

1. Read the job (SummaryJob, not logged): the session's name, times and messages, whether its
   turns are in session memory already, and through which seq live memory put them there while
   it was open. Nothing to do (the session is gone, or no summary or index is queued) ends the job,
   and so does a shard that takes no changes now (drained or read-only): the job could record
   nothing, and the shard resumes it once it takes changes again.
2. Index only (a summary made before a crash, or an import's re-index): straight to step 6.
3. A session without messages fails at once, for good (FailSummary, final): nothing of it to
   index (`index_status: failed`).
4. StartSummary, one record: the summary is running, attempt + 1. Nothing to start (deleted
   meanwhile) ends the job.
5. The conversation cut by characters (engine.closing.summary) and its extract, in a thread off
   the shard's event loop; then FinishSummary: `ready`, method extractive, reason "first pass",
   the model's upgrade marked queued while the model's pass runs (the shard's last answer from
   the pool said so), and its index queued (`reindex`: `index_status: pending`). Deleted meanwhile: nothing of
   the job is in memory, so there is nothing to take out. Refused (the log cannot hold it): the
   job fails, for good.
6. The index, once live memory has nothing of the session in flight (engine.closing.live), so that
   it reads how far live memory got and writes after it: the job is read again; its turns not yet
   in session memory (those live memory put in are read back, the rest embedded) with the
   whole-session entry (the mean of every turn's vector, replacing live memory's stand-in) in one
   upsert, then the summary's entry (embed, one upsert; made at the summary's time), then
   MarkIndexed, one record: `index_status: ready`, and the feeds' `session.indexed` event. The
   mark names the session object the job read (SummaryInput.incarnation, a stamp each session
   gets as it enters the store, never logged): one made for a session deleted meanwhile and
   imported again under its id (or read before the store was rebuilt) is not applied; what went
   in under the id is taken out, the session there now has its live state reset (ResetLive: live
   memory puts its turns in again, since the forget took out what its ticks put in), and the job
   starts again at step 1 for it. Turns already there (a summary asked for again) are not indexed
   again: only the summary goes in. Deleted meanwhile: what went in is taken out; a session made
   under its id after the mark missed is handled as one replaced (what went in may be the deleted
   session's extra turns). A summary asked for meanwhile goes back to step 1, and its index follows. Once
   indexed, the summary's upgrade is queued, if it is.

The summary is made outside the `concurrent_jobs` slots and only step 6 takes one: the extract is
cheap, and a close must not wait behind other sessions' indexing (which waits on the embedder, and
on live memory's tick) to get its summary. Steps 1-5 take a slot of their own instead
(`concurrent_summaries`): each extract is a thread of the default executor, which the shard's
snapshot I/O shares, so a burst of closes or an import of many sessions waits for a slot rather
than starting a thread apiece.

A step of 1-5 that raises fails the attempt: FailSummary, back to pending, and after a backoff that
doubles the attempt runs again from step 1; once the attempts are used up (or the log refused the
summary) the failure is final. A failed summary does not keep the session out of session memory:
FailSummary, final, with its reason, is recorded at once (the feeds' `summary.failed`) and in the
same record queues the session's index (`reindex`, unless its turns are in already), which step 6
then does without a summary entry (its turns and session entry, MarkIndexed: `index_status:
ready`), retried as any index; the flag is in the log and snapshot, so a crash resumes it. A failed
attempt counts whether or not it reached step 4 (engine.sessions.session).

A failed index (step 6) records nothing, since the summary is not its to fail: the summary stays
`ready` and the index is retried with the same backoff, from at least MIN_INDEX_BACKOFF_S and
capped at MAX_INDEX_BACKOFF_S, until it is done (a memory shard read-only or restarting for long
must not leave a session unsearchable until the next start). Only the session gone, the shard
taking no changes (it resumes the job once it does) or the job cancelled (a drain or a stop,
resumed at the next start) end it sooner; each retry waits outside the slots. A session submitted
again while its job runs (an import under the id of a session the job found deleted) has that run
go once more, from step 1, before it ends. A crash anywhere resumes from the log: before
FinishSummary the summary is made again; after it, only the index runs. Every upsert names its
entries by session and seq, so an index done twice replaces what went in: nothing doubles.

An upgrade (`_upgrade`) runs after step 6, in slots of its own (`concurrent_upgrades`), so it never
holds up a later close. It never starts before the summary's entry is in session memory, since it
replaces that entry: the job queues it after MarkIndexed, and the session holds it back while its
index is pending (Session.upgrade_due), so a restart resumes the index first. Read it
(SummaryUpgradeJob), the pool's verdict on the model's text (engine.closing.model_pass), a kept
text into session memory (the `#summary` entry replaced), then UpgradeSummary, one record that
ends the upgrade: the model's text and provenance, or the extract kept with the model's rejection
reason, or nothing changed (skipped: the pass is paused). The mark is in the session's log record
and snapshot, so a restarted shard resumes the upgrades it had queued. A summary asked for again
while its upgrade runs cancels the upgrade (the new summary queues its own, and indexes its own text
after whatever the upgrade put there); a session deleted meanwhile has its memory taken out, and so
does one made again under its id with no job of its own (its live state reset, as above). An
upgrade that fails is tried again with the job's backoff, then left queued for the shard's next
start. One that ends in anything but a logged kept text after the model's text went into session
memory (the log refused it, the shard was drained, a failure in between), and any upgrade resumed
at a start (an earlier run may have put the text in before a crash), puts the session's summary as
the session has it into session memory again (one more embed), so that memory never holds a
summary the session does not.

What it costs (tests/unit/closing/test_costs.py): a first attempt that succeeds writes three
session-log records and two memory-log records, and makes four calls outside the shard, one Ray
round trip each, none of them before the summary is ready; its upgrade one more session record,
and one call (the pool; its hand-off to a summarizer is one more), plus an embed and a memory
record when the model's text is kept. After live memory took the session's turns, step 6 makes one
more call (reading their vectors back) and embeds only the turns it had not taken (none: no
embed). Each is needed:
- StartSummary: a restart must know how many attempts were made;
- FinishSummary: the summary itself, that an upgrade is queued, and that its index is due;
- MarkIndexed: that the session is searchable (the summary was ready before it was);
- the turns' upsert, apart from the summary's: `index_session` and `index_summary` are each one
  batch of the memory shard (engine.closing.indexing);
- embedding the turns, then the summary: the same two batches;
- reading live memory's turn vectors back: the session entry's vector is the mean of all of them,
  and embedding them again would cost what live memory saved;
- UpgradeSummary: the verdict, and the end of the queued upgrade;
- the model: it runs in the summarizer pool, which batches the upgrades of every shard and judges
  every verdict of the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine.config import SummarizerConfig
from engine.errors import EngineError, SessionNotFound, SummaryFailed
from engine.models.summarizer import Conversation
from engine.sessions.ops import (
    FailSummary,
    FinishSummary,
    GetSession,
    MarkIndexed,
    ResetLive,
    SessionOp,
    StartSummary,
    SummaryInput,
    SummaryJob,
    SummaryUpgradeJob,
    UpgradeSummary,
)

from .indexing import closed_session, forget_sessions, index_session, index_summary
from .ports import ClosingPorts, Record
from .summary import conversation_of, extract_of

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
NO_MESSAGES = "the session has no messages to summarize"
FIRST_PASS = "first pass"  # the reason a closing job's summary is extractive: the model comes after
EXTRACT_MODEL = "extractive"  # the provenance's `model` of a summary no model has made
# The longest wait between a session's index attempts: they go on until one succeeds, so a memory
# shard back after a long outage takes the sessions that waited within this, without a retry
# storm against it while it is out.
MAX_INDEX_BACKOFF_S = 60.0
# The first wait between a session's index attempts whatever `retry_backoff_s` says: they have no
# attempt limit, so a backoff of 0 (allowed, and fine for the summary's few attempts) would retry
# against a failing memory shard in a busy loop. The waits still double from it.
MIN_INDEX_BACKOFF_S = 0.5

# Told how each attempt ended ("ready", "retried", "failed") and, once ready, the seconds since
# the session ended; each failed index attempt ("index_retried": it is always retried), and how
# each upgrade ended ("upgrade_kept", "upgrade_rejected", "upgrade_skipped", "upgrade_failed"),
# with no seconds.
Outcome = Callable[[str, float | None], None]


class _Gone(Exception):
    """The session was deleted while its job ran, after the job put something in its memory."""


class _Replaced(Exception):
    """The session was deleted and another made under its id (an import) while its job indexed, or
    the shard's store was rebuilt meanwhile: the mark was not the session's it found, so the job
    takes out what went in under the id and starts again from step 1 for the session there now."""


class _Refused(Exception):
    """The log refused the summary's text: the job fails for good, whatever attempt it was."""


def backoff_s(
    config: SummarizerConfig, attempt: int, cap_s: float = float("inf"), floor_s: float = 0.0
) -> float:
    """The wait after failed attempt `attempt` (from 1): the job's backoff (at least `floor_s`),
    doubled each time, at most `cap_s`. The exponent stops growing long before a float would
    overflow."""
    return min(cap_s, max(floor_s, config.retry_backoff_s) * 2.0 ** min(attempt - 1, 32))


def _extract(job: SummaryInput, config: SummarizerConfig) -> tuple[Conversation, str]:
    """Step 5's work, in a thread: the session is ended, so its messages no longer change while
    the thread reads them."""
    conversation = conversation_of(job, config)
    return conversation, extract_of(conversation)


def failure_reason(exc: BaseException) -> str:
    """One line a client can read: the original error's message, not a traceback."""
    cause = getattr(exc, "cause", None) or exc  # Ray wraps an actor's exception; .cause is the original
    text = str(cause).strip().splitlines()
    line = text[0] if text else type(cause).__name__
    return f"{type(cause).__name__}: {line}"[:MAX_REASON_CHARS]


class ClosingJobs:
    def __init__(
        self,
        record: Record,
        ports: ClosingPorts,
        config: SummarizerConfig,
        *,
        writable: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        outcome: Outcome | None = None,
        settled: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        """`writable`: whether the shard takes changes now (not drained, not read-only).
        `settled(org, session_id)`: returns once live memory (engine.closing.live) has nothing of
        the session in flight, so that the job reads how far it got and writes after it."""
        self._record = record
        self._settled = settled
        self._writable = writable
        self._ports = ports
        self._config = config
        self._sleep = sleep
        self._outcome = outcome or (lambda name, lag_s: None)
        self._slots = asyncio.Semaphore(config.concurrent_jobs)
        # Summaries (steps 1-5) in slots of their own: never behind an index, and never unbounded.
        self._summary_slots = asyncio.Semaphore(config.concurrent_summaries)
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Sessions submitted again while their job ran: the job runs once more for them, since the
        # run under way may have read the session before it was made again (an import after a delete).
        self._again: set[tuple[str, str]] = set()
        # Sessions whose upgrade is queued once their job's run ends (`_index`): an upgrade never
        # starts while the job still has the session.
        self._upgrade_after: set[tuple[str, str]] = set()
        # Upgrades wait on the model in slots of their own: a close's summary never waits for them.
        self._upgrade_slots = asyncio.Semaphore(config.concurrent_upgrades)
        self._upgrading: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Sessions whose `#summary` entry may hold a text that is not their summary: a kept text
        # indexed and not logged (refused, drained, a failure in between), or an upgrade queued
        # before this run, whose earlier run may have done so before a crash.
        self._unsure: set[tuple[str, str]] = set()
        # Whether a new summary queues an upgrade: off never does; otherwise as the pool last
        # answered (a skipped verdict: the pass is paused, so no more are queued until a restart).
        self.model_pass = config.model_pass != "off"

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def upgrading(self) -> int:
        return len(self._upgrading)

    def submit(self, jobs: Sequence[tuple[str, str]]) -> None:
        for key in jobs:
            upgrade = self._upgrading.get(key)
            if upgrade is not None:
                upgrade.cancel()  # asked for again: the new summary queues its own upgrade
            if key in self._active:  # queued twice (closed, then asked again): its run goes once more
                self._again.add(key)
            else:
                task = asyncio.get_running_loop().create_task(self._run(*key))
                self._active[key] = task

    def submit_upgrades(self, keys: Sequence[tuple[str, str]], *, resumed: bool = True) -> None:
        """The model's pass over these sessions' ready extracts (a restart resumes those queued).
        `resumed`: queued before this run (a start, writes taken again), not by a job that has just
        put the extract into session memory."""
        for key in keys:
            if resumed:
                self._unsure.add(key)
            else:
                self._unsure.discard(key)
            if key not in self._upgrading and key not in self._active:
                task = asyncio.get_running_loop().create_task(self._run_upgrade(*key))
                self._upgrading[key] = task

    async def drain(self, *, upgrades: bool = True) -> None:
        """Wait for every job in flight, and with `upgrades` every upgrade too (tests, benchmarks)."""
        while self._active or (upgrades and self._upgrading):
            waiting = [*self._active.values(), *(self._upgrading.values() if upgrades else ())]
            await asyncio.gather(*waiting, return_exceptions=True)

    def cancel(self) -> None:
        # Cancelled jobs stay pending or running in the log, and cancelled upgrades queued, so the
        # next start resumes them.
        for task in [*self._active.values(), *self._upgrading.values()]:
            task.cancel()

    async def _run(self, org: str, session_id: str) -> None:
        key = (org, session_id)
        upgrade = False
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._job(org, session_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The shard itself failed (it restarts and resumes the job); nothing to record here.
                    log.exception("closing job interrupted", extra={"org": org, "session_id": session_id})
                if key not in self._again:
                    break
        finally:
            # Here, with no await between it and the check above, so a job submitted as this one
            # ends either runs once more here or gets a new run.
            self._again.discard(key)
            self._active.pop(key, None)
            upgrade = key in self._upgrade_after
            self._upgrade_after.discard(key)
        if upgrade:  # not after a cancel: the session keeps it queued for the next start
            self.submit_upgrades([key], resumed=False)

    async def _job(self, org: str, session_id: str) -> None:
        # The summary is made outside the indexing slots: it needs no model and no embedding, so a
        # close never waits behind other sessions' indexing for it. Only the indexing, which waits
        # on the embedder, takes one of the `concurrent_jobs` slots.
        while True:
            try:
                while await self._summaries(org, session_id):
                    if not await self._indexes(org, session_id, self._index):
                        return
                return
            except _Replaced:
                # What went in may be the deleted session's (more turns than this one has, under its
                # id): taken out first, then this run indexes the session there now.
                log.info("session replaced while indexed", extra={"org": org, "session_id": session_id})
                if not await self._indexes(org, session_id, self._forget_replaced):
                    return

    async def _summaries(self, org: str, session_id: str) -> bool:
        """Steps 1-5, retried; whether the job goes on to index (nothing to do, or a shard that took
        no change, does not)."""
        config = self._config
        for attempt in range(1, config.max_attempts + 1):
            try:
                async with self._summary_slots:
                    return await self._attempt(org, session_id)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the attempt failed; its reason is kept
                final = attempt == config.max_attempts or isinstance(exc, _Refused)
                reason = str(exc) if isinstance(exc, _Refused) else failure_reason(exc)
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
                # A summary that fails for good must not keep the session out of session memory:
                # the record of the failure also queues its index (Session.reindex), so the failure
                # is told at once and step 6 puts the turns in after it, resumed after a crash.
                failed = FailSummary(org, session_id, reason, final, index=True if final else None)
                if isinstance(await self._one(failed), EngineError):
                    return False  # the shard took no changes meanwhile: nothing counted, it resumes the job
                self._outcome("failed" if final else "retried", None)
                if final:
                    return True  # step 6, without a summary: its turns and session entry
                await self._sleep(backoff_s(config, attempt))
        return False

    async def _attempt(self, org: str, session_id: str) -> bool:
        """One attempt at the summary: steps 1-5 of the module's docstring."""
        job = await self._one(SummaryJob(org, session_id))  # 1
        if job is None or isinstance(job, EngineError) or not self._writable():
            return False
        if job.reindex:  # 2
            return True
        if not job.messages:  # 3
            await self._one(FailSummary(org, session_id, NO_MESSAGES, True))
            return False
        started = await self._one(StartSummary(org, session_id))  # 4
        if started is None or isinstance(started, EngineError):
            return False  # gone, or the shard took no changes meanwhile (it resumes the job once it does)
        conversation, text = await asyncio.to_thread(_extract, job, self._config)
        if not text:
            raise SummaryFailed("the conversation has no text to summarize")
        finish = FinishSummary(
            org,
            session_id,
            text,
            EXTRACT_MODEL,
            len(conversation.messages),
            conversation.total,
            method="extractive",
            reason=FIRST_PASS,
            upgrade=self.model_pass,
            index=True,
        )
        done = await self._one(finish)  # 5
        if isinstance(done, SessionNotFound):
            return False  # deleted meanwhile: nothing of this job is in memory
        if isinstance(done, EngineError):
            # The summary could not be stored (the log refused its text): a failed job, not one
            # left running for ever.
            raise _Refused(f"the summary was refused: {done}"[:MAX_REASON_CHARS])
        made_at = done["summary_provenance"]["created_at"]
        lag_s = None if job.ended_at is None else max(0.0, (made_at - job.ended_at) / 1000)
        self._outcome("ready", lag_s)
        return True

    async def _indexes(self, org: str, session_id: str, step: Callable[[str, str], Awaitable[bool]]) -> bool:
        """`step` (step 6, or the index of a session whose summary failed for good), retried until it
        is done (the module's docstring says what ends it sooner); what it answers."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._slots:  # each attempt in a slot; the waits between them in none
                    return await step(org, session_id)
            except _Replaced:
                raise
            except _Gone:
                if await self._forget_if_gone(org, session_id):
                    return False
                # Made again under its id since the mark missed (an import): what went in may be the
                # deleted session's (more turns than this one has), so it is replaced as below. Its
                # own job has not run yet, since this one still has its key.
                raise _Replaced from None
            except Exception as exc:  # noqa: BLE001 - the summary stays ready; the index is retried
                log.warning(
                    "indexing attempt failed",
                    extra={
                        "org": org,
                        "session_id": session_id,
                        "attempt": attempt,
                        "reason": failure_reason(exc),
                    },
                )
                if not self._writable():
                    return False  # nothing could be recorded: the shard resumes it once it takes changes
                self._outcome("index_retried", None)
                await self._sleep(backoff_s(self._config, attempt, MAX_INDEX_BACKOFF_S, MIN_INDEX_BACKOFF_S))

    async def _index(self, org: str, session_id: str) -> bool:
        """Step 6: the session, and its ready summary, into session memory, then MarkIndexed."""
        if self._settled is not None:
            await self._settled(org, session_id)
        job = await self._one(SummaryJob(org, session_id))
        if job is None or isinstance(job, EngineError) or not self._writable():
            return False
        if not job.reindex:
            return True  # a summary asked for since: made first, then indexed with its text
        entries = None
        if not job.indexed:
            entries = await index_session(self._ports, org, closed_session(session_id, job), job.live_through)
        if job.summary is not None:
            text, method, made_at = job.summary
            await index_summary(self._ports, org, session_id, text, method, made_at=made_at)
        done = await self._mark(org, session_id, job, entries)
        if isinstance(done, EngineError):
            return False  # the shard took no changes meanwhile: still queued, it resumes the job
        if done["summary_status"] in ("pending", "running"):
            # Asked for while the index went in (RequestSummary found this job running, so it was
            # not queued again): made by this run, then indexed.
            return True
        if "upgrade" in (done["summary_provenance"] or {}):
            # Its `#summary` entry is the summary now: the upgrade may replace it. Queued as this
            # job's run ends (`_run`), since a submit_upgrades skips a session whose job runs.
            self._upgrade_after.add((org, session_id))
        return False

    async def _forget_replaced(self, org: str, session_id: str) -> bool:
        """What went into session memory under the id of a session replaced while its job indexed
        taken out, once live memory has nothing of the session there now in flight; then ResetLive,
        so that live memory puts every turn of the session there now in again (the forget took out
        what its ticks put in, and an active session has no job to do it) and its index, if it has
        one, embeds them rather than reading back what memory no longer holds. Whether the job goes
        on (it always does)."""
        if self._settled is not None:
            await self._settled(org, session_id)
        await forget_sessions(self._ports, org, [session_id])
        await self._one(ResetLive(org, session_id))  # none there (deleted again): nothing to reset
        return True

    async def _forget_if_gone(self, org: str, session_id: str) -> bool:
        """A deleted session's memory taken out; whether it was (False: a session was made under its
        id since, an import, and the caller decides what to take out)."""
        found = await self._one(GetSession(org, session_id, limit=0))
        if isinstance(found, EngineError):  # gone (or unreadable: nothing is known to be there)
            await forget_sessions(self._ports, org, [session_id])
            return True
        return False

    async def _mark(self, org: str, session_id: str, job: SummaryInput, entries: int | None) -> Any:
        """MarkIndexed for the session the job read (its view, or the error the shard answered):
        _Gone if it was deleted, _Replaced if another session has its id now."""
        done = await self._one(MarkIndexed(org, session_id, entries, job.incarnation))
        if isinstance(done, SessionNotFound):
            raise _Gone
        if done is None:
            raise _Replaced
        return done

    async def _run_upgrade(self, org: str, session_id: str) -> None:
        try:
            async with self._upgrade_slots:
                await self._upgrades(org, session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("summary upgrade interrupted", extra={"org": org, "session_id": session_id})
        finally:
            self._upgrading.pop((org, session_id), None)

    async def _upgrades(self, org: str, session_id: str) -> None:
        config = self._config
        for attempt in range(1, config.max_attempts + 1):
            try:
                await self._upgrade(org, session_id)
                if (org, session_id) in self._unsure:
                    await self._index_current(org, session_id)
                return
            except _Gone:
                self._unsure.discard((org, session_id))
                if not await self._forget_if_gone(org, session_id) and (org, session_id) not in self._active:
                    # Made again under its id (an import) with no job of its own: the model's text
                    # of the deleted session may be its `#summary`, so the id is forgotten, and live
                    # memory puts its turns in again. One with a job cancelled this upgrade (submit)
                    # and indexes its own entries.
                    await self._forget_replaced(org, session_id)
                return
            except Exception as exc:  # noqa: BLE001 - the extract stays; the upgrade stays queued
                log.warning(
                    "summary upgrade failed",
                    extra={
                        "org": org,
                        "session_id": session_id,
                        "attempt": attempt,
                        "reason": failure_reason(exc),
                    },
                )
                self._outcome("upgrade_failed", None)
                if attempt == config.max_attempts:
                    return  # still queued in the session: the shard's next start tries again
                await self._sleep(backoff_s(config, attempt))

    async def _upgrade(self, org: str, session_id: str) -> None:
        """One upgrade: the module docstring's last paragraph but one."""
        job = await self._one(SummaryUpgradeJob(org, session_id))
        if job is None or isinstance(job, EngineError) or not self._writable():
            return
        verdict = await self._ports.upgrade(conversation_of(job, self._config))
        self.model_pass = verdict.outcome != "skipped"
        if verdict.outcome == "kept" and verdict.text:
            self._unsure.add((org, session_id))  # until UpgradeSummary is logged
            await index_summary(self._ports, org, session_id, verdict.text, "model")
        done = await self._one(
            UpgradeSummary(
                org,
                session_id,
                verdict.outcome,
                verdict.model,
                verdict.text,
                verdict.reason,
                verdict.messages_covered,
                verdict.messages_total,
            )
        )
        if isinstance(done, SessionNotFound):
            raise _Gone
        if isinstance(done, EngineError):
            return  # the shard took no changes meanwhile, or refused the text: still queued
        if done is not None and verdict.outcome == "kept":
            self._unsure.discard((org, session_id))  # the entry holds the summary the log holds
        self._outcome(f"upgrade_{verdict.outcome}", None)

    async def _index_current(self, org: str, session_id: str) -> None:
        """An upgrade that ended in anything but a logged kept text, where session memory may hold
        the model's text (`_unsure`): the session's summary, as the session has it, into session
        memory again (one embed), so memory never says what the session does not. A summary asked
        for again meanwhile indexes its own text, a session gone has its memory taken out, and so
        does an open one made again under its id (its live state reset)."""
        key = (org, session_id)
        view = await self._one(GetSession(org, session_id, limit=0))
        if isinstance(view, SessionNotFound):
            await forget_sessions(self._ports, org, [session_id])
        elif isinstance(view, EngineError):
            return  # unreadable now (a refused shard): still unsure, for the next run
        elif view["summary_status"] == "ready":
            provenance = view["summary_provenance"]
            method, made_at = provenance["method"], provenance["created_at"]
            await index_summary(self._ports, org, session_id, view["summary"], method, made_at=made_at)
        elif view["status"] == "active" and key not in self._active:
            # Deleted and made again under its id, open (an import), while the upgrade ran: it has
            # no summary to put back, and live memory puts its turns in again after the forget.
            await self._forget_replaced(org, session_id)
        self._unsure.discard(key)

    async def _one(self, op: SessionOp) -> Any:
        """Apply one op through the shard's log; its answer (an error the shard answered, as a value)."""
        (result,) = await self._record([op])
        return result
