"""The embedder's queue: a query's texts go before indexing, long jobs are split and short ones
packed, and every caller gets its own rows back in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.models.embed_queue import EmbedQueue


class Model:
    """Each text "n" embeds to the row [n, 1]; every call's texts are kept. Until `release` is
    set, a call holds the model, as a slow one would."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self._fail_on = fail_on

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.started.set()
        assert self.release.wait(10)
        if self._fail_on in texts:
            raise RuntimeError("the model failed")
        return rows(texts)


def rows(texts: Sequence[str]) -> np.ndarray:
    return np.array([[float(t), 1.0] for t in texts], dtype=np.float32)


def texts(start: int, count: int) -> list[str]:
    return [str(i) for i in range(start, start + count)]


async def holding_the_model(
    queue: EmbedQueue, model: Model, first: Sequence[str], *, urgent: bool
) -> asyncio.Future[np.ndarray]:
    """`first` sent, and its call begun and held until `model.release` is set."""
    model.release.clear()
    model.started.clear()
    sent = asyncio.ensure_future(queue.embed(first, urgent=urgent))
    assert await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 10)
    return sent


async def test_long_jobs_are_split_and_short_ones_packed_and_each_gets_its_own_rows() -> None:
    model = Model()
    queue = EmbedQueue(model, 2, chunk=4)
    jobs = [texts(0, 7), texts(100, 1), texts(200, 2)]
    results = await asyncio.gather(*(queue.embed(job, urgent=False) for job in jobs))
    for job, got in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(got, rows(job))
    assert [len(call) for call in model.calls] == [4, 4, 2]  # 4 of the first; 3 + 1; 2
    queue.close()


async def test_a_query_waits_for_the_call_in_progress_only_not_for_the_indexing_backlog() -> None:
    model = Model()
    queue = EmbedQueue(model, 2, chunk=4)
    backlog = await holding_the_model(queue, model, texts(0, 40), urgent=False)
    queries = [asyncio.ensure_future(queue.embed([str(1000 + i)], urgent=True)) for i in range(3)]
    await asyncio.sleep(0)
    assert queue.waiting() == {"urgent": 3, "background": 40}  # the call in progress counts
    model.release.set()
    answers = await asyncio.gather(*queries)
    assert [a.tolist() for a in answers] == [[[1000.0 + i, 1.0]] for i in range(3)]
    # The call in progress, then the three queries together in one call.
    assert model.calls[:2] == [texts(0, 4), ["1000", "1001", "1002"]]
    np.testing.assert_array_equal(await backlog, rows(texts(0, 40)))
    queue.close()


async def test_under_a_stream_of_queries_indexing_still_gets_every_other_call() -> None:
    model = Model()
    queue = EmbedQueue(model, 2, chunk=2)
    backlog = await holding_the_model(queue, model, texts(0, 6), urgent=False)
    queries = [asyncio.ensure_future(queue.embed([str(1000 + i)], urgent=True)) for i in range(6)]
    await asyncio.sleep(0)
    model.release.set()
    await asyncio.gather(backlog, *queries)
    kinds = ["query" if int(call[0]) >= 1000 else "index" for call in model.calls]
    assert kinds == ["index", "query", "index", "query", "index", "query"]
    assert model.calls[1] == ["1000", "1001"]  # queries share a call, `chunk` texts at most
    queue.close()


async def test_a_failed_call_fails_the_jobs_in_it_and_no_other() -> None:
    model = Model(fail_on="5")
    queue = EmbedQueue(model, 2, chunk=2)
    first = await holding_the_model(queue, model, texts(0, 2), urgent=False)
    failing = asyncio.ensure_future(queue.embed(texts(4, 3), urgent=False))  # "5" in its first call
    after = asyncio.ensure_future(queue.embed(texts(8, 1), urgent=False))
    await asyncio.sleep(0)
    model.release.set()
    np.testing.assert_array_equal(await first, rows(texts(0, 2)))
    with pytest.raises(RuntimeError, match="the model failed"):
        await failing
    np.testing.assert_array_equal(await after, rows(texts(8, 1)))
    assert model.calls == [["0", "1"], ["4", "5"], ["8"]]  # the failed job's rest is not embedded
    queue.close()


async def test_texts_of_a_caller_that_stopped_waiting_are_not_embedded() -> None:
    model = Model()
    queue = EmbedQueue(model, 2, chunk=2)
    first = await holding_the_model(queue, model, ["1"], urgent=True)
    gone = asyncio.ensure_future(queue.embed(["2"], urgent=True))
    kept = asyncio.ensure_future(queue.embed(["3"], urgent=False))
    await asyncio.sleep(0)
    gone.cancel()
    model.release.set()
    await asyncio.gather(first, kept)
    assert model.calls == [["1"], ["3"]]
    assert queue.waiting() == {"urgent": 0, "background": 0}
    queue.close()


async def test_no_texts_is_no_call() -> None:
    model = Model()
    queue = EmbedQueue(model, 2, chunk=2)
    got = await queue.embed([], urgent=True)
    assert got.shape == (0, 2) and got.dtype == np.float32 and model.calls == []
    queue.close()


@settings(max_examples=60, deadline=None)
@given(
    chunk=st.integers(1, 6),
    jobs=st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=8),
)
def test_whatever_the_mix_every_caller_gets_exactly_its_rows(
    chunk: int, jobs: list[tuple[int, bool]]
) -> None:
    async def scenario() -> None:
        model = Model()
        queue = EmbedQueue(model, 2, chunk=chunk)
        wanted = [(texts(100 * i, count), urgent) for i, (count, urgent) in enumerate(jobs)]
        results = await asyncio.gather(*(queue.embed(t, urgent=u) for t, u in wanted))
        for (job, _), got in zip(wanted, results, strict=True):
            assert got.shape == (len(job), 2)
            np.testing.assert_array_equal(got, rows(job) if job else got)
        assert all(1 <= len(call) <= chunk for call in model.calls)
        assert sorted(t for call in model.calls for t in call) == sorted(t for job, _ in wanted for t in job)
        queue.close()

    asyncio.run(scenario())
