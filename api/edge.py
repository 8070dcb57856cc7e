"""The gateway's HTTP edge: uvicorn's httptools protocol with the bounds a server facing a fleet
needs, each a setting under `http` (engine.config.HttpConfig), per gateway worker process:

- at most `max_connections` open connections; one more is answered 503 and closed;
- at most `max_headers` header fields and `max_header_bytes` of request line and headers;
  past either, 431 and the connection closed (the parser is not fed another byte); headers that
  have not ended once that many bytes have come are refused as they come;
- a request must arrive whole (headers and body) within `read_timeout_s` of its first byte, and a
  new connection must start one that soon: a slow client (slowloris) or an idle one is dropped,
  with 408 when no request was under way.

Every refusal is a JSON error body like the app's, with a request id of its own, written here
because the app never sees these requests. Used by `session-engine serve` (uvicorn's `http=`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.config import HttpConfig

log = logging.getLogger(__name__)
PROTOCOL = "api.edge:EdgeProtocol"  # uvicorn's `http=` setting
_settings = HttpConfig()
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def configure(settings: HttpConfig) -> None:
    """The bounds every connection of this process gets (create_app sets them from the config)."""
    global _settings
    _settings = settings


class _Refused(Exception):
    """Stops the parser once a request has been refused."""


class EdgeProtocol(HttpToolsProtocol):
    """Per request this adds a few attribute updates and no timer: the read timeout is enforced
    by one sweep a second over the process's connections (a first version armed a timer per
    request and counted each header; benchmarks/RESULTS.md §11)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _settings
        self._refused = False
        self._in_headers = False  # a request's headers are arriving
        self._header_bytes = 0  # received since its first byte, while they were
        self._chunk = 0  # the size of the piece of data being parsed
        self._waiting_since: float | None = None  # waiting for a request to arrive whole since then

    # -- connections --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse(
                503,
                "UNAVAILABLE",
                "too many connections",
                {"limit": self._limits.max_connections},
                "Retry shortly, or reuse connections (keep-alive) instead of opening new ones.",
            )
            return
        self._waiting_since = self.loop.time()  # the first request must start in time too
        _sweep_on(self.loop, self.connections, self._limits.read_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._chunk = len(data)
        if self._in_headers:
            self._header_bytes += self._chunk  # an upper bound on the headers' size so far
        super().data_received(data)
        if self._in_headers and self._header_bytes > self._limits.max_header_bytes and not self._refused:
            self._too_large_headers()  # still no end of the headers past the limit

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parser stopped by a refusal is no malformed request
            super().send_400_response(msg)

    # -- requests -----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._chunk  # the piece being parsed, a bound on what it holds of this request
        self._waiting_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if len(self.headers) > self._limits.max_headers:
            self._refuse_headers("too many header fields", {"limit": self._limits.max_headers})
            raise _Refused
        limit = self._limits.max_header_bytes
        if self._header_bytes > limit and self._header_size() > limit:  # exact only when it may matter
            self._too_large_headers()
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._waiting_since = None
        super().on_message_complete()

    def _header_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large_headers(self) -> None:
        limit = {"limit_bytes": self._limits.max_header_bytes}
        self._refuse_headers("request line and headers are too large", limit)

    def _refuse_headers(self, message: str, details: dict[str, Any]) -> None:
        self._refuse(431, "VALIDATION_ERROR", message, details, "Send fewer or smaller headers.")

    # -- the read timeout ---------------------------------------------------------------------------

    def check_read_timeout(self, now: float) -> None:
        since = self._waiting_since
        if since is None or now - since < self._limits.read_timeout_s or self.transport.is_closing():
            return
        self._waiting_since = None
        if self.cycle is not None and not self.cycle.response_complete:
            # The app is reading a body that stopped coming: it sees the client go.
            log.warning("dropped a client whose request body stopped arriving", extra={"client": self.client})
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            408,
            "VALIDATION_ERROR",
            "the request did not arrive in time",
            {"read_timeout_s": self._limits.read_timeout_s},
            "Send each request whole, without pauses; idle connections are closed.",
        )

    # -- answers the app never sees -----------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str, details: dict[str, Any], hint: str) -> None:
        self._refused = True
        self._waiting_since = None
        request_id = uuid.uuid4().hex
        if status >= 500:
            details = {**details, "request_id": request_id}
        log.warning(message, extra={"status": status, "client": self.client, "request_id": request_id})
        body = orjson.dumps({"error": message, "code": code, "details": details, "hint": hint})
        head = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"x-request-id: " + request_id.encode(),
            b"connection: close",
        ]
        if status == 503:
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


_sweeps: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def _sweep_on(loop: asyncio.AbstractEventLoop, connections: set[Any], timeout_s: float) -> None:
    """Start this loop's sweep of its connections' read timeouts, once."""
    task = _sweeps.get(loop)
    if task is None or task.done():
        _sweeps[loop] = loop.create_task(_sweep(loop, connections, min(1.0, timeout_s / 4)))


async def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, EdgeProtocol):
                connection.check_read_timeout(now)
