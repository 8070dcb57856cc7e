"""`Client` and `AsyncClient`: the same methods, blocking or awaitable.

Every write is sent with an `Idempotency-Key` (yours, or one made for the call) and every retry of
it reuses the key, so a write whose answer was lost (a dropped connection, a gateway restart) takes
effect exactly once. 429, 503 and connection failures are retried (RetryPolicy), waiting what
`Retry-After` says. Error answers raise the exception of their code (session_engine_client.errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar

import httpx

from . import _calls as calls
from ._calls import (
    SESSION_MEMORY,
    Call,
    FeedCursor,
    RetryPolicy,
    SseParser,
    Tries,
    summary_cursor,
    summary_done,
)
from .errors import error_from
from .models import (
    DeleteResult,
    Event,
    ImportResult,
    Match,
    Message,
    NewMessage,
    QueryResult,
    Session,
    SessionPage,
    SessionWithMessages,
    UpsertResult,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"
# What a retry may follow: no answer at all, or an answer that was cut off.
TRANSPORT_ERRORS = (httpx.TransportError,)
SUMMARY_TIMEOUT_S = 300.0  # wait_for_summary's default: a summary takes seconds to minutes


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


class Client:
    """A blocking client. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: Call[T], idempotency_key: str | None = None) -> T:
        call = call.with_key(idempotency_key)
        tries = Tries(self.retry, call)
        for _ in tries:
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, params=call.params, headers=call.headers
                )
            except TRANSPORT_ERRORS as exc:
                time.sleep(tries.after_failure(exc))
                continue
            if response.status_code < 400:
                return call.parse(response)
            time.sleep(tries.after_error(response))
        raise AssertionError("unreachable: the last try returns or raises")

    # -- export and import --------------------------------------------------------------------------

    def export(self, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Write the organization's export (NDJSON, docs/export.schema.json) to `dest`, a path or a
        binary file, as it arrives; returns the bytes written. Not retried: call again to start over."""
        call = calls.export_organization()
        with self._http.stream(call.method, call.path, headers=call.headers) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from(response)
            with _opened(dest, "wb") as out:
                return sum(out.write(chunk) for chunk in response.iter_bytes(calls.TRANSFER_CHUNK_BYTES))

    def import_sessions(self, source: str | os.PathLike[str] | BinaryIO) -> ImportResult:
        """Send an export (a path or a binary file) to POST /import, a chunk at a time. Not retried
        (see _calls.import_sessions): an import called again skips what the first one stored."""
        call = calls.import_sessions()
        with _opened(source, "rb") as data:
            response = self._http.request(call.method, call.path, content=_chunks(data), headers=call.headers)
        if response.status_code >= 400:
            raise error_from(response)
        return call.parse(response)

    # -- sessions -----------------------------------------------------------------------------------

    def create_session(
        self,
        name: str,
        *,
        ttl_seconds: int | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return self._do(calls.create_session(name, ttl_seconds, context), idempotency_key)

    def fork_session(
        self,
        session_id: str,
        at_seq: int,
        *,
        name: str | None = None,
        context: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """A new active session with this one's messages 1..at_seq (0: none); name, context and
        TTL are this one's unless given."""
        return self._do(calls.fork_session(session_id, at_seq, name, context, ttl_seconds), idempotency_key)

    def get_session(
        self, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> SessionWithMessages:
        return self._do(calls.get_session(session_id, after_seq, limit))

    def append_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        return self._do(
            calls.append_message(session_id, role, content, tool_call_id, tool_name), idempotency_key
        )

    def append_messages(
        self,
        session_id: str,
        messages: Iterable[NewMessage | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Message]:
        return self._do(calls.append_messages(session_id, messages), idempotency_key)

    def update_context(
        self,
        session_id: str,
        context: Mapping[str, Any],
        *,
        if_match: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return self._do(calls.update_context(session_id, context, if_match), idempotency_key)

    def update_session(
        self,
        session_id: str,
        *,
        name: str | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return self._do(calls.update_session(session_id, name, ttl_seconds), idempotency_key)

    def close_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return self._do(calls.end_session(session_id, "close"), idempotency_key)

    def complete_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return self._do(calls.end_session(session_id, "complete"), idempotency_key)

    def summarize_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return self._do(calls.end_session(session_id, "summarize"), idempotency_key)

    def delete_session(self, session_id: str, *, idempotency_key: str | None = None) -> None:
        self._do(calls.delete_session(session_id), idempotency_key)

    def list_sessions(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> SessionPage:
        return self._do(calls.list_sessions(status, limit, cursor))

    def iter_sessions(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Session]:
        """Every session of the organization, newest first, a page at a time."""
        cursor = None
        while True:
            page = self.list_sessions(status=status, limit=page_size, cursor=cursor)
            yield from page.sessions
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def iter_messages(
        self, session_id: str, *, after_seq: int = 0, page_size: int = 500
    ) -> Iterator[Message]:
        """A session's messages in seq order, a page at a time."""
        while True:
            messages = self.get_session(session_id, after_seq=after_seq, limit=page_size).messages
            yield from messages
            if len(messages) < page_size:
                return
            after_seq = messages[-1].seq

    # -- memory -------------------------------------------------------------------------------------

    def upsert_vectors(
        self,
        vectors: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> UpsertResult:
        return self._do(calls.upsert_vectors(vectors, namespace), idempotency_key)

    def query_vectors(
        self,
        *,
        namespace: str | None = None,
        query_text: str | None = None,
        vector: list[float] | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
        min_relevance: float | None = None,
        as_of: int | None = None,
    ) -> QueryResult:
        return self._do(
            calls.query_vectors(namespace, query_text, vector, top_k, mode, filter, min_relevance, as_of)
        )

    def delete_vectors(
        self, ids: Iterable[str], *, namespace: str | None = None, idempotency_key: str | None = None
    ) -> DeleteResult:
        return self._do(calls.delete_vectors(ids, namespace), idempotency_key)

    def search_memory(
        self,
        query: str,
        *,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        min_relevance: float | None = None,
        as_of: int | None = None,
    ) -> list[Match]:
        """Prior (closed) sessions that talked about `query`, best first: one match per session,
        its id the session's, with `summary`, `highlights` (the messages that matched) and
        `relevance`; with `min_relevance` (0.3 is recommended), only those at least that relevant,
        so an empty list means nothing in memory is. With `as_of` (epoch ms), memory as it stood
        then: messages said, sessions closed and summaries made by then."""
        found = self.query_vectors(
            namespace=SESSION_MEMORY,
            query_text=query,
            top_k=top_k,
            filter=filter,
            min_relevance=min_relevance,
            as_of=as_of,
        )
        return found.matches

    # -- change feeds -------------------------------------------------------------------------------

    def events(
        self, session_id: str | None = None, *, last_event_id: str | None = None, ready: bool = False
    ) -> Iterator[Event]:
        """A session's change feed (or, without `session_id`, the organization's), for as long as
        you iterate. Dropped connections and `feed.dropped` are resumed from the last event's id,
        with no gap and no duplicate; a position the server no longer keeps raises Gone. Each
        event's `id` is where to resume from later (`last_event_id`). `ready=True` also yields the
        `feed.ready` event that starts each connection."""
        yield from self._follow(FeedCursor(self.retry, session_id, last_event_id, ready))

    def wait_for_summary(
        self, session_id: str, timeout: float = SUMMARY_TIMEOUT_S, *, searchable: bool = False
    ) -> Session:
        """The session once its summary is made (`summary_status` "ready", with its `summary`) or
        has failed for good ("failed", with `summary_error`: returned, not raised; check
        `summary_status`). Only a closed session is summarized: one that is completed or expires
        (before or during the wait) is returned at once with `summary_status` None, since no
        summary is coming; `summarize_session` asks for one. Follows the session's feed, whose
        first event says where the summary stands, so a summary made before the call is found at
        once; a dropped feed is resumed. Raises TimedOut after `timeout` seconds (a session still
        active waits that long), NotFound if the session is not there or is deleted meanwhile.
        A ready summary is in session memory a little later (`index_status` "ready"): with
        `searchable`, the wait goes on until the index is no longer pending, so that
        `search_memory` finds the session and its summary (within the same `timeout`)."""
        deadline = time.monotonic() + timeout
        cursor = summary_cursor(self.retry, session_id, timeout)
        with contextlib.closing(self._follow(cursor)) as events:  # the feed closes on the way out
            for event in events:
                if summary_done(event):
                    break
        session = self._do(calls.session_state(session_id))  # NotFound once deleted
        pause = calls.INDEX_PAUSE_S
        while searchable and session.index_status == "pending":
            time.sleep(min(pause, calls.index_left(session_id, deadline)))
            pause = min(2 * pause, calls.INDEX_PAUSE_MAX_S)
            session = self._do(calls.session_state(session_id))
        return session

    def _follow(self, cursor: FeedCursor) -> Generator[Event, None, None]:
        while not cursor.ended:
            try:
                timeout = _feed_timeout(self._http, cursor.read_timeout())
                with self._http.stream(
                    "GET", cursor.path, headers=cursor.headers(), timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                    retry = cursor.opened(response)
                    if retry is not None:
                        time.sleep(cursor.failed(retry))
                        continue
                    parser = SseParser()
                    for line in response.iter_lines():
                        event = cursor.handle(line, parser)
                        if event is not None:
                            yield event
                        if cursor.ended or cursor.reconnect:
                            break
            except TRANSPORT_ERRORS as exc:
                time.sleep(cursor.failed(exc))


def _feed_timeout(http: httpx.Client | httpx.AsyncClient, read_s: float) -> httpx.Timeout:
    return httpx.Timeout(http.timeout.connect, read=read_s)


class AsyncClient:
    """The same surface as Client, awaitable. Use it as an async context manager, or `aclose()`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: Call[T], idempotency_key: str | None = None) -> T:
        call = call.with_key(idempotency_key)
        tries = Tries(self.retry, call)
        for _ in tries:
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, params=call.params, headers=call.headers
                )
            except TRANSPORT_ERRORS as exc:
                await asyncio.sleep(tries.after_failure(exc))
                continue
            if response.status_code < 400:
                return call.parse(response)
            await asyncio.sleep(tries.after_error(response))
        raise AssertionError("unreachable: the last try returns or raises")

    # -- export and import --------------------------------------------------------------------------

    async def export(self, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """See Client.export."""
        call = calls.export_organization()
        async with self._http.stream(call.method, call.path, headers=call.headers) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_from(response)
            written = 0
            with _opened(dest, "wb") as out:
                async for chunk in response.aiter_bytes(calls.TRANSFER_CHUNK_BYTES):
                    written += out.write(chunk)
            return written

    async def import_sessions(self, source: str | os.PathLike[str] | BinaryIO) -> ImportResult:
        """See Client.import_sessions."""
        call = calls.import_sessions()

        async def chunks(data: BinaryIO) -> AsyncIterator[bytes]:
            for chunk in _chunks(data):
                yield chunk

        with _opened(source, "rb") as data:
            response = await self._http.request(
                call.method, call.path, content=chunks(data), headers=call.headers
            )
        if response.status_code >= 400:
            raise error_from(response)
        return call.parse(response)

    # -- sessions -----------------------------------------------------------------------------------

    async def create_session(
        self,
        name: str,
        *,
        ttl_seconds: int | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return await self._do(calls.create_session(name, ttl_seconds, context), idempotency_key)

    async def fork_session(
        self,
        session_id: str,
        at_seq: int,
        *,
        name: str | None = None,
        context: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """See Client.fork_session."""
        return await self._do(
            calls.fork_session(session_id, at_seq, name, context, ttl_seconds), idempotency_key
        )

    async def get_session(
        self, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> SessionWithMessages:
        return await self._do(calls.get_session(session_id, after_seq, limit))

    async def append_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        call = calls.append_message(session_id, role, content, tool_call_id, tool_name)
        return await self._do(call, idempotency_key)

    async def append_messages(
        self,
        session_id: str,
        messages: Iterable[NewMessage | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Message]:
        return await self._do(calls.append_messages(session_id, messages), idempotency_key)

    async def update_context(
        self,
        session_id: str,
        context: Mapping[str, Any],
        *,
        if_match: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return await self._do(calls.update_context(session_id, context, if_match), idempotency_key)

    async def update_session(
        self,
        session_id: str,
        *,
        name: str | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return await self._do(calls.update_session(session_id, name, ttl_seconds), idempotency_key)

    async def close_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return await self._do(calls.end_session(session_id, "close"), idempotency_key)

    async def complete_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return await self._do(calls.end_session(session_id, "complete"), idempotency_key)

    async def summarize_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return await self._do(calls.end_session(session_id, "summarize"), idempotency_key)

    async def delete_session(self, session_id: str, *, idempotency_key: str | None = None) -> None:
        await self._do(calls.delete_session(session_id), idempotency_key)

    async def list_sessions(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> SessionPage:
        return await self._do(calls.list_sessions(status, limit, cursor))

    async def iter_sessions(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Session]:
        cursor = None
        while True:
            page = await self.list_sessions(status=status, limit=page_size, cursor=cursor)
            for session in page.sessions:
                yield session
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def iter_messages(
        self, session_id: str, *, after_seq: int = 0, page_size: int = 500
    ) -> AsyncIterator[Message]:
        while True:
            messages = (await self.get_session(session_id, after_seq=after_seq, limit=page_size)).messages
            for message in messages:
                yield message
            if len(messages) < page_size:
                return
            after_seq = messages[-1].seq

    # -- memory -------------------------------------------------------------------------------------

    async def upsert_vectors(
        self,
        vectors: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> UpsertResult:
        return await self._do(calls.upsert_vectors(vectors, namespace), idempotency_key)

    async def query_vectors(
        self,
        *,
        namespace: str | None = None,
        query_text: str | None = None,
        vector: list[float] | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
        min_relevance: float | None = None,
        as_of: int | None = None,
    ) -> QueryResult:
        return await self._do(
            calls.query_vectors(namespace, query_text, vector, top_k, mode, filter, min_relevance, as_of)
        )

    async def delete_vectors(
        self, ids: Iterable[str], *, namespace: str | None = None, idempotency_key: str | None = None
    ) -> DeleteResult:
        return await self._do(calls.delete_vectors(ids, namespace), idempotency_key)

    async def search_memory(
        self,
        query: str,
        *,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        min_relevance: float | None = None,
        as_of: int | None = None,
    ) -> list[Match]:
        found = await self.query_vectors(
            namespace=SESSION_MEMORY,
            query_text=query,
            top_k=top_k,
            filter=filter,
            min_relevance=min_relevance,
            as_of=as_of,
        )
        return found.matches

    # -- change feeds -------------------------------------------------------------------------------

    async def events(
        self, session_id: str | None = None, *, last_event_id: str | None = None, ready: bool = False
    ) -> AsyncIterator[Event]:
        async for event in self._follow(FeedCursor(self.retry, session_id, last_event_id, ready)):
            yield event

    async def wait_for_summary(
        self, session_id: str, timeout: float = SUMMARY_TIMEOUT_S, *, searchable: bool = False
    ) -> Session:
        """See Client.wait_for_summary."""
        deadline = time.monotonic() + timeout
        cursor = summary_cursor(self.retry, session_id, timeout)
        async with contextlib.aclosing(self._follow(cursor)) as events:  # the feed closes on the way out
            async for event in events:
                if summary_done(event):
                    break
        session = await self._do(calls.session_state(session_id))  # NotFound once deleted
        pause = calls.INDEX_PAUSE_S
        while searchable and session.index_status == "pending":
            await asyncio.sleep(min(pause, calls.index_left(session_id, deadline)))
            pause = min(2 * pause, calls.INDEX_PAUSE_MAX_S)
            session = await self._do(calls.session_state(session_id))
        return session

    async def _follow(self, cursor: FeedCursor) -> AsyncGenerator[Event, None]:
        while not cursor.ended:
            try:
                timeout = _feed_timeout(self._http, cursor.read_timeout())
                async with self._http.stream(
                    "GET", cursor.path, headers=cursor.headers(), timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    retry = cursor.opened(response)
                    if retry is not None:
                        await asyncio.sleep(cursor.failed(retry))
                        continue
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        event = cursor.handle(line, parser)
                        if event is not None:
                            yield event
                        if cursor.ended or cursor.reconnect:
                            break
            except TRANSPORT_ERRORS as exc:
                await asyncio.sleep(cursor.failed(exc))


@contextlib.contextmanager
def _opened(target: str | os.PathLike[str] | BinaryIO, mode: str) -> Iterator[BinaryIO]:
    """A path opened (and closed after), or a file given as it is (left open)."""
    if isinstance(target, str | os.PathLike):
        with open(target, mode) as file:  # noqa: PTH123 - a path or a file, either way a BinaryIO
            yield file  # type: ignore[misc]
    else:
        yield target


def _chunks(data: BinaryIO) -> Iterator[bytes]:
    while chunk := data.read(calls.TRANSFER_CHUNK_BYTES):
        yield chunk
