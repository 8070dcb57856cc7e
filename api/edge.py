"""The gateway's HTTP edge: uvicorn's httptools protocol with the bounds a server facing a fleet
needs, each a setting under `http` (engine.config.HttpConfig), per gateway worker process:

- at most `max_connections` open connections; one more is answered 503 and closed;
- at most `max_headers` header fields and `max_header_bytes` of request line and headers;
  past either, 431 and the connection closed (the parser is not fed another byte);
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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _settings
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._header_count = 0
        self._header_bytes = 0
        self._reading = False  # between a request's first byte and its last

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
        self._arm()  # the first request must start in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parser stopped by a refusal is no malformed request
            super().send_400_response(msg)

    # -- requests -----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._header_bytes = 0
        self._reading = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._too_large("too many header fields", {"limit": self._limits.max_headers})
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._refused:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = False
        self._disarm()
        super().on_message_complete()

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._limits.max_header_bytes:
            self._too_large(
                "request line and headers are too large", {"limit_bytes": self._limits.max_header_bytes}
            )

    def _too_large(self, message: str, details: dict[str, Any]) -> None:
        self._refuse(431, "VALIDATION_ERROR", message, details, "Send fewer or smaller headers.")
        raise _Refused

    # -- the read timeout ---------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._limits.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and self._reading:
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
        self._disarm()
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
