"""session_engine_client against a real gateway on a real local Ray: the typed surface, errors,
paging, feeds, retries, and exactly-once writes across a gateway killed between a write and its
retry."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from session_engine_client import (
    AsyncClient,
    AuthInvalid,
    Client,
    Conflict,
    NewMessage,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    Session,
    TimedOut,
    ValidationError,
)
from session_engine_client._calls import SseParser

from tests.client.restarts import KilledAfterTheWrite, restarter

pytestmark = pytest.mark.integration


def public(cls: type) -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(member).parameters)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
    }


def test_the_sync_and_async_clients_have_the_same_surface() -> None:
    assert public(Client) == public(AsyncClient)


def test_the_clients_models_have_the_fields_of_the_engines_views() -> None:
    # The client installs on its own, so it cannot import the engine's views: this keeps the two
    # copies of the shape in step.
    from session_engine_client import models

    from engine.sessions import views

    pairs = [
        (models.Session, views.SessionView),
        (models.SessionWithMessages, views.SessionWithMessages),
        (models.Message, views.MessageView),
        (models.SummaryProvenance, views.SummaryProvenance),
        (models.ForkedFrom, views.ForkedFrom),
    ]
    for model, view in pairs:
        assert set(model.model_fields) == view.__required_keys__ | view.__optional_keys__, model.__name__


def test_the_clients_query_models_have_the_fields_of_the_gateways() -> None:
    from session_engine_client import models

    from api import schemas

    for model, wire in ((models.Match, schemas.MatchOut), (models.QueryResult, schemas.QueryOut)):
        assert set(model.model_fields) == set(wire.model_fields), model.__name__


def test_a_session_through_the_client(gateway: dict[str, Any], key: str) -> None:
    with Client(key, gateway["server"].url) as engine:
        session = engine.create_session("support", context={"ticket": 1})
        assert isinstance(session, Session) and session.status == "active" and session.version == 1
        first = engine.append_message(session.id, "user", "my order never came")
        batch = engine.append_messages(
            session.id, [NewMessage(role="assistant", content="sorry"), {"role": "user", "content": "#1234"}]
        )
        assert [first.seq, *(m.seq for m in batch)] == [1, 2, 3]
        assert [m.content for m in engine.iter_messages(session.id, page_size=2)] == [
            "my order never came",
            "sorry",
            "#1234",
        ]
        updated = engine.update_context(session.id, {"ticket": 2}, if_match=1)
        assert updated.version == 2
        with pytest.raises(PreconditionFailed) as stale:
            engine.update_context(session.id, {"ticket": 3}, if_match=1)
        assert stale.value.details["current_version"] == 2 and stale.value.status == 412
        others = [engine.create_session(f"s{i}").id for i in range(3)]
        assert [s.id for s in engine.iter_sessions(page_size=2)] == [*reversed(others), session.id]
        closed = engine.close_session(session.id)
        assert closed.status == "closed" and closed.summary_status == "pending"
        with pytest.raises(Conflict) as refused:
            engine.append_message(session.id, "user", "late")
        assert refused.value.details["status"] == "closed" and refused.value.hint
        engine.delete_session(others[0])
        with pytest.raises(NotFound):
            engine.get_session(others[0])
        with pytest.raises(ValidationError) as invalid:
            engine.append_message(others[1], "robot", "no such role")
        assert invalid.value.field == "role" and invalid.value.problems[0]["field"] == "role"


def test_a_bad_key_is_a_typed_error(gateway: dict[str, Any]) -> None:
    with Client("not-a-key", gateway["server"].url) as engine, pytest.raises(AuthInvalid) as info:
        engine.list_sessions()
    assert info.value.code == "AUTH_INVALID" and info.value.request_id


def test_the_async_client_and_a_feed_that_resumes(gateway: dict[str, Any], key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(key, gateway["server"].url) as engine:
            session = await engine.create_session("async")
            seen: list[Any] = []

            async def follow() -> None:
                async for event in engine.events(session.id):
                    if event.type == "message.appended":
                        seen.append(event)
                    if len(seen) == 2:
                        return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.5)  # the feed is open (it starts at about the present)
            await engine.append_message(session.id, "user", "one")
            await engine.append_message(session.id, "user", "two")
            await asyncio.wait_for(follower, 30)
            assert [e.message.content for e in seen if e.message] == ["one", "two"]
            await engine.append_message(session.id, "user", "three")
            # Resumed from the second event's id: exactly what came after it.
            async for event in engine.events(session.id, last_event_id=seen[1].id):
                assert event.type == "message.appended" and event.message and event.message.content == "three"
                break
            found = [m async for m in engine.iter_messages(session.id, page_size=1)]
            assert [m.seq for m in found] == [1, 2, 3]

    asyncio.run(scenario())


def test_wait_for_summary_returns_the_session_whether_its_summary_came_before_or_after(
    gateway: dict[str, Any], key: str
) -> None:
    with Client(key, gateway["server"].url) as engine:
        session = engine.create_session("to summarize")
        engine.append_message(session.id, "user", "my order #1234 never arrived")
        engine.close_session(session.id)
        done = engine.wait_for_summary(session.id, timeout=120)  # made while it waits (tiny model)
        assert done.id == session.id and done.summary_status in ("ready", "failed")
        assert (done.summary is not None) == (done.summary_status == "ready")
        assert (done.summary_error is not None) == (done.summary_status == "failed")
        started = time.monotonic()
        again = engine.wait_for_summary(session.id, timeout=30)  # made before the feed opened
        assert again.summary_status == done.summary_status and time.monotonic() - started < 10
        waiting = engine.create_session("never closed")
        started = time.monotonic()
        with pytest.raises(TimedOut) as late:
            engine.wait_for_summary(waiting.id, timeout=1.5)
        assert isinstance(late.value, TimeoutError) and 1.5 <= time.monotonic() - started < 10
        with pytest.raises(NotFound):
            engine.wait_for_summary("sess_" + "0" * 32, timeout=10)

    async def the_async_client() -> None:
        async with AsyncClient(key, gateway["server"].url) as engine:
            session = await engine.create_session("async summary")
            await engine.append_message(session.id, "user", "the parcel came damaged")
            await engine.close_session(session.id)
            done = await engine.wait_for_summary(session.id, timeout=120)
            assert done.summary_status in ("ready", "failed")
            again = await engine.wait_for_summary(session.id, timeout=30)
            assert again.summary_status == done.summary_status
            with pytest.raises(TimedOut):
                await engine.wait_for_summary((await engine.create_session("open")).id, timeout=1.5)

    asyncio.run(the_async_client())


def test_wait_for_summary_resumes_a_dropped_feed_and_starts_afresh_when_refused() -> None:
    """A feed that drops is resumed from its last id; a resume the server refuses (410) opens the
    feed afresh, whose first event says where the summary stands."""
    sent: list[str | None] = []
    feeds = iter(
        [
            (200, [_ready("5.0", "pending")], True),  # then the connection drops
            (410, [], False),  # the server no longer keeps what followed 5.0
            (200, [_ready("9.0", "running"), _sse("9.1", "summary.ready", {"summary": "s"})], False),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            sent.append(request.headers.get("last-event-id"))
            status, frames, drops = next(feeds)
            if status != 200:
                return httpx.Response(status, json=_error("GONE"))
            return httpx.Response(200, stream=_Stream(frames, drops), headers=EVENT_STREAM)
        assert request.url.params["limit"] == "1"
        return httpx.Response(200, json={**_session("ready"), "messages": [_message()]})

    policy = RetryPolicy(backoff_s=0.01, max_backoff_s=0.05)
    with Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(handler)) as engine:
        done = engine.wait_for_summary("sess_1", timeout=30)
    assert sent == [None, "5.0", None]
    assert done.summary_status == "ready" and done.summary == "s" and "messages" not in done.model_dump()


EVENT_STREAM = {"content-type": "text/event-stream"}


class _Stream(httpx.SyncByteStream):
    def __init__(self, frames: list[bytes], drops: bool) -> None:
        self._frames = frames
        self._drops = drops

    def __iter__(self) -> Iterator[bytes]:
        yield from self._frames
        if self._drops:
            raise httpx.ReadError("connection reset")


def _sse(event_id: str, kind: str, data: dict[str, Any]) -> bytes:
    body = {"type": kind, "session_id": "sess_1", "at": 1, **data}
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(body)}\n\n".encode()


def _ready(event_id: str, summary_status: str | None, status: str = "closed") -> bytes:
    state = {"status": status, "summary_status": summary_status, "index_status": "ready"}
    return _sse(event_id, "feed.ready", {"position": event_id, "session": state})


def _session(summary_status: str | None, status: str = "closed") -> dict[str, Any]:
    return {
        "id": "sess_1",
        "name": "s",
        "status": status,
        "ttl_seconds": 60,
        "created_at": 1,
        "updated_at": 1,
        "expires_at": 1,
        "message_count": 1,
        "context": {},
        "version": 1,
        "summary_status": summary_status,
        "summary": "s",
    }


def _ended(status: str) -> bytes:
    return _sse("4.0", "status.changed", {"status": status})


@pytest.mark.parametrize(
    ("frames", "ended"),
    [
        ([_ready("3.0", None, "completed")], "completed"),
        ([_ready("3.0", None, "expired")], "expired"),
        ([_ready("3.0", None, "active"), _ended("expired")], "expired"),
        ([_ready("3.0", None, "active"), _ended("completed")], "completed"),
    ],
    ids=["completed-before", "expired-before", "expires-meanwhile", "completed-meanwhile"],
)
def test_wait_for_summary_returns_at_once_when_the_session_ended_without_a_summary(
    frames: list[bytes], ended: str
) -> None:
    """Only a closed session gets a summary: a completed or expired one (summary_status null),
    whether so when the feed opens or ending while it is followed, is returned as soon as the feed
    says so, not after the whole timeout."""
    opened: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            # The mock's feed ends after its events; a client still waiting opens it again.
            assert not opened, "the feed was opened again: the wait did not stop at its events"
            opened.append(request.url.path)
            return httpx.Response(200, content=b"".join(frames), headers=EVENT_STREAM)
        return httpx.Response(200, json={**_session(None, ended), "messages": [_message()]})

    with Client("k", "http://engine", transport=httpx.MockTransport(handler)) as engine:
        done = engine.wait_for_summary("sess_1", timeout=30)
    assert done.status == ended and done.summary_status is None and opened == ["/sessions/sess_1/events"]

    async def the_async_client() -> None:
        opened.clear()
        async with AsyncClient("k", "http://engine", transport=httpx.MockTransport(handler)) as engine:
            done = await engine.wait_for_summary("sess_1", timeout=30)
        assert done.status == ended and done.summary_status is None and len(opened) == 1

    asyncio.run(the_async_client())


def test_wait_for_summary_keeps_waiting_for_a_summary_asked_of_a_completed_session() -> None:
    frames = [_ready("3.0", "pending", "completed"), _sse("3.1", "summary.ready", {"summary": "s"})]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=b"".join(frames), headers=EVENT_STREAM)
        return httpx.Response(200, json={**_session("ready", "completed"), "messages": [_message()]})

    with Client("k", "http://engine", transport=httpx.MockTransport(handler)) as engine:
        assert engine.wait_for_summary("sess_1", timeout=30).summary_status == "ready"


def test_wait_for_summary_searchable_waits_for_the_index_too() -> None:
    """A summary is ready before the session is in session memory: `searchable` reads the session
    again until its index_status is no longer pending, and gives up with TimedOut at the timeout."""
    frames = [_ready("3.0", "ready")]
    reads: list[str] = []
    index = iter(["pending", "pending", "ready"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=b"".join(frames), headers=EVENT_STREAM)
        reads.append(next(index, "pending"))
        body = {**_session("ready"), "index_status": reads[-1], "messages": [_message()]}
        return httpx.Response(200, json=body)

    with Client("k", "http://engine", transport=httpx.MockTransport(handler)) as engine:
        assert engine.wait_for_summary("sess_1", timeout=30).index_status == "pending"
        reads.clear()
        done = engine.wait_for_summary("sess_1", timeout=30, searchable=True)
        assert (done.summary_status, done.index_status, len(reads)) == ("ready", "ready", 2)
        with pytest.raises(TimedOut):
            engine.wait_for_summary("sess_1", timeout=0.3, searchable=True)

    async def the_async_client() -> None:
        nonlocal index
        index = iter(["pending", "ready"])
        async with AsyncClient("k", "http://engine", transport=httpx.MockTransport(handler)) as engine:
            done = await engine.wait_for_summary("sess_1", timeout=30, searchable=True)
        assert done.index_status == "ready"

    asyncio.run(the_async_client())


def test_retries_reuse_the_idempotency_key_and_honour_retry_after() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json=_error("RATE_LIMITED"))
        if len(seen) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"}, json=_error("UNAVAILABLE"))
        if len(seen) == 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json=_message())

    policy = RetryPolicy(attempts=4, backoff_s=0.01)
    with Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(answer)) as engine:
        assert engine.append_message("sess_x", "user", "hi").seq == 1
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 4 and len(keys) == 1
    # A read carries no key, and a 4xx other than 429 is answered at once, not retried.
    reads: list[httpx.Request] = []

    def not_found(request: httpx.Request) -> httpx.Response:
        reads.append(request)
        return httpx.Response(404, json=_error("NOT_FOUND"))

    engine = Client("k", "http://engine", retry=policy, transport=httpx.MockTransport(not_found))
    with engine, pytest.raises(NotFound):
        engine.get_session("sess_x")
    assert len(reads) == 1 and "idempotency-key" not in reads[0].headers
    assert RetryPolicy().delay(1, "2") >= 2.0 and RetryPolicy(max_backoff_s=1).delay(1, "30") <= 1.1
    assert 0 <= RetryPolicy(backoff_s=1, max_backoff_s=4).delay(5, None) <= 4


def test_the_feed_parser_reads_server_sent_events() -> None:
    parser = SseParser()
    lines = [
        "id: 7.1",
        "event: message.appended",
        'data: {"type":"message.appended","session_id":"s","at":5,'
        '"message":{"seq":1,"role":"user","content":"x","created_at":5}}',
        "",
        ": keep-alive",
        "",
    ]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.id, e.type, e.session_id, e.at) for e in events] == [("7.1", "message.appended", "s", 5)]
    assert events[0].message is not None and events[0].message.content == "x"


def test_a_write_takes_effect_once_when_the_server_dies_before_its_answer(
    gateway: dict[str, Any], key: str
) -> None:
    """The gateway applies the append, then is killed (SIGKILL) before the client reads the answer;
    it is started again while the client retries. The retry carries the same Idempotency-Key, so
    the session holds the message once."""
    server = gateway["server"]
    restarted = threading.Event()

    with Client(key, server.url) as setup:
        session = setup.create_session("exactly once")
    policy = RetryPolicy(attempts=120, backoff_s=0.25, max_backoff_s=1.0)  # rides out the restart
    with Client(
        key,
        server.url,
        retry=policy,
        transport=KilledAfterTheWrite(gateway, restarter(gateway, 0, restarted)),
    ) as engine:
        message = engine.append_message(session.id, "user", "charge the card")
    # The retry that succeeded was answered by the restarted server; the thread that started it
    # may still be polling its /readyz when that answer arrives.
    assert restarted.wait(60)
    assert message.seq == 1
    with Client(key, server.url) as check:
        stored = check.get_session(session.id)
    assert stored.message_count == 1 and [m.content for m in stored.messages] == ["charge the card"]


def _error(code: str) -> dict[str, Any]:
    return {"error": "try later", "code": code, "details": {}, "hint": "later"}


def _message() -> dict[str, Any]:
    return {"seq": 1, "role": "user", "content": "hi", "created_at": 1}
