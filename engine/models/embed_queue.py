"""One embedding model shared by two kinds of callers: a request whose client waits for the answer
(a memory query, an upsert of texts) and background indexing of closed sessions, which may be
thousands of texts behind.

Served first in, first out, a query waited behind the whole indexing backlog (under the suite's
fleet: benchmarks/RESULTS.md#2-a-querys-embedding-goes-before-indexing-enginemodelsembed_queuepy).
Here the model runs one call at a time on its own thread, and each call takes texts from the head
of one queue, up to `chunk` of them, splitting a long job across calls and packing short ones
together:
- urgent texts go first, so a query waits for at most the call in progress, and concurrent queries
  share one call;
- when both queues hold texts, the calls alternate, so indexing keeps at least every other call
  under a steady stream of queries and never starves.

It knows nothing of Ray: the embedder actor (engine.runtime.model_actors) serves it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(eq=False)
class _Job:
    texts: Sequence[str]
    answer: asyncio.Future[np.ndarray]
    parts: list[np.ndarray] = field(default_factory=list)
    done: int = 0  # texts embedded so far

    @property
    def left(self) -> int:
        return len(self.texts) - self.done


class EmbedQueue:
    def __init__(self, embed: EmbedFn, dimension: int, *, chunk: int) -> None:
        self._embed = embed
        self._dimension = dimension
        self._chunk = chunk
        self._urgent: collections.deque[_Job] = collections.deque()
        self._background: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._urgent_last = False  # whether the last call took urgent texts

    async def embed(self, texts: Sequence[str], *, urgent: bool) -> np.ndarray:
        """(len(texts), dimension) float32 rows, in the order of `texts`."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        job = _Job(texts, asyncio.get_running_loop().create_future())
        (self._urgent if urgent else self._background).append(job)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        self._wake.set()
        return await job.answer

    def waiting(self) -> dict[str, int]:
        """Texts not yet embedded, by queue."""
        return {
            "urgent": sum(job.left for job in self._urgent),
            "background": sum(job.left for job in self._background),
        }

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            _drop_abandoned(self._urgent)
            _drop_abandoned(self._background)
            queue = self._next_queue()
            if queue is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            taken = self._take(queue)
            texts = [text for job, start, count in taken for text in job.texts[start : start + count]]
            try:
                vectors = await loop.run_in_executor(self._thread, self._embed, texts)
            except Exception as exc:  # noqa: BLE001 - the model failed: so does every job in this call
                for job, _, _ in taken:
                    _finish(queue, job, exc)
                continue
            offset = 0
            for job, _, count in taken:
                job.parts.append(vectors[offset : offset + count])
                job.done += count
                offset += count
                if job.left == 0:
                    _finish(queue, job, np.vstack(job.parts) if len(job.parts) > 1 else job.parts[0])

    def _next_queue(self) -> collections.deque[_Job] | None:
        if self._urgent and self._background:
            self._urgent_last = not self._urgent_last
        elif self._urgent or self._background:
            self._urgent_last = bool(self._urgent)
        else:
            return None
        return self._urgent if self._urgent_last else self._background

    def _take(self, queue: collections.deque[_Job]) -> list[tuple[_Job, int, int]]:
        """(job, first text, count) from the head of the queue, `chunk` texts in all at most."""
        taken: list[tuple[_Job, int, int]] = []
        room = self._chunk
        for job in queue:
            if room == 0:
                break
            count = min(job.left, room)
            taken.append((job, job.done, count))
            room -= count
        return taken


def _drop_abandoned(queue: collections.deque[_Job]) -> None:
    """Jobs whose caller stopped waiting (cancelled, or timed out) are not embedded."""
    if any(job.answer.done() for job in queue):
        kept = [job for job in queue if not job.answer.done()]
        queue.clear()
        queue.extend(kept)


def _finish(queue: collections.deque[_Job], job: _Job, outcome: np.ndarray | BaseException) -> None:
    queue.remove(job)
    if job.answer.done():
        return
    if isinstance(outcome, BaseException):
        job.answer.set_exception(outcome)
    else:
        job.answer.set_result(outcome)
