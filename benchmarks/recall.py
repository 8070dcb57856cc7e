"""Does session memory find the right prior conversation? Recall, end to end over HTTP.

    python -m benchmarks.recall [--corpus assistant|dialogues] [--half 0|1] [--personas 4]
                                [--sessions 24] [--seed 7] [--summarizer DIR]
                                [--url URL --api-key KEY] [--out FILE]

A real server (started here on the default models, or --url) gets every session of a generated
corpus: created, filled and closed through the API. Then each question is a query on
`session-memory`, and a hit is an evidence session among the top k. Two corpora:
- `assistant` (the default; benchmarks/conversations.py): personas talking to an assistant,
  planted facts, paraphrased questions with their evidence session;
- `dialogues` (benchmarks/dialogues.py): pairs of friends chatting over dated sessions, life
  events, questions in styles (quote, paraphrase, when, multi), from the sentence banks' `--half`
  (0 tuned on, 1 held out); `--personas` is the number of pairs.
Every method is also scored per question style (`by_style`; the assistant corpus's questions are
all paraphrases).

In the same run, through the same server and embedder, the baselines:
- `bm25 transcripts`: one entry per session with the whole transcript, lexical mode (BM25);
- `dense transcript`: the same entries, dense mode (the embedder reads the transcript's start);
- `dense turns`: one entry per raw message, dense, sessions ranked by their best message;
- `dense summary`: one entry per session with the engine's own summary, dense (what session
  memory did before it indexed turns);
- `random`: sessions in a seeded random order.

It also reports each match's `relevance` (engine.memory.relevance): of the evidence session and
of the other matches for the corpus's questions, and of the best match for questions no session
answers (benchmarks.conversations.unrelated_questions), with what `min_relevance` at the
recommended threshold keeps of each; and the engine's ranking of every question (sessions by
their corpus key), so two runs can be compared for the same order. It also reports how fast
sessions become searchable (close to index_status ready: for the
whole corpus closed at once, and for one session closed alone afterwards), indexing throughput,
how summaries were made (model or extractive, and how many the degeneracy detector flags), and
query latency p50/p99 of the engine's hybrid query at one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from benchmarks import dialogues
from benchmarks.conversations import UNRELATED_KINDS, Corpus, generate, unrelated_questions
from benchmarks.server import ServerProcess
from benchmarks.stamp import describe, machine
from engine.closing.quality import degeneracy
from engine.memory.relevance import RECOMMENDED_MIN_RELEVANCE

HERE = Path(__file__).resolve().parent
KEY, ORG = "recall-key", "recall"
KS = (1, 5, 10)
CONCURRENCY = 8


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        self.gate = asyncio.Semaphore(CONCURRENCY)

    async def call(self, method: str, path: str, body: Any = None, ok: int = 200) -> Any:
        async with self.gate:
            response = await self.http.request(method, path, json=body)
        if response.status_code != ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None


async def load(client: Client, corpus: Corpus) -> dict[str, str]:
    """Every session created, filled and closed, persona by persona in time order; key -> id."""
    ids: dict[str, str] = {}

    async def one(session: Any) -> None:
        created = await client.call("POST", "/sessions", {"name": session.name}, 201)
        sid = created["id"]
        messages = [{"role": role, "content": content} for role, content in session.messages]
        await client.call("POST", f"/sessions/{sid}/messages", {"messages": messages}, 201)
        await client.call("POST", f"/sessions/{sid}/close")
        ids[session.key] = sid

    for index in range(max(s.index for s in corpus.sessions) + 1):
        await asyncio.gather(*(one(s) for s in corpus.sessions if s.index == index))
    return ids


async def closed_sessions(client: Client) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        page = await client.call(
            "GET", "/sessions?status=closed&limit=100" + (f"&cursor={cursor}" if cursor else "")
        )
        out += page["sessions"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


async def wait_for(
    client: Client, done: Callable[[dict[str, Any]], bool], count: int, timeout_s: float
) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        sessions = await closed_sessions(client)
        if sum(done(s) for s in sessions) >= count or time.monotonic() > deadline:
            return sessions
        await asyncio.sleep(0.5)


async def upsert(client: Client, namespace: str, rows: list[dict[str, Any]]) -> None:
    await asyncio.gather(
        *(
            client.call("POST", "/vectors/upsert", {"namespace": namespace, "vectors": rows[i : i + 100]})
            for i in range(0, len(rows), 100)
        )
    )


async def query(
    client: Client, namespace: str, text: str, mode: str, top_k: int = 10
) -> list[dict[str, Any]]:
    body = {"namespace": namespace, "query_text": text, "mode": mode, "top_k": top_k}
    return list((await client.call("POST", "/vectors/query", body))["matches"])


def sessions_of(matches: Sequence[dict[str, Any]], top_k: int = 10) -> list[str]:
    """Session ids by their best entry, first seen first."""
    out: list[str] = []
    for match in matches:
        sid = match["metadata"].get("session_id", match["id"])
        if sid not in out:
            out.append(sid)
    return out[:top_k]


def scores(ranked: dict[str, list[str]], evidence: dict[str, set[str]]) -> dict[str, float]:
    """recall@k (an evidence session in the top k) and MRR over the top 10."""
    out: dict[str, float] = {}
    for k in KS:
        out[f"recall@{k}"] = statistics.fmean(bool(set(ranked[q][:k]) & evidence[q]) for q in ranked)
    reciprocal = []
    for q, ids in ranked.items():
        rank = next((i for i, sid in enumerate(ids[:10], start=1) if sid in evidence[q]), None)
        reciprocal.append(1 / rank if rank else 0.0)
    out["mrr"] = statistics.fmean(reciprocal)
    return {name: round(value, 3) for name, value in out.items()}


async def measure(url: str, key: str, corpus: Corpus, summary_timeout_s: float, seed: int) -> dict[str, Any]:
    client = Client(url, key)
    started = time.perf_counter()
    ids = await load(client, corpus)
    loaded_s = time.perf_counter() - started
    count = len(ids)
    indexed = await wait_for(
        client, lambda s: s["index_status"] in ("ready", "failed"), count, summary_timeout_s
    )
    summarized = await wait_for(
        client, lambda s: s["summary_status"] in ("ready", "failed"), count, summary_timeout_s
    )
    by_id = {s["id"]: s for s in summarized}
    lags = sorted(s["indexed_at"] - s["ended_at"] for s in indexed if s.get("indexed_at"))
    turns = sum(len([m for m in s.messages if m[0] in ("user", "assistant")]) for s in corpus.sessions)
    span_ms = max(s["indexed_at"] for s in indexed if s.get("indexed_at")) - min(
        s["ended_at"] for s in indexed
    )
    summaries = [s for s in by_id.values() if s["summary_status"] == "ready"]
    methods = [s["summary_provenance"]["method"] for s in summaries]
    flagged = [degeneracy(s["summary"]) for s in summaries]

    sessions = {s.key: s for s in corpus.sessions}
    await upsert(
        client,
        "baseline-transcripts",
        [
            {
                "id": sid,
                "text": "\n".join(f"{role}: {content}" for role, content in sessions[k].messages),
                "metadata": {"session_id": sid},
            }
            for k, sid in ids.items()
        ],
    )
    await upsert(
        client,
        "baseline-turns",
        [
            {"id": f"{sid}#{seq}", "text": content, "metadata": {"session_id": sid}}
            for k, sid in ids.items()
            for seq, (role, content) in enumerate(sessions[k].messages, start=1)
            if role in ("user", "assistant")
        ],
    )
    await upsert(
        client,
        "baseline-summaries",
        [{"id": s["id"], "text": s["summary"], "metadata": {"session_id": s["id"]}} for s in summaries],
    )

    questions = {q.text: q for q in corpus.questions}
    evidence = {text: {ids[k] for k in q.evidence} for text, q in questions.items()}
    methods_ranked: dict[str, dict[str, list[str]]] = {}
    answers: dict[str, list[dict[str, Any]]] = {}
    latencies: list[float] = []
    for text in questions:  # one connection, one query at a time: latency without queueing
        t0 = time.perf_counter()
        answers[text] = await query(client, "session-memory", text, "hybrid")
        latencies.append((time.perf_counter() - t0) * 1000)
        methods_ranked.setdefault("engine (hybrid)", {})[text] = [m["id"] for m in answers[text]]
    unrelated = [q for half in (0, 1) for q in unrelated_questions(corpus, seed, half)]
    found_unrelated = await asyncio.gather(
        *(query(client, "session-memory", q.text, "hybrid") for q in unrelated)
    )
    plan = {
        "engine dense": ("session-memory", "dense", 10),
        "engine lexical": ("session-memory", "lexical", 10),
        "bm25 transcripts": ("baseline-transcripts", "lexical", 10),
        "dense transcript": ("baseline-transcripts", "dense", 10),
        "dense turns": ("baseline-turns", "dense", 100),
        "dense summary": ("baseline-summaries", "dense", 10),
    }
    for name, (namespace, mode, depth) in plan.items():
        found = await asyncio.gather(*(query(client, namespace, text, mode, depth) for text in questions))
        methods_ranked[name] = {text: sessions_of(m) for text, m in zip(questions, found, strict=True)}
    shuffler = random.Random(seed)
    every = list(ids.values())
    methods_ranked["random"] = {text: shuffler.sample(every, min(10, len(every))) for text in questions}
    idle_lag_ms = await lag_when_idle(client, corpus.sessions[0])  # last: it adds a session
    await client.http.aclose()

    results = {name: scores(ranked, evidence) for name, ranked in methods_ranked.items()}
    key_of = {sid: key for key, sid in ids.items()}
    engine_ranking = {
        text: [key_of.get(sid, sid) for sid in ranked]
        for text, ranked in methods_ranked["engine (hybrid)"].items()
    }
    best_baseline = max(
        (name for name in results if not name.startswith("engine")), key=lambda n: results[n]["recall@5"]
    )
    per_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({q.kind for q in corpus.questions}):
        subset = {t for t, q in questions.items() if q.kind == kind}
        per_kind[kind] = {
            name: scores({t: r for t, r in ranked.items() if t in subset}, evidence)["recall@5"]
            for name, ranked in methods_ranked.items()
            if name in ("engine (hybrid)", best_baseline)
        }
    by_style: dict[str, dict[str, dict[str, float]]] = {}
    for style in sorted({q.style or "paraphrase" for q in corpus.questions}):
        subset = {t for t, q in questions.items() if (q.style or "paraphrase") == style}
        by_style[style] = {
            name: scores({t: r for t, r in ranked.items() if t in subset}, evidence)
            for name, ranked in methods_ranked.items()
        }
    return {
        "sessions": count,
        "questions": len(questions),
        "turns_indexed": turns,
        "load_s": round(loaded_s, 1),
        "methods": results,
        "best_baseline": best_baseline,
        "engine_minus_best_baseline_recall@5": round(
            results["engine (hybrid)"]["recall@5"] - results[best_baseline]["recall@5"], 3
        ),
        "recall@5_by_kind": per_kind,
        "by_style": by_style,
        "searchable_lag_ms": {
            "p50": _pct(lags, 50),
            "p99": _pct(lags, 99),
            "max": lags[-1] if lags else None,
        },
        "searchable_lag_idle_ms": idle_lag_ms,
        "indexing_turns_per_s": round(turns / max(span_ms / 1000, 1e-3), 1),
        "summaries": {
            "ready": len(summaries),
            "failed": sum(1 for s in by_id.values() if s["summary_status"] == "failed"),
            "model": methods.count("model"),
            "extractive": methods.count("extractive"),
            "fallback_reasons": _count(s["summary_provenance"].get("reason") for s in summaries),
            "degenerate_after_fallback": sum(1 for f in flagged if f),
        },
        "query_ms": {"p50": _pct(sorted(latencies), 50), "p99": _pct(sorted(latencies), 99)},
        "relevance": relevance_report(answers, evidence, unrelated, found_unrelated),
        "engine_ranking": engine_ranking,
    }


def relevance_report(
    answers: dict[str, list[dict[str, Any]]],
    evidence: dict[str, set[str]],
    unrelated: Sequence[Any],
    found_unrelated: Sequence[list[dict[str, Any]]],
) -> dict[str, Any] | None:
    """Each match's relevance: of the evidence session (where it is in the top 10) and of the other
    matches of the corpus's questions, and of the best match of each kind of unrelated question;
    with the share that the recommended min_relevance keeps. None: the engine gives none."""
    if not any("relevance" in m for matches in answers.values() for m in matches):
        return None
    threshold = RECOMMENDED_MIN_RELEVANCE
    groups: dict[str, list[float]] = {"evidence": [], "other matches": []}
    for text, matches in answers.items():
        for m in matches:
            groups["evidence" if m["id"] in evidence[text] else "other matches"].append(m["relevance"])
    for kind in UNRELATED_KINDS:
        groups[f"best match, {kind}"] = [
            found[0]["relevance"]
            for q, found in zip(unrelated, found_unrelated, strict=True)
            if q.kind == kind and found
        ]
    return {
        "min_relevance": threshold,
        **{name: _spread(values, threshold) for name, values in groups.items()},
    }


def _spread(values: Sequence[float], threshold: float) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        **{f"p{p}": _pct(ordered, p, 3) for p in (5, 25, 50, 75, 95)},
        "kept": round(sum(v >= threshold for v in ordered) / max(len(ordered), 1), 3),
    }


async def lag_when_idle(client: Client, session: Any, timeout_s: float = 120) -> int | None:
    """Close to searchable for one session closed alone, with nothing else to index or summarize."""
    sid = (await client.call("POST", "/sessions", {"name": session.name}, 201))["id"]
    messages = [{"role": role, "content": content} for role, content in session.messages]
    await client.call("POST", f"/sessions/{sid}/messages", {"messages": messages}, 201)
    await client.call("POST", f"/sessions/{sid}/close")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = await client.call("GET", f"/sessions/{sid}?limit=1")
        if view["indexed_at"] is not None:
            return int(view["indexed_at"] - view["ended_at"])
        await asyncio.sleep(0.02)
    return None


def _pct(values: Sequence[float], p: float, digits: int = 1) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))], digits)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        if value:
            out[value] = out.get(value, 0) + 1
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.corpus == "dialogues":
        corpus = dialogues.generate(args.personas, args.sessions, seed=args.seed, half=args.half)
    else:
        corpus = generate(args.personas, args.sessions, seed=args.seed)
    if args.url:
        result = asyncio.run(measure(args.url, args.api_key, corpus, args.timeout, args.seed))
    else:
        env = {"SESSION_ENGINE_API_KEYS": f"{KEY}={ORG}"}
        if args.summarizer:
            env["SESSION_ENGINE_MODELS__SUMMARIZER__PATH"] = str(args.summarizer)
        with tempfile.TemporaryDirectory(prefix="recall-") as work:
            server = ServerProcess(Path(work) / "data", [], env).wait_ready(900)
            try:
                result = asyncio.run(measure(server.url, KEY, corpus, args.timeout, args.seed))
            finally:
                server.stop()
    result["machine"] = describe(machine())
    chosen = [("corpus", args.corpus), ("half", args.half), ("personas", args.personas)]
    chosen += [("sessions", args.sessions), ("seed", args.seed)]
    result["command"] = "python -m benchmarks.recall " + " ".join(f"--{k} {v}" for k, v in chosen)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", choices=("assistant", "dialogues"), default="assistant")
    parser.add_argument(
        "--half", type=int, choices=(0, 1), default=0, help="dialogues: the sentence banks' half"
    )
    parser.add_argument("--personas", type=int, default=4, help="personas, or pairs of friends")
    parser.add_argument("--sessions", type=int, default=24, help="sessions per persona")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--summarizer", type=Path, help="a local summarizer model directory (default: the engine's)"
    )
    parser.add_argument("--url", help="a running deployment instead of a server started here")
    parser.add_argument("--api-key", help="an API key of that deployment (with --url)")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait for indexing and summaries"
    )
    parser.add_argument("--out", type=Path, help="default: results/recall.json (recall-dialogues.json)")
    args = parser.parse_args(argv)
    if args.url and not args.api_key:
        parser.error("--url needs --api-key")
    if args.out is None:
        args.out = (
            HERE / "results" / ("recall.json" if args.corpus == "assistant" else "recall-dialogues.json")
        )
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    return 0


def _print(result: dict[str, Any]) -> None:
    table = Table(
        title=f"Session memory recall: {result['sessions']} sessions, {result['questions']} questions"
    )
    for column in ("method", *(f"recall@{k}" for k in KS), "MRR"):
        table.add_column(column)
    for name, row in result["methods"].items():
        table.add_row(name, *(f"{row[f'recall@{k}']:.2f}" for k in KS), f"{row['mrr']:.2f}")
    console = Console()
    console.print(table)
    for style, methods in result["by_style"].items():
        per_style = Table(title=f"{style} questions")
        for column in ("method", *(f"recall@{k}" for k in KS), "MRR"):
            per_style.add_column(column)
        for name, row in methods.items():
            per_style.add_row(name, *(f"{row[f'recall@{k}']:.2f}" for k in KS), f"{row['mrr']:.2f}")
        console.print(per_style)
    hidden = ("methods", "engine_ranking", "by_style")
    shown = {k: v for k, v in result.items() if k not in hidden}
    console.print_json(json.dumps(shown))


if __name__ == "__main__":
    raise SystemExit(main())
