"""The HTTP edge under a real uvicorn (issue 15): a 5xx names its request and leaves the client's
keep-alive connection usable."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from engine.config import load_config
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


@pytest.fixture(scope="module")
def buggy_server() -> Iterator[str]:
    config = load_config()
    app = create_app(
        config,
        transport=lambda c: BuggyTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), _no_embedder),
        keys=KeyStore.from_spec("key-acme=acme"),
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
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
