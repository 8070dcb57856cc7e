"""The requests both clients send, each with how to read its answer, and the retry rule: written
once, so the sync and async clients cannot drift apart."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from .errors import ConnectionFailed, SessionEngineError, TimedOut, error_from
from .models import (
    DeleteResult,
    Event,
    ImportResult,
    Message,
    NewMessage,
    QueryResult,
    Session,
    SessionPage,
    SessionWithMessages,
    UpsertResult,
)

T = TypeVar("T")
SESSION_MEMORY = "session-memory"
RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    write: bool = False  # gets an Idempotency-Key, the same on every retry

    def with_key(self, key: str | None) -> Call[T]:
        """The call as sent: a write carries `key`, or a new one made here once for all its tries."""
        if not self.write:
            return self
        return Call(
            self.method,
            self.path,
            self.parse,
            self.json,
            self.params,
            {**self.headers, "Idempotency-Key": key or uuid.uuid4().hex},
            self.write,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on 429, 503 and connection failures for up to `budget_s` from the first try, and at
    most `attempts` tries in all. Waits what Retry-After says, else a backoff that doubles from
    `backoff_s` up to `max_backoff_s`, with full jitter. The default budget outlasts a restart of
    the server (docs/operations.md: a restart serves sessions again within seconds)."""

    attempts: int = 60  # enough that the budget, not the count, ends the tries
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    budget_s: float = 60.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after))) + random.uniform(0, 0.1)
            except ValueError:
                pass  # an HTTP date: fall back to the backoff
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class Tries:
    """One call's tries under a RetryPolicy: after each answer or failure, how long to wait before
    the next try, or the exception to raise. Both clients run their loop through it. What it
    raises for a write carries the write's Idempotency-Key (`idempotency_key`): sent again with
    that key, the write takes effect once, whether or not a lost answer had already applied it."""

    def __init__(self, policy: RetryPolicy, call: Call[Any]) -> None:
        self._policy = policy
        self._call = call
        self._clock = time.monotonic
        self._started = self._clock()
        self.attempt = 0

    def __iter__(self) -> Iterator[int]:
        for attempt in range(1, self._policy.attempts + 1):
            self.attempt = attempt
            yield attempt

    @property
    def last(self) -> bool:
        return self.attempt >= self._policy.attempts

    def _over(self, delay: float) -> bool:
        """No try left, or the next would start past the budget."""
        return self.last or self._clock() - self._started + delay > self._policy.budget_s

    def _keyed(self, error: SessionEngineError) -> SessionEngineError:
        error.idempotency_key = self._call.headers.get("Idempotency-Key")
        return error

    def after_failure(self, exc: Exception) -> float:
        """No answer (connection refused, reset, timed out): the wait, or ConnectionFailed."""
        delay = self._policy.delay(self.attempt, None)
        if self._over(delay):
            raise self._keyed(ConnectionFailed(f"{self._call.method} {self._call.path}: {exc}")) from exc
        return delay

    def after_error(self, response: httpx.Response) -> float:
        """An error answer: the wait before a retry (429, 503), or its exception."""
        if response.status_code not in RETRIED_STATUSES:
            raise self._keyed(error_from(response))
        delay = self._policy.delay(self.attempt, response.headers.get("retry-after"))
        if self._over(delay):
            raise self._keyed(error_from(response))
        return delay


FEED_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive every 15 s (events.heartbeat_s)


class FeedCursor:
    """Where a change-feed consumer is, across the connections it takes: what to send to resume,
    which events to hand on, when to reconnect and when to give up. Both clients follow feeds
    through it.

    With a `deadline` (time.monotonic()), following gives up with TimedOut once it passes: each
    connection's reads wait at most what is left, and a connection whose reads could wait well past
    it (keep-alives and events keep it going) is taken again with less. `fresh_when_refused`: a
    position the server refuses (410, 422) is dropped and the feed opened from the present, for a
    consumer whose feed's first event (a session's state) tells it what it missed.

    Reconnecting follows the RetryPolicy as other calls do: it waits what a refusal's Retry-After
    says (429 past the organization's feeds, 503), else the backoff, and gives up once an outage
    (failures with no event between them) would run past `budget_s` from its first failure, or
    after `attempts` tries. An event ends the outage: a feed followed for hours is not out of
    budget when its connection next drops."""

    def __init__(
        self,
        policy: RetryPolicy,
        session_id: str | None,
        position: str | None,
        ready: bool,
        *,
        deadline: float | None = None,
        fresh_when_refused: bool = False,
    ) -> None:
        self._policy = policy
        self.path = feed_path(session_id)
        self._session_feed = session_id is not None
        self.position = position
        self._ready = ready
        self._failures = 0  # tries that failed since the last event
        self._failing_since: float | None = None  # when the first of them failed
        self._retry_after: str | None = None  # what the last refusal's Retry-After said
        self._deadline = deadline
        self._fresh_when_refused = fresh_when_refused
        self._read_s = FEED_READ_TIMEOUT_S
        self.ended = False  # the session was deleted: its feed has nothing more
        self.reconnect = False  # the server dropped this consumer: resume from `position`

    def headers(self) -> dict[str, str]:
        self.reconnect = False
        return {} if self.position is None else {"Last-Event-ID": self.position}

    def read_timeout(self) -> float:
        """How long one read of the next connection may wait for a line."""
        self._read_s = (
            FEED_READ_TIMEOUT_S if self._deadline is None else min(FEED_READ_TIMEOUT_S, self.left())
        )
        return self._read_s

    def _slack(self) -> float:
        """How far past the deadline a read may wait before the connection is taken again with a
        shorter one: a quarter of its read timeout, so it is taken again a few times at most."""
        return max(1.0, self._read_s / 4)

    def left(self) -> float:
        """Seconds until the deadline; TimedOut once it has passed."""
        assert self._deadline is not None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(f"change feed {self.path}: nothing it waited for came in time")
        return left

    def opened(self, response: httpx.Response) -> SessionEngineError | None:
        """An error answer to raise now, or (returned) one to retry after a wait; None: streaming."""
        self._retry_after = None
        if response.status_code < 400:
            return None
        error = error_from(response)
        if self._fresh_when_refused and self.position is not None and response.status_code in (410, 422):
            self.position = None  # from the present: its first event says where things stand
            return error
        if response.status_code not in RETRIED_STATUSES:
            raise error
        self._retry_after = response.headers.get("retry-after")  # failed() waits what it says
        return error

    def handle(self, line: str, parser: SseParser) -> Event | None:
        """The event to hand on, if this line completes one."""
        if line == "" and self._deadline is not None and self._read_s - self.left() > self._slack():
            self.reconnect = True  # the next read could wait well past the deadline: read with less
        event = parser.feed(line)
        if event is None:
            return None
        self._failures = 0
        self._failing_since = None
        self.position = event.id or self.position
        if event.type == "feed.dropped":
            self.reconnect = True  # fell behind: resume from its position
            return None
        if event.type == "session.deleted" and self._session_feed:
            self.ended = True
        return event if event.type != "feed.ready" or self._ready else None

    def failed(self, error: BaseException) -> float:
        """The wait before reconnecting (Retry-After if the refusal had one), or the error once the
        tries or the policy's budget are used up (or TimedOut, past the deadline)."""
        left = None if self._deadline is None else self.left()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        delay = self._policy.delay(self._failures, self._retry_after)
        self._retry_after = None
        over_budget = now - self._failing_since + delay > self._policy.budget_s
        if self._failures >= self._policy.attempts or over_budget:
            if isinstance(error, SessionEngineError):
                raise error
            raise ConnectionFailed(f"change feed: {error}") from error
        return delay if left is None else min(delay, left)


SUMMARY_DONE = ("ready", "failed")
# Ended without a summary: only closing a session makes one (summary_status "pending"); a completed
# or expired session's summary_status is null, and stays so unless one is asked for (summarize).
ENDED_WITHOUT_SUMMARY = ("completed", "expired")


def summary_cursor(retry: RetryPolicy, session_id: str, timeout: float) -> FeedCursor:
    """The feed a wait for a session's summary follows: from its first event (the session's state),
    until `timeout` seconds from now, opened afresh when the server refuses its position."""
    return FeedCursor(
        retry, session_id, None, True, deadline=time.monotonic() + timeout, fresh_when_refused=True
    )


# A wait with `searchable` reads the session again while its index is pending, pausing this long
# at first, doubling up to the longest. (Servers that send `session.indexed` on the feed would let
# it wait on the feed instead; older ones send none, and reading works with both.)
INDEX_PAUSE_S = 0.1
INDEX_PAUSE_MAX_S = 1.0


def index_left(session_id: str, deadline: float) -> float:
    """Seconds left to wait for a session's index; TimedOut once the deadline has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimedOut(f"session {session_id}: its summary is made, its index still pending")
    return left


def summary_done(event: Event) -> bool:
    """Whether a session feed's event ends a wait for its summary. The feed's first event (the
    session's state when the feed starts) says the summary is made or has failed for good, or that
    the session ended without one pending (completed or expired, summary_status null); later,
    summary.ready, summary.failed, or a status.changed to completed or expired (an active session
    that ends so has no summary coming)."""
    if event.type == "feed.ready":
        state = event.data.get("session") or {}
        summary = state.get("summary_status")
        return summary in SUMMARY_DONE or (summary is None and state.get("status") in ENDED_WITHOUT_SUMMARY)
    if event.type == "status.changed":
        return event.data.get("status") in ENDED_WITHOUT_SUMMARY
    return event.type in ("summary.ready", "summary.failed")


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: cls.model_validate(response.json())  # type: ignore[attr-defined]


def _none(response: httpx.Response) -> None:
    return None


def _messages(response: httpx.Response) -> list[Message]:
    return [Message.model_validate(m) for m in response.json()["messages"]]


def _matches(response: httpx.Response) -> QueryResult:
    return QueryResult.model_validate(response.json())


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _message(message: NewMessage | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, NewMessage):
        return message.model_dump(exclude_none=True)
    return _drop_none(message)


def create_session(name: str, ttl_seconds: int | None, context: Mapping[str, Any] | None) -> Call[Session]:
    body = _drop_none({"name": name, "ttl_seconds": ttl_seconds, "context": context})
    return Call("POST", "/sessions", _model(Session), body, write=True)


def fork_session(
    session_id: str,
    at_seq: int,
    name: str | None,
    context: Mapping[str, Any] | None,
    ttl_seconds: int | None,
) -> Call[Session]:
    body = _drop_none({"at_seq": at_seq, "name": name, "context": context, "ttl_seconds": ttl_seconds})
    return Call("POST", f"/sessions/{session_id}/fork", _model(Session), body, write=True)


NDJSON = "application/x-ndjson"
TRANSFER_CHUNK_BYTES = 1 << 20  # an export is written, an import sent, this much at a time


def export_organization() -> Call[None]:
    """GET /export: the organization as NDJSON, streamed into a file by the client, never held."""
    return Call("GET", "/export", _none)


def import_sessions() -> Call[ImportResult]:
    """POST /import of an export's lines, streamed from a file. Not retried: a stream cannot be
    sent again, and an import sent again skips what the first one stored, so call it again."""
    return Call("POST", "/import", _model(ImportResult), headers={"Content-Type": NDJSON})


def get_session(session_id: str, after_seq: int, limit: int | None) -> Call[SessionWithMessages]:
    params = _drop_none({"after_seq": after_seq or None, "limit": limit})
    return Call("GET", f"/sessions/{session_id}", _model(SessionWithMessages), params=params)


def session_state(session_id: str) -> Call[Session]:
    """A session without its messages (the route gives at least one: it is left out)."""
    return Call("GET", f"/sessions/{session_id}", _without_messages, params={"limit": 1})


def _without_messages(response: httpx.Response) -> Session:
    return Session.model_validate({k: v for k, v in response.json().items() if k != "messages"})


def append_message(
    session_id: str, role: str, content: str, tool_call_id: str | None, tool_name: str | None
) -> Call[Message]:
    body = _drop_none(
        {"role": role, "content": content, "tool_call_id": tool_call_id, "tool_name": tool_name}
    )
    return Call("POST", f"/sessions/{session_id}/messages", _model(Message), body, write=True)


def append_messages(
    session_id: str, messages: Iterable[NewMessage | Mapping[str, Any]]
) -> Call[list[Message]]:
    body = {"messages": [_message(m) for m in messages]}
    return Call("POST", f"/sessions/{session_id}/messages", _messages, body, write=True)


def update_context(session_id: str, context: Mapping[str, Any], if_match: int | None) -> Call[Session]:
    headers = {} if if_match is None else {"If-Match": str(if_match)}
    return Call(
        "PUT", f"/sessions/{session_id}/context", _model(Session), dict(context), headers=headers, write=True
    )


def update_session(session_id: str, name: str | None, ttl_seconds: int | None) -> Call[Session]:
    body = _drop_none({"name": name, "ttl_seconds": ttl_seconds})
    return Call("PATCH", f"/sessions/{session_id}", _model(Session), body, write=True)


def end_session(session_id: str, how: str) -> Call[Session]:
    """how: close (a summary follows), complete (none), summarize (make the summary again)."""
    return Call("POST", f"/sessions/{session_id}/{how}", _model(Session), write=True)


def delete_session(session_id: str) -> Call[None]:
    return Call("DELETE", f"/sessions/{session_id}", _none, write=True)


def list_sessions(status: str | None, limit: int | None, cursor: str | None) -> Call[SessionPage]:
    params = _drop_none({"status": status, "limit": limit, "cursor": cursor})
    return Call("GET", "/sessions", _model(SessionPage), params=params)


def upsert_vectors(vectors: Iterable[Mapping[str, Any]], namespace: str | None) -> Call[UpsertResult]:
    body = _drop_none({"namespace": namespace, "vectors": [_drop_none(v) for v in vectors]})
    return Call("POST", "/vectors/upsert", _model(UpsertResult), body, write=True)


def query_vectors(
    namespace: str | None,
    query_text: str | None,
    vector: list[float] | None,
    top_k: int | None,
    mode: str | None,
    filter: Mapping[str, Any] | None,
    min_relevance: float | None = None,
    as_of: int | None = None,
) -> Call[QueryResult]:
    body = _drop_none(
        {
            "namespace": namespace,
            "query_text": query_text,
            "vector": vector,
            "top_k": top_k,
            "mode": mode,
            "filter": filter,
            "min_relevance": min_relevance,
            "as_of": as_of,
        }
    )
    return Call("POST", "/vectors/query", _matches, body)


def delete_vectors(ids: Iterable[str], namespace: str | None) -> Call[DeleteResult]:
    body = _drop_none({"namespace": namespace, "ids": list(ids)})
    return Call("POST", "/vectors/delete", _model(DeleteResult), body, write=True)


def feed_path(session_id: str | None) -> str:
    return "/events" if session_id is None else f"/sessions/{session_id}/events"


class SseParser:
    """Server-Sent Events, line by line: `feed(line)` returns an Event when one is complete."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def feed(self, line: str) -> Event | None:
        if line == "":
            fields, self._fields = self._fields, {}
            if "event" not in fields:
                return None
            data = json.loads(fields.get("data") or "{}")
            return Event(
                id=fields.get("id", ""),
                type=fields["event"],
                session_id=data.pop("session_id", None),
                at=data.pop("at", None),
                data={k: v for k, v in data.items() if k != "type"},
            )
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            self._fields[name] = value.removeprefix(" ")
        return None
