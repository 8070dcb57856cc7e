"""How session memory's fusion weights were chosen, reproducibly.

    python -m benchmarks.fusion [--personas 4] [--sessions 24] [--tune-seeds 7 11] [--check-seed 23]

For each seed, the recall corpus (benchmarks/conversations.py) is indexed in this process the
engine's way (engine.closing.indexing into a MemoryStore, the default embedder, extractive
summaries as the summary signal: the default model's are set aside on this corpus,
benchmarks/summaries.py), and each question's six rankings of sessions are taken once
(engine.memory.sessions.signals). Then:
- every weight vector on a grid (dense turns fixed at 1; each other signal 0, 0.25, 0.5 or 1) is
  scored by recall@5 (MRR breaking ties), fused the engine's way (engine.memory.fusion: min-max
  scaled scores, weighted sum) and by reciprocal rank fusion (k = 5 and 60) for comparison;
- the best few by their mean over the tuning seeds are shown with their recall on the check
  seed, which took no part in choosing; and the engine's weights (engine.memory.sessions.WEIGHTS)
  beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.conversations import Corpus, Question, generate
from engine.closing.indexing import index_session, index_summary
from engine.closing.quality import extractive
from engine.memory import sessions
from engine.memory.fusion import fuse
from engine.memory.index import IndexParams
from engine.memory.ops import MemoryOp
from engine.memory.store import MemoryStore
from engine.models.embedder import Embedder
from engine.models.summarizer import Conversation, Summary

GRID = (0.0, 0.25, 0.5, 1.0)
OTHERS = [name for name in sessions.WEIGHTS if name != "turn_dense"]
Rankings = dict[str, list[tuple[str, float]]]


def indexed(embedder: Any, corpus: Corpus) -> sessions.SessionIndexes:
    """The corpus's session memory, built in this process the engine's way (engine.closing.indexing
    into a MemoryStore), with extractive summaries as the summary signal."""
    store = MemoryStore(IndexParams())

    class Ports:  # what a closing job calls (engine.closing.ports), in this process
        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            vectors: np.ndarray = embedder.embed(texts)
            return vectors

        async def index(self, org: str, ops: Sequence[MemoryOp]) -> list[Any]:
            results = store.apply_batch(list(ops))
            store.take_journal()
            return results

        async def summarize(self, conversation: Conversation) -> Summary:
            raise NotImplementedError("the summaries here are extractive")

    ports = Ports()

    async def load() -> None:
        for s in corpus.sessions:
            await index_session(ports, "org", sessions.ClosedSession(s.key, s.name, 0, 1, s.messages))
            summary = extractive([content for _, content in s.messages])
            await index_summary(ports, "org", s.key, summary, "extractive")

    asyncio.run(load())
    namespaces = dict(store.namespaces())
    store.apply_batch([])  # commits the texts written so far
    return sessions.SessionIndexes(
        namespaces[("org", sessions.SESSION_MEMORY)], namespaces[("org", sessions.SESSIONS_OF_MEMORY)]
    )


def rankings_of(embedder: Any, personas: int, per_persona: int, seed: int) -> list[tuple[Question, Rankings]]:
    corpus = generate(personas, per_persona, seed=seed)
    indexes = indexed(embedder, corpus)
    vectors = embedder.embed([q.text for q in corpus.questions])
    return [
        (q, sessions.signals(indexes, v, q.text, 10).rankings)
        for q, v in zip(corpus.questions, vectors, strict=True)
    ]


def rrf(k: int) -> Callable[[Rankings, Mapping[str, float]], list[tuple[str, float]]]:
    """Reciprocal rank fusion (Cormack, Clarke and Büttcher 2009), the comparison."""

    def fused(rankings: Rankings, weights: Mapping[str, float]) -> list[tuple[str, float]]:
        scores: dict[str, float] = {}
        for name, ranking in rankings.items():
            for rank, (item, _) in enumerate(dict.fromkeys(i for i, _ in ranking).items(), start=1):
                scores[item] = scores.get(item, 0.0) + weights.get(name, 0.0) / (k + rank)
        return sorted(scores.items(), key=lambda pair: -pair[1])

    return fused


def score(
    data: list[tuple[Question, Rankings]], weights: Mapping[str, float], method: Any
) -> tuple[float, float]:
    hits, reciprocal = [], []
    for question, rankings in data:
        ids = [item for item, _ in method(rankings, weights)[:10]]
        hits.append(bool(set(ids[:5]) & set(question.evidence)))
        rank = next((i for i, sid in enumerate(ids, start=1) if sid in question.evidence), None)
        reciprocal.append(1 / rank if rank else 0.0)
    return round(statistics.fmean(hits), 3), round(statistics.fmean(reciprocal), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--check-seed", type=int, default=23)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args(argv)

    embedder = Embedder(None)
    tuning = [rankings_of(embedder, args.personas, args.sessions, seed) for seed in args.tune_seeds]
    check = rankings_of(embedder, args.personas, args.sessions, args.check_seed)
    methods = {"score fusion (engine)": fuse, "rrf k=5": rrf(5), "rrf k=60": rrf(60)}
    for name, method in methods.items():
        tried = []
        for combo in itertools.product(GRID, repeat=len(OTHERS)):
            weights = {"turn_dense": 1.0, **dict(zip(OTHERS, combo, strict=True))}
            per_seed = [score(data, weights, method) for data in tuning]
            mean = tuple(round(statistics.fmean(x), 3) for x in zip(*per_seed, strict=True))
            tried.append((mean, per_seed, weights))
        tried.sort(key=lambda row: (-row[0][0], -row[0][1]))
        print(f"\n{name}: best by mean recall@5 over seeds {args.tune_seeds}, then seed {args.check_seed}")
        for mean, per_seed, weights in tried[: args.show]:
            shown = {k: v for k, v in weights.items() if v}
            row = {"mean": mean, "tuning": per_seed, "check": score(check, weights, method), "weights": shown}
            print(json.dumps(row))
    engine = dict(sessions.WEIGHTS)
    print("\nthe engine's weights:", json.dumps({k: v for k, v in engine.items() if v}))
    for data, seed in [*zip(tuning, args.tune_seeds, strict=True), (check, args.check_seed)]:
        print(f"  seed {seed}: recall@5, MRR", score(data, engine, fuse), "| dense turns alone",
              score(data, {"turn_dense": 1.0}, fuse))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
