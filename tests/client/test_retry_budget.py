"""The client's retries outlast a restart of the server (about a minute by default, RetryPolicy's
`budget_s`), and what they raise once they give up carries the write's Idempotency-Key, so the
caller sends the write again with it and it takes effect once: on a clock moved by the test, and
against a real gateway killed after a write was applied and before its answer arrived."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from session_engine_client import AsyncClient, Client, ConnectionFailed, RetryPolicy, Unavailable
from session_engine_client import _calls as calls
from session_engine_client import client as client_module

from tests.client.restarts import KilledAfterTheWrite, restarter

pytestmark = pytest.mark.integration
OLD_BUDGET_S = 7.75  # the most the retries waited before this budget: 6 tries, backoff up to 4 s


class MovedClock:
    """time.monotonic and time.sleep for the client's modules: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MovedClock:
    moved = MovedClock()
    monkeypatch.setattr(calls, "time", moved, raising=False)  # a client without the budget has no clock here
    monkeypatch.setattr(client_module, "time", moved)
    return moved


def _message() -> dict[str, Any]:
    return {"seq": 1, "role": "user", "content": "hi", "created_at": 1}


def test_the_default_retries_ride_out_a_server_that_is_gone_for_45_s(clock: MovedClock) -> None:
    back_at = clock.now + 45
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if clock.now < back_at:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(201, json=_message())

    with Client("k", "http://engine", transport=httpx.MockTransport(answer)) as engine:
        assert engine.append_message("sess_x", "user", "hi").seq == 1
    assert len({request.headers["idempotency-key"] for request in sent}) == 1


def test_a_write_with_no_answer_in_the_budget_raises_connection_failed_with_its_key(
    clock: MovedClock,
) -> None:
    sent: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    started = clock.now
    with Client("k", "http://engine", transport=httpx.MockTransport(refuse)) as engine:
        with pytest.raises(ConnectionFailed) as failed:
            engine.append_message("sess_x", "user", "hi")
        gave_up_after = clock.now - started
        assert RetryPolicy().budget_s - 6 <= gave_up_after <= RetryPolicy().budget_s
        assert {request.headers["idempotency-key"] for request in sent} == {failed.value.idempotency_key}
        with pytest.raises(ConnectionFailed) as read:  # a read has no key to give
            engine.get_session("sess_x")
        assert read.value.idempotency_key is None


def test_503s_are_retried_within_the_budget_and_the_last_one_carries_the_key(clock: MovedClock) -> None:
    def loading(request: httpx.Request) -> httpx.Response:
        body = {"error": "not ready yet", "code": "UNAVAILABLE", "details": {}, "hint": "loading"}
        return httpx.Response(503, headers={"Retry-After": "2"}, json=body)

    policy = RetryPolicy(budget_s=20)
    started = clock.now
    engine = Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(loading))
    with engine, pytest.raises(Unavailable) as failed:
        engine.upsert_vectors([{"id": "v", "values": [1.0, 0.0]}])
    assert 16 <= clock.now - started <= 20 and failed.value.idempotency_key


def test_the_async_client_gives_up_after_its_budget_with_the_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def write() -> ConnectionFailed:
        policy = RetryPolicy(budget_s=0.5, backoff_s=0.01)
        engine = AsyncClient("k", "http://engine", retry=policy, transport=httpx.MockTransport(refuse))
        async with engine:
            with pytest.raises(ConnectionFailed) as failed:
                await engine.append_message("sess_x", "user", "hi", idempotency_key="mine")
        return failed.value

    started = time.monotonic()
    assert asyncio.run(write()).idempotency_key == "mine"
    assert time.monotonic() - started < 5


def _frame(event_id: str, kind: str, data: dict[str, Any]) -> bytes:
    body = {"type": kind, "session_id": "sess_1", "at": 1, **data}
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(body)}\n\n".encode()


def _feed(*event_ids: str, drops: bool = False) -> httpx.Response:
    """A session feed's connection: feed.ready, an event for each id, then (`drops`) a reset."""
    frames = [_frame("0.0", "feed.ready", {"position": "0.0", "session": {"status": "active"}})]
    frames += [_frame(i, "context.updated", {"version": 1, "context": {}}) for i in event_ids]

    class Stream(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from frames
            if drops:
                raise httpx.ReadError("connection reset")

    return httpx.Response(200, stream=Stream(), headers={"content-type": "text/event-stream"})


def test_a_refused_feed_waits_what_retry_after_says(clock: MovedClock) -> None:
    """The server refuses a feed past the organization's limit (429 TooManyFeeds, Retry-After: 10)
    and while loading (503): the client waits what Retry-After says (up to max_backoff_s), not
    its own backoff."""
    opened_at: list[float] = []
    refusals = iter(
        [
            httpx.Response(429, headers={"Retry-After": "10"}, json=_error("RATE_LIMITED")),
            httpx.Response(503, headers={"Retry-After": "3"}, json=_error("UNAVAILABLE")),
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        opened_at.append(clock.now)
        return next(refusals, None) or _feed("1.0")

    policy = RetryPolicy(backoff_s=0.01, max_backoff_s=8)
    with Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(answer)) as engine:
        first = next(iter(engine.events("sess_1")))
    waits = [later - earlier for earlier, later in itertools.pairwise(opened_at)]
    assert first.id == "1.0" and len(waits) == 2
    assert 8 <= waits[0] <= 8.1 and 3 <= waits[1] <= 3.1  # 10 s is more than max_backoff_s


def test_a_feed_gives_up_after_the_budget_of_an_outage_and_each_outage_has_its_own(
    clock: MovedClock,
) -> None:
    """Like other calls, a feed that cannot reconnect gives up within the policy's budget_s (not
    after `attempts` tries whatever they take); an event ends an outage, so the next one has the
    whole budget again."""
    policy = RetryPolicy(budget_s=20, attempts=1_000, backoff_s=1, max_backoff_s=4)
    outages = [clock.now, clock.now + 15, clock.now + 30]  # connections that work, between outages
    opened: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if outages and clock.now >= outages[0]:
            outages.pop(0)
            opened.append(clock.now)
            return _feed(f"{len(opened)}.0", drops=True)
        raise httpx.ConnectError("connection refused", request=request)

    started = clock.now
    with Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(answer)) as engine:
        seen: list[str] = []
        with pytest.raises(ConnectionFailed):
            for event in engine.events("sess_1"):
                seen.append(event.id)
    assert seen == ["1.0", "2.0", "3.0"]  # two outages of 15 s each: within a budget of 20 s each
    gave_up_after = clock.now - opened[-1]  # the third outage never ends
    assert policy.budget_s - 4 <= gave_up_after <= policy.budget_s, clock.now - started


def _error(code: str) -> dict[str, Any]:
    return {"error": "try later", "code": code, "details": {}, "hint": "later"}


def test_the_default_retries_outlast_a_gateway_that_is_down_longer_than_they_used_to(
    gateway: dict[str, Any], key: str
) -> None:
    url = gateway["server"].url
    with Client(key, url) as setup:
        session = setup.create_session("outlasted")
    restarted = threading.Event()
    transport = KilledAfterTheWrite(gateway, restarter(gateway, OLD_BUDGET_S + 2, restarted))
    with Client(key, url, transport=transport) as engine:  # the default RetryPolicy
        message = engine.append_message(session.id, "user", "charge the card")
    assert restarted.wait(120) and message.seq == 1
    with Client(key, url) as check:
        assert [m.content for m in check.get_session(session.id).messages] == ["charge the card"]


def test_a_write_that_ran_out_of_retries_is_applied_once_when_sent_again_with_its_key(
    gateway: dict[str, Any], key: str
) -> None:
    url = gateway["server"].url
    with Client(key, url) as setup:
        session = setup.create_session("sent again")
    restarted = threading.Event()
    transport = KilledAfterTheWrite(gateway, restarter(gateway, 0, restarted))
    engine = Client(key, url, retry=RetryPolicy(budget_s=0.5), transport=transport)
    with engine, pytest.raises(ConnectionFailed) as failed:
        engine.append_message(session.id, "user", "charge the card")
    assert failed.value.idempotency_key and restarted.wait(120)
    with Client(key, url) as engine:
        again = engine.append_message(
            session.id, "user", "charge the card", idempotency_key=failed.value.idempotency_key
        )
        stored = engine.get_session(session.id)
    assert again.seq == 1  # the first answer, replayed: the write was applied once, before the kill
    assert [m.content for m in stored.messages] == ["charge the card"]
