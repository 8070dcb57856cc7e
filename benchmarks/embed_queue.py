"""The embedder's queue, in process with the real default model: what a model call costs by its
number of texts, and how long a query waits while a backlog of closed sessions is being indexed,
with the query first (the engine) and first in, first out (the engine before it).

    python -m benchmarks.embed_queue --backlog 640 --queries 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.conversations import generate
from engine.closing.indexing import TEXTS_PER_EMBED
from engine.models.embed_queue import EmbedQueue
from engine.models.embedder import Embedder


def call_costs(
    embedder: Embedder, texts: Sequence[str], sizes: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        calls, started = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - started < seconds:
            embedder.embed(texts[:size])
            calls += 1
        per_call = (time.perf_counter() - started) / calls
        rows.append(
            {"texts": size, "ms_per_call": round(per_call * 1000, 1), "texts_per_s": round(size / per_call)}
        )
    return rows


async def query_waits(
    embedder: Embedder, backlog: Sequence[str], queries: int, chunk: int, *, first: bool
) -> dict[str, Any]:
    """A backlog sent for indexing as closed sessions send it (engine.closing.indexing's calls of
    TEXTS_PER_EMBED texts), then one query every 50 ms; each query's wait."""
    queue = EmbedQueue(embedder.embed, embedder.dimension, chunk=chunk)
    started = time.perf_counter()
    indexing = [
        asyncio.ensure_future(queue.embed(backlog[i : i + TEXTS_PER_EMBED], urgent=False))
        for i in range(0, len(backlog), TEXTS_PER_EMBED)
    ]
    waits: list[float] = []

    async def query(i: int) -> None:
        sent = time.perf_counter()
        await queue.embed([f"what did we decide about the rollback {i}"], urgent=first)
        waits.append(time.perf_counter() - sent)

    asks = []
    for i in range(queries):
        asks.append(asyncio.ensure_future(query(i)))
        await asyncio.sleep(0.05)
    await asyncio.gather(*asks)
    await asyncio.gather(*indexing)
    indexed_s = time.perf_counter() - started
    queue.close()
    waits.sort()
    return {
        "query_first": first,
        "chunk": chunk,
        "query_p50_ms": round(statistics.median(waits) * 1000, 1),
        "query_max_ms": round(waits[-1] * 1000, 1),
        "backlog_indexed_s": round(indexed_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=640, help="texts waiting to be indexed")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="per call size measured")
    args = parser.parse_args()
    embedder = Embedder(None)
    texts = [content for session in generate().sessions for _, content in session.messages]
    while len(texts) < max(args.backlog, TEXTS_PER_EMBED):
        texts += texts
    embedder.embed(texts[:8])  # warm
    costs = call_costs(embedder, texts, (1, 4, 16, 32, 64, TEXTS_PER_EMBED), args.seconds)
    runs = [  # first in, first out, each indexing call whole: the embedder before its queue
        asyncio.run(query_waits(embedder, texts[: args.backlog], args.queries, TEXTS_PER_EMBED, first=False)),
        *(
            asyncio.run(query_waits(embedder, texts[: args.backlog], args.queries, chunk, first=True))
            for chunk in (16, 32, 64)
        ),
    ]
    print(json.dumps({"call_costs": costs, "query_waits": runs}, indent=2))


if __name__ == "__main__":
    main()
