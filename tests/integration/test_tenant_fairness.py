"""One organization cannot lock out another, nor the health checks, on a real gateway on Ray:
organization A holds 2,000 feeds and 1,000 sockets that send nothing, each from a loopback address
of its own; organization B's reads and writes and /healthz, from 127.0.0.1, are still answered
within a second (docs/api.md, "Connections")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from benchmarks.server import ServerProcess
from engine.config import load_config
from tests.integration.conftest import ORGS

pytestmark = pytest.mark.integration

FEEDS = 2000
SILENT = 1000
ORG_A, ORG_B = ORGS[500], ORGS[501]  # from the middle: no other test uses them


def source(i: int) -> str:
    """The i-th loopback address after 127.0.0.1: 127.0.1.1, 127.0.1.2, ..."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


async def open_feed(host: str, port: int, local: str) -> tuple[int, dict[str, object], asyncio.StreamWriter]:
    """Organization A asks for its feed and keeps the connection, whatever the answer."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0))
    writer.write(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-{ORG_A}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    body: dict[str, object] = {}
    if status != 200:
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
        body = orjson.loads(await reader.readexactly(length))
    return status, body, writer


async def gather_bounded(jobs: list[Callable[[], Awaitable[object]]], at_once: int) -> list[object]:
    gate = asyncio.Semaphore(at_once)

    async def run(job: Callable[[], Awaitable[object]]) -> object:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))


def timed(call: Callable[[], httpx.Response], expected: int) -> float:
    started = time.monotonic()
    response = call()
    took = time.monotonic() - started
    assert response.status_code == expected, response.text
    return took


async def test_one_organization_cannot_lock_out_another(ray_server: ServerProcess) -> None:
    host, port = ray_server.url.removeprefix("http://").split(":")
    cap = load_config().events.max_feeds_per_org
    writers: list[asyncio.StreamWriter] = []
    try:
        # Organization A: 2,000 feeds from 40 addresses, held open whatever each was answered.
        answers = await gather_bounded(
            [lambda i=i: open_feed(host, int(port), source(i % 40)) for i in range(FEEDS)], 50
        )
        writers += [writer for _, _, writer in answers]  # type: ignore[misc]
        statuses = [status for status, _, _ in answers]  # type: ignore[misc]
        assert statuses.count(200) == cap, "a worker holds at most events.max_feeds_per_org of A's feeds"
        refused = [body for status, body, _ in answers if status == 429]  # type: ignore[misc]
        assert len(refused) == FEEDS - cap
        assert refused[0]["code"] == "RATE_LIMITED" and refused[0]["hint"]
        # And 1,000 sockets that send nothing, each from an address of its own.
        for i in range(SILENT):
            _, writer = await asyncio.open_connection(host, int(port), local_addr=(source(100 + i), 0))
            writers.append(writer)
        await asyncio.sleep(0.5)  # the gateway has taken them all

        # Organization B, from 127.0.0.1, on new connections: each answered within a second.
        def organization_b() -> list[float]:
            auth = {"Authorization": f"Bearer key-{ORG_B}"}
            with httpx.Client(base_url=ray_server.url, headers=auth, timeout=10) as b:
                took = [timed(lambda: b.get("/healthz"), 200)]
                created = b.post("/sessions", json={"name": "still served"})
                assert created.status_code == 201, created.text
                sid = created.json()["id"]
                message = {"role": "user", "content": "hello"}
                took.append(timed(lambda: b.post(f"/sessions/{sid}/messages", json=message), 201))
                took.append(timed(lambda: b.get(f"/sessions/{sid}"), 200))
                took.append(timed(lambda: b.get("/sessions"), 200))
            with httpx.Client(base_url=ray_server.url, timeout=10) as probe:  # a fresh connection
                took.append(timed(lambda: probe.get("/healthz"), 200))
                took.append(timed(lambda: probe.get("/readyz"), 200))
            return took

        took = await asyncio.to_thread(organization_b)
        assert max(took) < 1.0, took
        metrics = httpx.get(f"{ray_server.url}/metrics", timeout=10).text
        assert 'session_engine_http_connections_evicted_total{state="idle"}' in metrics
    finally:
        for writer in writers:
            writer.close()
