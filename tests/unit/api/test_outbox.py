from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from api.outbox import Outbox, ShardRouter
from engine.config import OutboxConfig
from engine.errors import SessionNotFound, Unavailable
from engine.sessions.ops import Ping, SessionOp


class GatedTransport:
    """Holds each call until released, recording the batches it was sent."""

    shards = 1

    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.fail = fail

    async def call(self, shard: int, ops: Sequence[SessionOp]) -> list[Any]:
        self.batches.append(list(ops))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [("done", op) for op in ops]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_ops_arriving_during_a_call_travel_together_in_the_next_one() -> None:
    transport = GatedTransport()
    outbox = Outbox(0, transport, OutboxConfig())
    first = asyncio.create_task(outbox.submit("a"))  # type: ignore[arg-type]
    await _settle()
    rest = [asyncio.create_task(outbox.submit(x)) for x in "bcd"]  # type: ignore[arg-type]
    await _settle()
    assert transport.batches == [["a"]], "the first op is sent at once, the rest wait"
    transport.gate.set()
    results = await asyncio.gather(first, *rest)
    assert transport.batches == [["a"], ["b", "c", "d"]]
    assert results == [("done", x) for x in "abcd"]


async def test_batches_are_capped_at_max_batch_ops() -> None:
    transport = GatedTransport()
    transport.gate.set()
    outbox = Outbox(0, transport, OutboxConfig(max_batch_ops=2))
    await asyncio.gather(*(outbox.submit(i) for i in range(5)))  # type: ignore[arg-type]
    assert [len(b) for b in transport.batches] == [2, 2, 1]
    assert [op for b in transport.batches for op in b] == list(range(5))


async def test_without_coalescing_every_op_is_its_own_call() -> None:
    transport = GatedTransport()
    transport.gate.set()
    outbox = Outbox(0, transport, OutboxConfig(coalesce=False))
    await asyncio.gather(*(outbox.submit(i) for i in range(4)))  # type: ignore[arg-type]
    assert sorted(len(b) for b in transport.batches) == [1, 1, 1, 1]


async def test_an_error_result_is_raised_to_its_own_caller_only() -> None:
    class Mixed:
        shards = 1

        async def call(self, shard: int, ops: Sequence[SessionOp]) -> list[Any]:
            return [SessionNotFound("sess_x") if op == "bad" else op for op in ops]

    outbox = Outbox(0, Mixed(), OutboxConfig())
    good, bad = await asyncio.gather(outbox.submit("good"), outbox.submit("bad"), return_exceptions=True)  # type: ignore[arg-type]
    assert good == "good"
    assert isinstance(bad, SessionNotFound)


async def test_a_failed_call_answers_every_waiter() -> None:
    transport = GatedTransport(fail=Unavailable("shard 0 is unavailable"))
    transport.gate.set()
    outbox = Outbox(0, transport, OutboxConfig())
    results = await asyncio.gather(*(outbox.submit(i) for i in range(3)), return_exceptions=True)  # type: ignore[arg-type]
    assert all(isinstance(r, Unavailable) for r in results)
    transport.fail = None
    assert await outbox.submit("after") == ("done", "after"), "the outbox recovers"


async def test_a_shard_that_never_answers_times_out_as_unavailable() -> None:
    outbox = Outbox(0, GatedTransport(), OutboxConfig(call_timeout_s=0.05))
    with pytest.raises(Unavailable, match="did not answer"):
        await outbox.submit(Ping())


async def test_broadcast_reaches_every_shard() -> None:
    class Echo:
        shards = 3

        async def call(self, shard: int, ops: Sequence[SessionOp]) -> list[Any]:
            return [shard for _ in ops]

    assert await ShardRouter(Echo(), OutboxConfig()).broadcast(Ping()) == [0, 1, 2]
