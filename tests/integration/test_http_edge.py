"""The HTTP edge under a real uvicorn on 127.0.0.1 (issue 15): a 5xx names its request and leaves
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
from engine.runtime.transport import LocalMemoryTransport, LocalTransport

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


SMALL = HttpConfig(max_connections=8, max_headers=20, max_header_bytes=2048, read_timeout_s=1.0)


class SmallEdge(EdgeProtocol):
    """The edge with small bounds, so the tests reach them quickly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = SMALL


@pytest.fixture(scope="module")
def edge_server() -> Iterator[str]:
    yield from serve(LocalTransport, http=SmallEdge)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


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
        assert body["details"] == {"limit": SMALL.max_headers}


def test_headers_too_large_get_431(edge_server: str) -> None:
    with connect(edge_server) as sock:
        sock.sendall(REQUEST + b"x-big: " + b"a" * 4096 + b"\r\n\r\n")
        body = assert_refused(read_answer(sock), 431, "VALIDATION_ERROR")
        assert body["details"] == {"limit_bytes": SMALL.max_header_bytes}


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


def test_a_connection_past_the_cap_is_refused_with_503(edge_server: str) -> None:
    held = [connect(edge_server) for _ in range(SMALL.max_connections)]
    try:
        time.sleep(0.2)  # the server has taken them all
        with connect(edge_server) as extra:
            body = assert_refused(read_answer(extra), 503, "UNAVAILABLE")
            assert body["details"]["limit"] == SMALL.max_connections and body["details"]["request_id"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with httpx.Client(base_url=edge_server, headers=AUTH, timeout=10) as client:
        assert client.post("/sessions", json={"name": "room again"}).status_code == 201
