"""The gateway's HTTP edge: uvicorn's httptools protocol with the bounds a server facing a fleet
needs, each a setting under `http` (engine.config.HttpConfig), per gateway worker process:

- at most `max_connections` connections serve requests. At the cap a new connection makes room by
  closing the connection that has waited longest without a request under way (an idle keep-alive
  connection, or one that has sent nothing), then one whose request has not arrived whole; so
  sockets that send nothing can never keep a client with a request out. Only when every
  connection holds a request the app is answering (a feed, say) is a new one not served: up to
  `reserved_connections` more are taken for the health checks and /metrics alone (anything else on
  them is answered 503), and past those a connection is answered 503 and closed;
- at most `max_connections_per_client` connections from one client address (0: no cap); one more
  is answered 429 and closed;
- at most `max_headers` header fields and `max_header_bytes` of request line and headers;
  past either, 431 and the connection closed (the parser is not fed another byte); headers that
  have not ended once that many bytes have come are refused as they come;
- a request's line and headers must arrive within `header_timeout_s`, and a new connection must
  send them that soon; the whole request (headers and body) within `read_timeout_s` of its first
  byte: a slow client (slowloris) or a silent one is dropped, with 408 when no request was under way;
- a request that is not HTTP gets 400, and the connection is closed.

Every refusal is a JSON error body like the app's, with a request id of its own, written here
because the app never sees these requests, and is counted in
session_engine_http_connections_refused{reason}. Used by `session-engine serve` (uvicorn's `http=`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.config import HttpConfig

from .errors import validation_details
from .metrics import CONNECTIONS_EVICTED, CONNECTIONS_REFUSED

log = logging.getLogger(__name__)
PROTOCOL = "api.edge:EdgeProtocol"  # uvicorn's `http=` setting
_settings = HttpConfig()
_admin_paths = frozenset({"/healthz", "/readyz", "/metrics"})
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def configure(settings: HttpConfig, admin_paths: Iterable[str] = ()) -> None:
    """The bounds every connection of this process gets, and the paths its reserved connections
    may reach besides /healthz and /readyz (create_app sets them from the config)."""
    global _settings, _admin_paths
    _settings = settings
    _admin_paths = frozenset({"/healthz", "/readyz", *admin_paths})


class _Refused(Exception):
    """Stops the parser once a request has been refused."""


# Where a connection is: waiting for a request (idle), receiving one (arriving), or held by the
# app's answer (busy). Only idle and arriving connections may be closed to make room.
State = Literal["idle", "arriving", "busy"]


class _Connections:
    """One event loop's connections by state, each state's oldest first (the reserved ones apart
    from the rest), and by client address."""

    def __init__(self) -> None:
        # [reserved][state]: connections of each kind waiting with nothing being answered.
        self.waiting: tuple[dict[State, dict[EdgeProtocol, None]], ...] = (
            {"idle": {}, "arriving": {}},
            {"idle": {}, "arriving": {}},
        )
        self.per_client: collections.Counter[str] = collections.Counter()

    def move(self, connection: EdgeProtocol, state: State | None) -> None:
        """`connection` is now in `state` (None: gone), since now."""
        waiting = self.waiting[connection.reserved]
        was = connection.state
        if was is not None and was != "busy":
            waiting[was].pop(connection, None)
        connection.state = state
        if state is not None and state != "busy":
            waiting[state][connection] = None

    def make_room(self, reserved: bool = False) -> bool:
        """Close the connection (of the reserve, or of the rest) that has waited longest without
        a request under way, or else the oldest one whose request is still arriving; False when
        every one is busy."""
        states: tuple[State, ...] = ("idle", "arriving")
        for state in states:
            waiting = self.waiting[reserved][state]
            while waiting:
                oldest = next(iter(waiting))
                self.move(oldest, None)
                if not oldest.transport.is_closing():
                    oldest.evict(state)
                    return True
        return False


_by_loop: dict[asyncio.AbstractEventLoop, _Connections] = {}


def _connections_of(loop: asyncio.AbstractEventLoop) -> _Connections:
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = _Connections()
    return found


class EdgeProtocol(HttpToolsProtocol):
    """Per request this adds a few attribute updates and no timer: the timeouts are enforced by
    one sweep a second over the process's connections (a first version armed a timer per request
    and counted each header;
    benchmarks/RESULTS.md#11-encode-before-apply-and-the-http-edge-what-they-cost-a-request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _settings
        self._admin_paths = _admin_paths
        self._pool = _connections_of(self.loop)
        self._host: str | None = None  # the client's address, counted in the pool
        self.state: State | None = None  # where it is in the pool (None: not in it)
        self._refused = False
        self.reserved = False  # one of the reserve: health checks and /metrics only
        self._in_headers = False  # a request's headers are arriving
        self._header_bytes = 0  # received since its first byte, while they were
        self._chunk = 0  # the size of the piece of data being parsed
        self._partial = False  # a request has begun and not yet arrived whole
        self._unanswered = 0  # requests that arrived whole and are not answered yet (pipelining: >1)
        self._headers_since: float | None = None  # waiting for a request's headers since then
        self._waiting_since: float | None = None  # waiting for a request to arrive whole since then

    # -- connections --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self._limits
        if self.client is not None:
            self._host = self.client[0]
            self._pool.per_client[self._host] += 1
            if 0 < limits.max_connections_per_client < self._pool.per_client[self._host]:
                self._refuse(
                    429,
                    "RATE_LIMITED",
                    "too many connections from this address",
                    {"limit": limits.max_connections_per_client},
                    "Reuse connections (keep-alive) instead of opening new ones. Behind a proxy every "
                    "client shares its address: raise http.max_connections_per_client or set it to 0.",
                    "per_client",
                )
                return
        if len(self.connections) > limits.max_connections and not self._pool.make_room():
            # Every connection is answering a request: this one joins the health checks' reserve,
            # making room there (never among the rest) when the reserve is full too.
            self.reserved = True
            full = len(self.connections) > limits.max_connections + limits.reserved_connections
            if full and not self._pool.make_room(reserved=True):
                self._refuse(
                    503,
                    "UNAVAILABLE",
                    "too many connections",
                    {"limit": limits.max_connections},
                    "Retry shortly, or reuse connections (keep-alive) instead of opening new ones.",
                    "capacity",
                )
                return
        now = self.loop.time()
        self._headers_since = self._waiting_since = now  # the first request must start in time too
        self._pool.move(self, "idle")
        _sweep_on(self.loop, self.connections, min(limits.header_timeout_s, limits.read_timeout_s))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._pool.move(self, None)
        if self._host is not None:
            self._pool.per_client[self._host] -= 1
            if self._pool.per_client[self._host] <= 0:
                del self._pool.per_client[self._host]
            self._host = None

    def evict(self, state: State) -> None:
        """Closed to make room for a new connection: quietly when no request was under way (as a
        keep-alive timeout closes it), with 503 when one was arriving."""
        CONNECTIONS_EVICTED.labels(state).inc()
        if state == "idle":
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            503,
            "UNAVAILABLE",
            "the gateway is at its connection limit",
            {"limit": self._limits.max_connections},
            "Send each request whole, without pauses, and retry shortly.",
            None,  # counted as evicted
        )

    def _should_upgrade_to_ws(self) -> bool:
        # The API has no WebSocket routes, and an upgraded connection would leave this protocol
        # (and its place in the pool) without connection_lost: an Upgrade header is ignored and the
        # request served as plain HTTP.
        return False

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("ignored an Upgrade header", extra={"client": self.client})

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
            self._refuse(
                400,
                "VALIDATION_ERROR",
                "malformed HTTP request",
                {},
                "Send an HTTP/1.1 request: a request line, headers, an empty line, then the body.",
                "malformed",
            )

    # -- requests -----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._chunk  # the piece being parsed, a bound on what it holds of this request
        self._headers_since = self._waiting_since = self.loop.time()
        self._partial = True
        self._pool.move(self, self._place())

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._headers_since = None
        if len(self.headers) > self._limits.max_headers:
            self._refuse_headers(
                "too many header fields", {"field": "headers", "limit": self._limits.max_headers}
            )
            raise _Refused
        limit = self._limits.max_header_bytes
        if self._header_bytes > limit and self._header_size() > limit:  # exact only when it may matter
            self._too_large_headers()
            raise _Refused
        if self.reserved and httptools.parse_url(self.url).path.decode("latin-1") not in self._admin_paths:
            self._refuse(
                503,
                "UNAVAILABLE",
                "too many connections",
                {"limit": self._limits.max_connections, "reserved_for": sorted(self._admin_paths)},
                "Every connection of this gateway worker is answering a request; its reserved "
                "connections serve only the health checks and metrics. Retry shortly.",
                "reserved",
            )
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._waiting_since = None
        super().on_message_complete()
        self._partial = False
        if self.cycle is not None and not self.cycle.response_complete:  # else answered before it was whole
            self._unanswered += 1
        self._pool.move(self, self._place())

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one waits
        if self._unanswered:
            self._unanswered -= 1
        self._pool.move(self, self._place())

    def _place(self) -> State:
        """Busy while a request that arrived whole waits for its answer (a pipelined one too);
        else arriving while a request is under way, else idle."""
        if self._unanswered:
            return "busy"
        return "arriving" if self._partial else "idle"

    def _header_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large_headers(self) -> None:
        limit = {"field": "headers", "limit_bytes": self._limits.max_header_bytes}
        self._refuse_headers("request line and headers are too large", limit, "headers_too_large")

    def _refuse_headers(
        self, message: str, details: dict[str, Any], reason: str = "too_many_headers"
    ) -> None:
        self._refuse(431, "VALIDATION_ERROR", message, details, "Send fewer or smaller headers.", reason)

    # -- the timeouts -------------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if self.transport.is_closing():
            return
        limits = self._limits
        headers_since, since = self._headers_since, self._waiting_since
        if headers_since is not None and now - headers_since >= limits.header_timeout_s:
            self._timed_out({"header_timeout_s": limits.header_timeout_s}, "header_timeout")
        elif since is not None and now - since >= limits.read_timeout_s:
            self._timed_out({"read_timeout_s": limits.read_timeout_s}, "read_timeout")

    def _timed_out(self, details: dict[str, Any], reason: str) -> None:
        self._headers_since = self._waiting_since = None
        if self.cycle is not None and not self.cycle.response_complete:
            # The app is reading a body that stopped coming: it sees the client go.
            log.warning("dropped a client whose request body stopped arriving", extra={"client": self.client})
            CONNECTIONS_REFUSED.labels(reason).inc()
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            408,
            "VALIDATION_ERROR",
            "the request did not arrive in time",
            details,
            "Send each request whole, without pauses; idle connections are closed.",
            reason,
        )

    # -- answers the app never sees -----------------------------------------------------------------

    def _refuse(
        self, status: int, code: str, message: str, details: dict[str, Any], hint: str, reason: str | None
    ) -> None:
        if reason is not None:
            CONNECTIONS_REFUSED.labels(reason).inc()
        self._refused = True
        self._headers_since = self._waiting_since = None
        request_id = uuid.uuid4().hex
        if status >= 500:
            details = {**details, "request_id": request_id}
        if code == "VALIDATION_ERROR":
            details = validation_details(message, details)
        log.warning(message, extra={"status": status, "client": self.client, "request_id": request_id})
        body = orjson.dumps({"error": message, "code": code, "details": details, "hint": hint})
        head = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"x-request-id: " + request_id.encode(),
            b"connection: close",
        ]
        if status in (429, 503):
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


_sweeps: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def _sweep_on(loop: asyncio.AbstractEventLoop, connections: set[Any], timeout_s: float) -> None:
    """Start this loop's sweep of its connections' timeouts, once."""
    task = _sweeps.get(loop)
    if task is None or task.done():
        _sweeps[loop] = loop.create_task(_sweep(loop, connections, min(1.0, timeout_s / 4)))


async def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, EdgeProtocol):
                connection.check_timeouts(now)
