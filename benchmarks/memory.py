"""Vector memory costs: summaries per second with and without batching, embedding throughput, and
query latency at 10k and 100k vectors in one namespace.

    python -m benchmarks.memory [--conversations 16] [--batch-sizes 1 4 8] [--vectors 10000 100000]
                                [--device cpu] [--models-dir DIR]

Each part but the last runs the engine's own classes in this process (no Ray, no HTTP), so it measures the
model or the index and nothing around it:
- the default summarizer (SmolLM2-135M-Instruct, converted from its packaged GGUF file into
  --models-dir once) on N four-message conversations, greedy, `max_new_tokens` 128, N / b
  generate calls of b conversations for each batch size b (b = 1 is no batching);
- the default embedder (all-MiniLM-L6-v2) on summary-sized texts, one text a call and 64 a call;
- a NamespaceIndex of N unit vectors of dimension 384, exact (IndexFlatIP) and HNSW with the
  default parameters: build time, then 500 single queries (top 10) for p50/p99, recall@10 of
  HNSW against the exact answer, and queries with a metadata filter matching 1%. Two data sets:
  `clustered` (2,000 centres, each vector its centre plus noise, queries likewise), closer to
  real embeddings, which cluster by topic; and `random` (independent Gaussian directions), the
  worst case for HNSW, where every point is nearly as far as every other;
- session memory at --session-turns turns in one process (measure_session_memory);
- session memory served through HTTP (`session-memory-http`), at each of --http-turns turns (the
  first the baseline, e.g. `--http-turns 10000 1000000`): a data directory written offline by the
  memory shard's own durable code, a real server started on it, then `POST /vectors/query` at 8
  connections for --http-seconds per kind of query (measure_served_memory).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks import load
from benchmarks.load import Request, ensure_wrk
from benchmarks.server import ServerProcess, default_summarizer
from benchmarks.stamp import describe, machine
from engine.config import SummarizerConfig, load_config
from engine.errors import EngineError
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams, NamespaceIndex, normalized, records_of
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY
from engine.memory.store import MemoryStore
from engine.models.embedder import Embedder
from engine.models.summarizer import Conversation, Summarizer
from engine.routing import memory_shard_for
from engine.storage.identity import ShardIdentity
from engine.storage.layout import claim_layout, memory_directory

HERE = Path(__file__).resolve().parent

TOPICS = [
    ("sourdough bread", "feed the starter twice a day and bake it covered in a Dutch oven"),
    ("a Kubernetes pod in CrashLoopBackOff", "read kubectl logs --previous and add the missing secret"),
    ("last night's football match", "the home team won 3 to 1 and leads the league"),
    ("a trip to Lisbon", "three days: trams, the castle, and pastries in Belem"),
    ("a slow SQL query", "add an index on the join column and avoid SELECT *"),
    ("learning the guitar", "practise chords for ten minutes a day and use a metronome"),
    ("a tax return", "deduct the home office and file before the end of April"),
    ("a birthday party", "book the hall, order the cake, and send invitations two weeks ahead"),
]


def conversations(n: int) -> list[Conversation]:
    out = []
    for i in range(n):
        topic, answer = TOPICS[i % len(TOPICS)]
        messages = [
            ("user", f"I need help with {topic}. Where do I start?"),
            ("assistant", f"For {topic}: {answer}."),
            ("user", f"Thanks. Anything else about {topic} I should know? (question {i})"),
            ("assistant", f"Keep notes as you go; most trouble with {topic} comes from skipping a step."),
        ]
        out.append(Conversation(topic, tuple((j, r, c) for j, (r, c) in enumerate(messages)), len(messages)))
    return out


def measure_summarizer(
    n: int,
    batch_sizes: list[int],
    device: str,
    models_dir: Path,
    *,
    path: Path | None = None,
    max_new_tokens: int = 128,
) -> list[dict[str, Any]]:
    """The summarizer at `path` (default: the default model, converted into models_dir once)."""
    started = time.perf_counter()
    config = SummarizerConfig(path=path, max_new_tokens=max_new_tokens)
    summarizer = Summarizer(config, models_dir, device=device)
    load_s = time.perf_counter() - started
    work = conversations(n)
    summarizer.summarize(work[:1])  # warm-up
    rows = []
    for b in batch_sizes:
        started = time.perf_counter()
        tokens = 0
        for i in range(0, n, b):
            for result in summarizer.summarize(work[i : i + b]):
                tokens += result.output_tokens
        seconds = time.perf_counter() - started
        rows.append(
            {
                "part": "summarizer",
                "model": summarizer.name,
                "device": summarizer.device,
                "load_s": round(load_s, 2),
                "batch_size": b,
                "max_new_tokens": max_new_tokens,
                "conversations": n,
                "seconds": round(seconds, 2),
                "summaries_per_s": round(n / seconds, 3),
                "output_tokens_per_s": round(tokens / seconds, 1),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def measure_embedder(device: str) -> list[dict[str, Any]]:
    embedder = Embedder(None, device=device, batch_size=64)
    texts = [
        f"The conversation was about {t}; the assistant said to {a}. (note {i})"
        for i, (t, a) in enumerate(TOPICS * 256)
    ]
    embedder.embed(texts[:64])  # warm-up
    rows = []
    for per_call, count in ((1, 200), (64, len(texts))):
        started = time.perf_counter()
        for i in range(0, count, per_call):
            embedder.embed(texts[i : i + per_call])
        seconds = time.perf_counter() - started
        rows.append(
            {
                "part": "embedder",
                "model": embedder.name,
                "device": embedder.device,
                "texts_per_call": per_call,
                "texts": count,
                "texts_per_s": round(count / seconds, 1),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def _latencies(
    index: NamespaceIndex, queries: np.ndarray, where: dict[str, Any] | None = None
) -> list[float]:
    out = []
    for q in queries:
        started = time.perf_counter()
        index.query(q, 10, where)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _data(kind: str, n: int, queries: int, dimension: int, rng: np.random.Generator) -> tuple[Any, Any]:
    if kind == "random":
        return (
            normalized(rng.standard_normal((n, dimension), dtype=np.float32)),
            normalized(rng.standard_normal((queries, dimension), dtype=np.float32)),
        )
    centres = normalized(rng.standard_normal((2000, dimension), dtype=np.float32))

    def around(count: int) -> np.ndarray:
        noise = rng.standard_normal((count, dimension), dtype=np.float32) * 0.6 / np.sqrt(dimension)
        return normalized(centres[rng.integers(0, len(centres), count)] + noise)

    return around(n), around(queries)


def measure_queries(
    sizes: list[int], data: list[str], dimension: int = 384, queries: int = 500
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for kind_of_data, n in ((d, n) for d in data for n in sizes):
        vectors, probes = _data(kind_of_data, n, queries, dimension, rng)
        ids = [f"v{i}" for i in range(n)]
        metadata = [{"bucket": i % 100} for i in range(n)]
        exact_answers = None
        approximate = IndexParams(approximate_above=min(n - 1, 50_000), background=False)
        for kind, params in (("flat", IndexParams(approximate_above=n + 1)), ("ivf", approximate)):
            index = NamespaceIndex(dimension, params)
            started = time.perf_counter()
            for i in range(0, n, 10_000):  # as upserts arrive, in chunks
                index.upsert(ids[i : i + 10_000], vectors[i : i + 10_000], metadata[i : i + 10_000])
            build_s = time.perf_counter() - started
            assert index.kind == kind
            latencies = _latencies(index, probes)
            answers = [[m.id for m in index.query(q, 10)] for q in probes[:100]]
            if exact_answers is None:
                exact_answers = answers
            recall = statistics.mean(
                len(set(a) & set(e)) / 10 for a, e in zip(answers, exact_answers, strict=True)
            )
            filtered = _latencies(index, probes[:200], {"bucket": 7})
            rows.append(
                {
                    "part": "query",
                    "data": kind_of_data,
                    "vectors": n,
                    "dimension": dimension,
                    "index": kind,
                    "build_s": round(build_s, 2),
                    "p50_ms": round(statistics.median(latencies), 3),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                    "recall_at_10": round(recall, 3),
                    "filter_1pct_p50_ms": round(statistics.median(filtered), 3),
                }
            )
            print(json.dumps(rows[-1]))
            del index
    return rows


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_T0 = 1_700_000_000_000  # the first turn's created_at (epoch ms); one turn a second after it


def _resident_bytes() -> int:
    """This process's resident memory now (ru_maxrss is only its peak)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _percentiles(latencies: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": round(statistics.median(latencies), 2),
        f"{prefix}_p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


def _hybrid(store: MemoryStore, vector: np.ndarray, text: str, mode: str = "hybrid") -> float:
    op = QueryVectors("org", SESSION_MEMORY, None if mode == "lexical" else vector, 10, None, text, mode)  # type: ignore[arg-type]
    started = time.perf_counter()
    store.apply_batch([op])
    return (time.perf_counter() - started) * 1000


def _queries(
    store: MemoryStore,
    turns: NamespaceIndex,
    vectors: np.ndarray,
    probes: np.ndarray,
    texts: list[str],
    prefix: str,
) -> dict[str, Any]:
    """Query latency by mode, and recall@10 of the turns' dense search against exact search."""
    row: dict[str, Any] = {f"{prefix}lists": getattr(turns._vectors.index, "nlist", 0)}
    for mode in ("hybrid", "dense", "lexical"):
        latencies = [_hybrid(store, v, t, mode) for v, t in zip(probes, texts, strict=True)]
        row |= _percentiles(latencies, prefix + mode)
    found = [{turns.entry(i)[0] for i, _ in turns.dense(v, 10)} for v in probes[:100]]  # type: ignore[index]
    exact = [{f"s{j // 20}#{j % 20 + 1}" for j in np.argsort(-(vectors @ v))[:10]} for v in probes[:100]]
    recall = statistics.mean(len(f & e) / 10 for f, e in zip(found, exact, strict=True))
    return row | {f"{prefix}dense_recall_at_10": round(recall, 3)}


VOCABULARY = np.array([f"w{i}" for i in range(30_000)])  # session memory's words, drawn by a Zipf law


def question_texts(count: int, rng: np.random.Generator) -> list[str]:
    """Questions of 6 words drawn as the turns' words are."""
    return [" ".join(VOCABULARY[np.minimum(rng.zipf(1.3, 6), len(VOCABULARY)) - 1]) for _ in range(count)]


def session_memory_batches(
    org: str, vectors: np.ndarray, rng: np.random.Generator, chunk: int = 10_000
) -> Iterator[list[UpsertVectors]]:
    """Session memory as the closing job writes it, `chunk` turns at a time: the turns (one per
    vector, in sessions of 20, texts of 12 words) and the whole-session entry of each session the
    chunk touches (its first turn's vector and text), each with the metadata the engine writes."""
    n = len(vectors)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        words = VOCABULARY[np.minimum(rng.zipf(1.3, (end - start, 12)), len(VOCABULARY)) - 1]
        texts = tuple(" ".join(row) for row in words)
        ids = tuple(f"s{i // 20}#{i % 20 + 1}" for i in range(start, end))
        metadata = tuple({"session_id": f"s{i // 20}", "kind": "turn", "seq": i % 20 + 1, "role": "user",
                          "created_at": _T0 + i * 1000} for i in range(start, end))  # fmt: skip
        sessions = sorted({i // 20 for i in range(start, end)})
        whole = normalized(vectors[[min(s * 20, n - 1) for s in sessions]])
        yield [
            UpsertVectors(org, SESSION_MEMORY, ids, vectors[start:end], metadata, texts=texts),
            UpsertVectors(
                org, SESSIONS_OF_MEMORY, tuple(f"s{s}" for s in sessions), whole,
                tuple({"session_id": f"s{s}", "kind": "session", "name": f"chat {s}",
                       "created_at": _T0 + s * 20_000, "closed_at": _T0 + s * 20_000 + 19_000,
                       "message_count": 20, "status": "closed"} for s in sessions),
                texts=tuple(texts[(s * 20 - start) % len(texts)] for s in sessions),
            ),
        ]  # fmt: skip


def measure_session_memory(
    sizes: list[int], dimension: int = 384, queries: int = 300
) -> list[dict[str, Any]]:
    """Session memory of one organization on one memory shard, with `n` indexed turns in sessions
    of 20 (plus a whole-session entry each): build time (until the background builds are done),
    resident memory the engine's structures add (measured after the benchmark's own arrays are
    made), the latency of hybrid, dense and lexical queries (top 10 sessions) in the shard's own
    code, no HTTP; recall@10 of the turns' dense search against exact search on the same vectors;
    then a rebuild of the turns' index at full size, with hybrid queries answered while it runs.
    Texts are 12 words drawn from a 30,000-word vocabulary by a Zipf law, as words are in text;
    vectors are the `clustered` kind above; metadata as the closing job writes it."""
    rng = np.random.default_rng(1)
    rows = []
    for n in sizes:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        vectors, probes = _data("clustered", n, queries, dimension, rng)
        texts = question_texts(queries, rng)
        gc.collect()
        _LIBC.malloc_trim(0)
        resident = _resident_bytes()
        store = MemoryStore(IndexParams())
        started = time.perf_counter()
        for ops in session_memory_batches("org", vectors, rng):
            for op in ops:
                store.apply_batch([op])
            store.take_journal()
        written_s = time.perf_counter() - started
        turns = dict(store.namespaces())[("org", SESSION_MEMORY)]
        for _, index in store.namespaces():
            index.wait_for_build()
        build_s = time.perf_counter() - started
        gc.collect()
        _LIBC.malloc_trim(0)  # give back what the build freed, so what stays resident is what is held
        engine_bytes = _resident_bytes() - resident
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        row: dict[str, Any] = {
            "part": "session-memory",
            "turns": n,
            "sessions": n // 20,
            "index": turns.kind,
            "written_s": round(written_s, 1),
            "build_s": round(build_s, 1),
            "max_rss_growth_mib": round(grown_mib),
            "engine_mib": round(engine_bytes / 2**20),
            "engine_bytes_per_turn": round(engine_bytes / n),
            "faiss_bytes_per_turn": round(len(turns.to_parts()[1]) / n),
        }
        row |= _queries(store, turns, vectors, probes, texts, "")
        started = time.perf_counter()
        parts = [index.to_parts() for _, index in store.namespaces()]  # what a snapshot's pause does
        row["snapshot_pause_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        for header, _ in parts:  # what the snapshot's writer does before it writes, off the shard's thread
            records_of(header)
        row["snapshot_records_s"] = round(time.perf_counter() - started, 2)
        del parts
        started = time.perf_counter()
        turns.rebuild(background=True)
        during: list[float] = []
        while turns.building:
            v, t = probes[len(during) % queries], texts[len(during) % queries]
            during.append(_hybrid(store, v, t))
        row["rebuild_s"] = round(time.perf_counter() - started, 1)
        row["queries_during_rebuild"] = len(during)
        if during:
            row |= _percentiles(during, "hybrid_during_rebuild")
        row |= _queries(store, turns, vectors, probes, texts, "rebuilt_")
        rows.append(row)
        print(json.dumps(row))
        del store, turns
    return rows


HTTP_ORG = "bench"  # the organization the served data is written for, and the API key's
HTTP_KEY = "sk-memory-bench"


def write_session_memory(
    data_dir: Path, n: int, org: str, dimension: int = 384, queries: int = 300, seed: int = 1
) -> tuple[np.ndarray, list[str]]:
    """A data directory whose memory shard holds `org`'s session memory of `n` turns, written
    offline by the shard's own durable code (DurableMemory, at the directory and under the
    identity the served engine's shard opens, for the default config's shard counts), ending in a
    snapshot so the server recovers from it rather than replay the log. The data are
    measure_session_memory's; returns that run's question vectors and texts."""
    rng = np.random.default_rng(seed)
    vectors, probes = _data("clustered", n, queries, dimension, rng)
    texts = question_texts(queries, rng)
    config = load_config(None)
    cluster_id = claim_layout(data_dir, config.shards, config.memory.shards)
    index = memory_shard_for(org, config.memory.shards)
    durable = DurableMemory(
        memory_directory(data_dir, index),
        config.durability.model_copy(update={"fsync": "never"}),  # the snapshot at the end is synced
        IndexParams(**config.memory.index.model_dump()),
        identity=ShardIdentity(cluster_id, "memory", index),
    )
    try:
        for ops in session_memory_batches(org, vectors, rng):
            failed = [r for r in durable.commit(ops) if isinstance(r, EngineError)]
            if failed:
                raise failed[0]
        for _, namespace in durable.store.namespaces():
            namespace.wait_for_build()
        durable.snapshot_now()
    finally:
        durable.close(snapshot=False)
    return probes, texts


def _query_plan(body: list[dict[str, Any]]) -> list[Request]:
    return [Request("POST", "/vectors/query", orjson.dumps(b)) for b in body]


def measure_served_memory(sizes: list[int], seconds: float, connections: int = 8) -> list[dict[str, Any]]:
    """Session memory through HTTP: for each size, a data directory written by
    write_session_memory, a real server started on it (the default config, its own Ray), then
    `POST /vectors/query` in `session-memory` at `connections` connections for `seconds` each
    (wrk, 127.0.0.1): hybrid with `query_text` (the server embeds it), dense with a precomputed
    `vector` (the API takes one or the other, and hybrid needs the text), lexical with the text."""
    generator = "wrk" if ensure_wrk() else "python"
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="memory-http-") as tmp:
            data_dir = Path(tmp) / "data"
            started = time.perf_counter()
            probes, texts = write_session_memory(data_dir, n, HTTP_ORG)
            written_s = time.perf_counter() - started
            gc.collect()
            _LIBC.malloc_trim(0)
            env = {
                "SESSION_ENGINE_API_KEYS": f"{HTTP_KEY}={HTTP_ORG}",
                "SESSION_ENGINE_MODELS__SUMMARIZER__PATH": str(default_summarizer()),
            }
            started = time.perf_counter()
            server = ServerProcess(data_dir, [], env).wait_ready(1800)
            row: dict[str, Any] = {
                "part": "session-memory-http",
                "turns": n,
                "connections": connections,
                "generator": generator,
                "written_s": round(written_s, 1),
                "ready_s": round(time.perf_counter() - started, 1),
            }
            try:
                base = {"namespace": SESSION_MEMORY, "top_k": 10}
                plans = {
                    "hybrid_text": [base | {"mode": "hybrid", "query_text": t} for t in texts],
                    "dense_vector": [base | {"mode": "dense", "vector": v.round(5).tolist()} for v in probes],
                    "lexical_text": [base | {"mode": "lexical", "query_text": t} for t in texts],
                }
                answer = httpx.post(
                    f"{server.url}/vectors/query",
                    json=plans["hybrid_text"][0],
                    headers={"Authorization": f"Bearer {HTTP_KEY}"},
                    timeout=60,
                )
                row["first_answer_count"] = answer.raise_for_status().json()["count"]  # the data is there
                for name, bodies in plans.items():
                    plan = _query_plan(bodies)
                    load.run(generator, server.url, HTTP_KEY, plan[:20], load.Load(connections, 2), Path(tmp))
                    result = load.run(
                        generator, server.url, HTTP_KEY, plan, load.Load(connections, seconds), Path(tmp)
                    )
                    row[name] = {k: result[k] for k in ("requests", "requests_per_s", "errors", "p50_ms",
                                                        "p90_ms", "p99_ms", "max_ms")}  # fmt: skip
                    row[name]["load_after"] = [round(x, 2) for x in os.getloadavg()]
            finally:
                server.stop()
        rows.append(row)
        print(json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--vectors", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--data", nargs="+", default=["clustered", "random"], choices=["clustered", "random"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", type=Path, default=None, help="where the GGUF conversion is cached")
    parser.add_argument(
        "--session-turns", type=int, nargs="+", default=[100_000], help="indexed turns in session memory"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["summarizer", "embedder", "query", "session-memory", "session-memory-http"],
    )
    parser.add_argument(
        "--http-turns",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="indexed turns in served session memory (the first is the baseline)",
    )
    parser.add_argument("--http-seconds", type=float, default=20.0, help="per query kind and size")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": describe(machine()), "when": time.strftime("%Y-%m-%d"), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        if "summarizer" not in args.skip:
            report["rows"] += measure_summarizer(
                args.conversations, args.batch_sizes, args.device, models_dir
            )
    if "embedder" not in args.skip:
        report["rows"] += measure_embedder(args.device)
    if "query" not in args.skip:
        report["rows"] += measure_queries(args.vectors, args.data)
    if "session-memory" not in args.skip:
        report["rows"] += measure_session_memory(args.session_turns)
    if "session-memory-http" not in args.skip:
        report["rows"] += measure_served_memory(args.http_turns, args.http_seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {report['machine']}")


if __name__ == "__main__":
    main()
