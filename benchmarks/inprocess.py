"""Per-request CPU of the gateway and per-op CPU of a session shard, in one process, without
Ray, HTTP or a load generator: what a change to either costs, measured without the noise of a
whole server on a shared machine.

    python -m benchmarks.inprocess

The gateway: the ASGI app called directly with an append request, over in-process shards
(best of 5 rounds). The shard: `DurableSessions.commit` of 64 single-message appends with
fsync never (best of 5 rounds). Compare two commits by running it in each checkout, alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from api.app import create_app
from engine.config import DurabilityConfig, load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

ROUNDS = 5


def _no_embedder(texts: Any) -> Any:
    raise AssertionError("not used")


async def gateway_us(requests: int) -> float:
    app = create_app(
        load_config(),
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(1, IndexParams(), _no_embedder),
        keys=KeyStore.from_spec("bench-key=bench"),
    )

    async def call(path: str, body: bytes) -> list[Any]:
        headers = [
            (b"authorization", b"Bearer bench-key"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"host", b"localhost"),
        ]
        scope = {
            "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("localhost", 80),
            "client": ("127.0.0.1", 1), "root_path": "", "app": app,
        }  # fmt: skip
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    async with app.router.lifespan_context(app):
        sid = orjson.loads((await call("/sessions", b'{"name": "bench"}'))[1]["body"])["id"]
        body = b'{"role": "user", "content": "hello there"}'
        path = f"/sessions/{sid}/messages"
        for _ in range(500):
            await call(path, body)
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(requests):
                await call(path, body)
            best = min(best, (time.perf_counter() - started) / requests * 1e6)
        return best


def shard_us(batches: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        shard = DurableSessions(Path(directory), DurabilityConfig(fsync="never"), lock_wait_s=0.2)
        ids = [new_session_id() for _ in range(64)]
        shard.commit([CreateSession("bench", sid, "bench", 3600, {}) for sid in ids])
        ops = [AppendMessages("bench", sid, (NewMessage("user", "hello there"),)) for sid in ids]
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(batches):
                shard.commit(ops)
            best = min(best, (time.perf_counter() - started) / batches / len(ops) * 1e6)
        shard.close(snapshot=False)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="appends a gateway round")
    parser.add_argument("--batches", type=int, default=200, help="batches of 64 a shard round")
    args = parser.parse_args()
    gateway = asyncio.run(gateway_us(args.requests))
    print(f"gateway: {gateway:.1f} us an append; shard: {shard_us(args.batches):.2f} us an op")


if __name__ == "__main__":
    main()
