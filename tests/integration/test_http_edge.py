"""The HTTP edge under a real uvicorn on 127.0.0.1: a 5xx names its request and leaves
the client's keep-alive connection usable; api/edge.py bounds headers, read times and connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from api.app import create_app
from api.edge import EdgeProtocol
from engine.config import HttpConfig, load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

AUTH = {"Authorization": "Bearer key-acme"}


class BuggyTransport(LocalTransport):
    """Shards that answer reads with nonsense: the route then fails in a way no handler expects."""

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        return [
            42 if type(op).__name__ == "GetSession" else r
            for op, r in zip(ops, await super().call(shard, ops), strict=True)
        ]


def _no_embedder(texts: Sequence[str]) -> Any:
    raise AssertionError("not used")


def serve(transport: type[LocalTransport], **uvicorn_options: Any) -> Iterator[str]:
    """The gateway app over in-process shards, served by a real uvicorn in a thread."""
    config = load_config()
    app = create_app(
        config,
        transport=lambda c: transport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), _no_embedder),
        keys=KeyStore.from_spec("key-acme=acme"),
    )
    options = {"host": "127.0.0.1", "port": 0, "log_config": None, "lifespan": "on", **uvicorn_options}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def buggy_server() -> Iterator[str]:
    yield from serve(BuggyTransport)


def test_a_500_names_its_request_and_keeps_the_connection(buggy_server: str) -> None:
    with httpx.Client(base_url=buggy_server, headers=AUTH, timeout=10) as client:
        sid = client.post("/sessions", json={"name": "x"}).json()["id"]
        failed = client.get(f"/sessions/{sid}", headers={"X-Request-ID": "trace-me-1"})
        assert failed.status_code == 500
        body = failed.json()
        assert set(body) == {"error", "code", "details", "hint"} and body["code"] == "INTERNAL"
        assert failed.headers["x-request-id"] == "trace-me-1"
        assert body["details"]["request_id"] == "trace-me-1"
        assert "Traceback" not in failed.text
        # The same keep-alive connection answers the next request.
        after = client.post("/sessions", json={"name": "y"})
        assert after.status_code == 201
        assert failed.extensions["network_stream"] is after.extensions["network_stream"]


SMALL = HttpConfig(
    max_connections=8,
    reserved_connections=2,
    max_headers=20,
    max_header_bytes=2048,
    header_timeout_s=1.0,
    read_timeout_s=1.0,
)


def edge_with(limits: HttpConfig) -> type[EdgeProtocol]:
    """The edge with these bounds (small ones, so the tests reach them quickly)."""

    class Bounded(EdgeProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._limits = limits

    return Bounded


@pytest.fixture(scope="module")
def edge_server() -> Iterator[str]:
    yield from serve(LocalTransport, http=edge_with(SMALL))


def connect(url: str, source: str | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection(
        (host, int(port)), timeout=10, source_address=(source, 0) if source else None
    )


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """The whole answer of a server that closes the connection after it: status, headers, JSON body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else None


REQUEST = b"POST /sessions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer key-acme\r\n"


def assert_refused(answer: tuple[int, dict[str, str], Any], status: int, code: str) -> dict[str, Any]:
    got, headers, body = answer
    assert got == status, answer
    assert set(body) == {"error", "code", "details", "hint"} and body["code"] == code
    assert headers["connection"] == "close" and headers["x-request-id"]
    if code == "VALIDATION_ERROR":  # details in their one shape, as the app's
        field = body["details"]["field"]
        assert body["details"]["errors"] == [{"field": field, "message": body["error"]}]
    return dict(body)


def test_requests_within_the_bounds_are_served_on_one_connection(edge_server: str) -> None:
    with httpx.Client(base_url=edge_server, headers=AUTH, timeout=10) as client:
        first = client.post("/sessions", json={"name": "a"})
        second = client.get(f"/sessions/{first.json()['id']}", headers={f"x-h{i}": "v" for i in range(10)})
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.extensions["network_stream"] is second.extensions["network_stream"]


def test_too_many_header_fields_get_431(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(REQUEST + b"".join(b"x-h%d: v\r\n" % i for i in range(30)) + b"\r\n")
        body = assert_refused(read_answer(sock), 431, "VALIDATION_ERROR")
        assert body["details"]["limit"] == SMALL.max_headers and body["details"]["field"] == "headers"


def test_headers_too_large_get_431(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(REQUEST + b"x-big: " + b"a" * 4096 + b"\r\n\r\n")
        body = assert_refused(read_answer(sock), 431, "VALIDATION_ERROR")
        assert body["details"]["limit_bytes"] == SMALL.max_header_bytes


def test_headers_that_pass_the_limit_without_ending_get_431_at_once(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(REQUEST)
        time.sleep(0.1)
        sock.sendall(b"x-big: " + b"a" * 3000)  # no end of line, no end of headers
        started = time.monotonic()
        assert_refused(read_answer(sock), 431, "VALIDATION_ERROR")
        assert time.monotonic() - started < SMALL.read_timeout_s, "refused as it came, not at the timeout"


def test_a_body_larger_than_the_header_limit_is_no_header(edge_server: str) -> None:
    with httpx.Client(base_url=edge_server, headers=AUTH, timeout=10) as client:
        created = client.post("/sessions", json={"name": "big", "context": {"pad": "x" * 50_000}})
        assert created.status_code == 201, created.text


def test_slow_and_idle_clients_are_dropped(edge_server: str) -> None:
    """Slowloris: many connections each holding half a request; and connections that say nothing.
    Both are answered 408 and closed once the read timeout passes, not held for ever."""
    slow = [connect(edge_server) for _ in range(5)]
    idle = [connect(edge_server) for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(REQUEST)  # the headers never end
        started = time.monotonic()
        for sock in slow + idle:
            assert_refused(read_answer(sock), 408, "VALIDATION_ERROR")
        assert time.monotonic() - started < 10
    finally:
        for sock in slow + idle:
            sock.close()


def test_a_body_that_stops_arriving_drops_the_connection(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(REQUEST + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        assert sock.recv(65536) == b"", "closed once the read timeout passed"
    with httpx.Client(base_url=edge_server, headers=AUTH, timeout=10) as client:
        assert client.post("/sessions", json={"name": "after"}).status_code == 201


def open_feed(url: str) -> socket.socket:
    """A connection held by the app: an organization feed, read up to its first event."""
    sock = connect(url)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer key-acme\r\n\r\n")
    data = b""
    while b"feed.ready" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return sock


def is_closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


# The same caps with timeouts long enough that only the caps can close a connection here.
CAPPED = SMALL.model_copy(update={"header_timeout_s": 60.0, "read_timeout_s": 60.0})


@pytest.fixture(scope="module")
def capped_server() -> Iterator[str]:
    yield from serve(LocalTransport, http=edge_with(CAPPED))


def test_idle_connections_make_room_for_a_request(capped_server: str) -> None:
    """Sockets that send nothing (or wait between requests) cannot keep a client with a request
    out: at the cap the longest-idle one is closed to make room."""
    silent = [connect(capped_server) for _ in range(SMALL.max_connections)]
    try:
        time.sleep(0.2)  # the server has taken them all
        with httpx.Client(base_url=capped_server, headers=AUTH, timeout=10) as client:
            assert client.post("/sessions", json={"name": "room"}).status_code == 201
            assert client.get("/healthz").status_code == 200
        assert is_closed(silent[0]), "the longest-idle connection made room"
    finally:
        for sock in silent:
            sock.close()


def test_a_request_arriving_slowly_makes_room_after_the_idle_ones(capped_server: str) -> None:
    arriving = connect(capped_server)
    arriving.sendall(REQUEST)  # its headers never end
    time.sleep(0.1)
    idle = [connect(capped_server) for _ in range(SMALL.max_connections - 1)]
    try:
        time.sleep(0.2)
        newcomers = []
        for _ in range(SMALL.max_connections):  # each starts a request, so it is no idle one
            newcomers.append(connect(capped_server))
            newcomers[-1].sendall(REQUEST)
            time.sleep(0.02)
        try:
            # Every idle one went first, then the one whose request was under way, with a 503.
            assert all(is_closed(sock) for sock in idle)
            body = assert_refused(read_answer(arriving), 503, "UNAVAILABLE")
            assert body["details"]["limit"] == SMALL.max_connections
        finally:
            for sock in newcomers:
                sock.close()
    finally:
        for sock in [arriving, *idle]:
            sock.close()


def test_a_pipelined_request_being_answered_is_not_taken_for_idle(capped_server: str) -> None:
    """Two requests in one write: once the first is answered the second (a feed) is being
    answered, so that connection must not be closed to make room."""
    pipelined = connect(capped_server)
    pipelined.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer key-acme\r\n\r\n"
    )
    data = b""
    while b"feed.ready" not in data:
        chunk = pipelined.recv(65536)
        assert chunk, data
        data += chunk
    idle = [connect(capped_server) for _ in range(SMALL.max_connections - 1)]
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=capped_server, headers=AUTH, timeout=10) as client:
            assert client.post("/sessions", json={"name": "room"}).status_code == 201
        assert is_closed(idle[0]), "the longest-idle connection made room"
        pipelined.settimeout(5)
        assert b"event: session.created" in pipelined.recv(65536), "the feed still streams"
    finally:
        for sock in [pipelined, *idle]:
            sock.close()


def test_connections_past_the_cap_reach_only_the_health_checks_then_get_503(capped_server: str) -> None:
    """Every connection is answering a request (feeds): the reserved ones serve /healthz and
    /readyz but nothing else; a reserved connection never makes room for another while the
    reserve has room, and past it the longest-idle reserved one does."""
    feeds = [open_feed(capped_server) for _ in range(SMALL.max_connections)]
    health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    reserved: list[socket.socket] = []
    try:
        for _ in range(SMALL.reserved_connections):  # both silent at first, both kept
            reserved.append(connect(capped_server))
            time.sleep(0.05)
        try:
            reserved[0].sendall(health)
            assert reserved[0].recv(65536).startswith(b"HTTP/1.1 200")
            reserved[0].sendall(health)  # and again, on the same connection
            assert reserved[0].recv(65536).startswith(b"HTTP/1.1 200")
            reserved[1].sendall(REQUEST + b"Content-Length: 2\r\n\r\n{}")
            body = assert_refused(read_answer(reserved[1]), 503, "UNAVAILABLE")
            assert "/healthz" in body["details"]["reserved_for"]
            time.sleep(0.05)
            reserved.append(connect(capped_server))  # takes the refused one's place
            time.sleep(0.05)
            reserved.append(connect(capped_server))  # the reserve is full: the longest idle goes
            time.sleep(0.05)
            assert is_closed(reserved[0])
            for sock in reserved[2:]:
                sock.sendall(health)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in reserved:
                sock.close()
    finally:
        for sock in feeds:
            sock.close()
    time.sleep(0.2)
    with httpx.Client(base_url=capped_server, headers=AUTH, timeout=10) as client:
        assert client.post("/sessions", json={"name": "room again"}).status_code == 201


def test_with_no_reserve_a_connection_past_the_cap_is_refused_with_503() -> None:
    full = CAPPED.model_copy(update={"max_connections": 4, "reserved_connections": 0})

    for url in serve(LocalTransport, http=edge_with(full)):
        feeds = [open_feed(url) for _ in range(full.max_connections)]
        try:
            with connect(url) as extra:
                body = assert_refused(read_answer(extra), 503, "UNAVAILABLE")
                assert body["details"]["limit"] == full.max_connections and body["details"]["request_id"]
        finally:
            for sock in feeds:
                sock.close()


PER_CLIENT = HttpConfig(max_connections=64, max_connections_per_client=3)


@pytest.fixture(scope="module")
def per_client_server() -> Iterator[str]:
    yield from serve(LocalTransport, http=edge_with(PER_CLIENT))


def test_one_address_past_its_cap_gets_429_and_others_are_served(per_client_server: str) -> None:
    held = [connect(per_client_server, "127.0.0.1") for _ in range(PER_CLIENT.max_connections_per_client)]
    try:
        with connect(per_client_server, "127.0.0.1") as extra:
            answer = read_answer(extra)
            body = assert_refused(answer, 429, "RATE_LIMITED")
            assert body["details"] == {"limit": PER_CLIENT.max_connections_per_client}
            assert answer[1]["retry-after"] == "1"
        with connect(per_client_server, "127.0.0.2") as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)  # their places are free again
    with connect(per_client_server, "127.0.0.1") as again:
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert again.recv(65536).startswith(b"HTTP/1.1 200")


def test_an_upgrade_header_is_served_as_plain_http_and_keeps_the_accounting(per_client_server: str) -> None:
    """No WebSocket upgrade: the request is answered as HTTP, and its connection still counts
    (and stops counting) against its address's cap."""
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(PER_CLIENT.max_connections_per_client + 2):
        with connect(per_client_server, "127.0.0.3") as sock:
            sock.sendall(upgrade)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "served as HTTP, not upgraded"
        time.sleep(0.05)
    with connect(per_client_server, "127.0.0.3") as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "no count was left behind"


def test_a_request_that_is_not_http_gets_a_json_400(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        body = assert_refused(read_answer(sock), 400, "VALIDATION_ERROR")
        assert body["error"] == "malformed HTTP request"


def test_a_declared_oversize_body_gets_413_and_the_connection_is_closed(edge_server: str) -> None:
    limit = load_config().limits.max_body_bytes
    with connect(edge_server) as sock:
        sock.sendall(REQUEST + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{" % (limit + 1))
        status, headers, body = read_answer(sock)  # reads until the server closes
        assert status == 413 and body["code"] == "PAYLOAD_TOO_LARGE"
        assert headers["connection"] == "close" and headers["x-request-id"]


def test_a_silent_connection_is_dropped_at_the_header_timeout() -> None:
    """header_timeout_s, shorter than read_timeout_s, bounds how long a connection may send no
    request line and headers."""
    quick = HttpConfig(header_timeout_s=0.5, read_timeout_s=30)

    for url in serve(LocalTransport, http=edge_with(quick)):
        with connect(url) as sock:
            started = time.monotonic()
            body = assert_refused(read_answer(sock), 408, "VALIDATION_ERROR")
            assert body["details"]["header_timeout_s"] == 0.5
            assert time.monotonic() - started < 5
