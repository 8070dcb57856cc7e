"""How session memory's fusion was chosen, reproducibly: signals, normalisation and weights tuned
on one part of the data and reported on another, per question style, beside BM25 over transcripts.

    python -m benchmarks.fusion [--tune dialogues:0:7,11,13,17,19,41 assistant:0:7,11,13,17,19]
                                [--check dialogues:1:23,29,31,37,43,47 assistant:0:23,29,31]
                                [--norm engine minmax/spread ...] [--signals all|engine|NAME ...]
                                [--search ascent|grid] [--weights JSON] [--cases FILE] [--out FILE]

A data set is `corpus:half:seeds`: the corpus (`dialogues`, benchmarks/dialogues.py: friends
chatting over many sessions, questions in styles; `assistant`, benchmarks/conversations.py: a
persona and an assistant, paraphrased questions), the half of its sentence banks (dialogues only:
0 to tune on, 1 held out) and its seeds. Held-out data is half 1 with seeds not tuned on.

For each seed, the corpus is indexed in this process the engine's way (engine.closing.indexing
into a MemoryStore, the default embedder, extractive summaries as the summary signal) and each
question's rankings of sessions are taken once: the engine's seven (engine.memory.sessions.signals,
`window_dense` among them: the engine's own windows of turns) and candidate new ones computed here
from the same entries (see `EXTRA`):
- `bm25_transcripts`: BM25 over one text per session, "role: content" lines, no name: recall.py's
  baseline (an in-process engine.memory.lexical.LexicalIndex, as its namespace holds one);
- `window_lexical`: BM25 over each indexed turn with its neighbours (WINDOW on each side), under the
  session's name; a session by its best window;
- `*_q`: the engine's lexical signals for the query without question and stop words (STOP);
- `dense_turns`: one vector per raw turn, no name, sessions by their best turn (recall.py's
  `dense turns` baseline).
Then rankings of sessions are scored (recall@1/5/10, MRR; a hit at k is any evidence session in the
top k) per question style: the engine's weights as the engine fuses them (`engine`: its own scaling
of each signal, engine.memory.sessions.SCALES), BM25 over transcripts and dense turns alone (each in
its own order), and the weights the search finds on the tuning sets: coordinate ascent from the
engine's weights over GRID for each signal, or every weighting in SPACE (`--search grid`), fused
with each normalisation (`minmax` and `spread`: the engine's `range` and `spread`,
engine.memory.fusion; `engine`: each signal as the engine scales it; `max`: score / best; `z`:
z-score over the listed; `rrf`: 1 / (60 + rank); or "dense/lexical", one for each kind of signal).
An unlisted session scores as the worst listed (0 with the engine's scalings, as
engine.memory.fusion gives it). The objective is the mean over tuning sets and styles of (R@1 + R@5
+ MRR) / 3, less a penalty wherever BM25 over transcripts does better on a style of the dialogues
corpus, or the weighting falls more than TOLERANCE below the engine's weights on the assistant
corpus.

Embeddings are cached in --cache (a pickle keyed by text) and every question's rankings in
--cases, so a second run only fuses (delete the --cases file when a generator changes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pickle
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import conversations, dialogues
from benchmarks.conversations import Corpus, Question
from engine.closing.indexing import index_session, index_summary
from engine.closing.quality import extractive
from engine.memory import sessions
from engine.memory.fusion import Scale, fuse, scaled
from engine.memory.index import IndexParams
from engine.memory.lexical import LexicalIndex
from engine.memory.ops import MemoryOp
from engine.memory.store import MemoryStore
from engine.models.summarizer import Conversation, Summary

GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
KS = (1, 5, 10)
DEPTH = 200  # how deep each extra signal looks, as the engine's turn signals do for top_k 10
WINDOW = 1  # neighbours on each side of a turn in a window
NORMS = ("engine", "minmax", "max", "z", "rrf")
ENGINE_NORMS: Mapping[Scale, str] = {
    "range": "minmax",
    "spread": "spread",
}  # engine.memory.fusion's scalings, here
# Question words and the commonest function words: they match every session a little.
_STOP_WORDS = (
    "a an and are as at be by can could did do does for from had has have how i in is it its me my "
    "of on or so than that the their them then there these they this to was we were what when where "
    "which who whom whose why will with would you your"
)
STOP = frozenset(_STOP_WORDS.split())
EXTRA = ("bm25_transcripts", "window_lexical", "turn_lexical_q", "session_lexical_q", "summary_lexical_q",
         "dense_turns")  # fmt: skip
Rankings = dict[str, list[tuple[str, float]]]


@dataclass
class Case:
    question: Question
    rankings: Rankings


class CachedEmbedder:
    """The engine's embedder with its vectors kept by text (in memory, saved to `path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cache: dict[str, np.ndarray] = pickle.loads(path.read_bytes()) if path.exists() else {}
        self._model: Any = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            if self._model is None:
                # Imported when a vector is missing: a run whose vectors are all cached loads no model.
                from engine.models.embedder import Embedder

                self._model = Embedder(None)
            self.cache.update(zip(missing, self._model.embed(missing), strict=True))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def save(self) -> None:
        self.path.write_bytes(pickle.dumps(self.cache))


def corpus_of(name: str, seed: int, half: int) -> Corpus:
    if name == "dialogues":
        return dialogues.generate(seed=seed, half=half)
    return conversations.generate(4, 24, seed=seed)


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


def stripped(text: str) -> str:
    """The query without question and stop words (the whole query if nothing else is left)."""
    words = [w for w in re.findall(r"\w+", text) if w.lower() not in STOP]
    return " ".join(words) or text


def _best_per_session(hits: Iterable[tuple[int, float]], owner: Sequence[str]) -> list[tuple[str, float]]:
    out: dict[str, float] = {}
    for key, score in hits:
        out.setdefault(owner[key], score)
    return list(out.items())


def _top(matrix: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    scores = matrix @ query
    order = np.argsort(-scores)[:k]
    return [(int(i), float(scores[i])) for i in order]


class Extra:
    """The candidate signals computed here from a corpus's entries (see the module's docstring)."""

    def __init__(self, embedder: Any, corpus: Corpus) -> None:
        self.transcripts = LexicalIndex()
        self.transcripts.add(
            (i, "\n".join(f"{role}: {content}" for role, content in s.messages))
            for i, s in enumerate(corpus.sessions)
        )
        self.transcripts.commit()
        self.session_keys = [s.key for s in corpus.sessions]
        self.windows = LexicalIndex()
        self.window_owner: list[str] = []
        raw_texts: list[str] = []
        self.raw_owner: list[str] = []
        for s in corpus.sessions:
            closed = sessions.ClosedSession(s.key, s.name, 0, 1, s.messages)
            said = [sessions.said(t.text) for t in sessions.turn_entries(closed)]
            for i in range(len(said)):
                lo, hi = max(0, i - WINDOW), i + WINDOW + 1
                self.windows.add([(len(self.window_owner), "\n".join([s.name, *said[lo:hi]]))])
                self.window_owner.append(s.key)
            raw_texts += said
            self.raw_owner += [s.key] * len(said)
        self.windows.commit()
        self.raw_matrix = embedder.embed(raw_texts)

    def rankings(self, indexes: sessions.SessionIndexes, text: str, vector: np.ndarray) -> Rankings:
        out: Rankings = {
            "bm25_transcripts": _best_per_session(self.transcripts.search(text, DEPTH), self.session_keys),
            "window_lexical": _best_per_session(self.windows.search(text, DEPTH), self.window_owner),
            "dense_turns": _best_per_session(_top(self.raw_matrix, vector, 100), self.raw_owner),
        }
        lexical = sessions.signals(indexes, None, stripped(text), 10, mode="lexical").rankings
        out.update({f"{name}_q": ranking for name, ranking in lexical.items()})
        return out


def cases_of(embedder: Any, name: str, seed: int, half: int) -> tuple[list[Case], list[str]]:
    """Each question's rankings of sessions, every signal; and the corpus's session keys."""
    corpus = corpus_of(name, seed, half)
    indexes = indexed(embedder, corpus)
    extra = Extra(embedder, corpus)
    vectors = embedder.embed([q.text for q in corpus.questions])
    cases = []
    for q, v in zip(corpus.questions, vectors, strict=True):
        rankings = sessions.signals(indexes, v, q.text, 10).rankings
        rankings.update(extra.rankings(indexes, q.text, v))
        style = q.style or "paraphrase"  # the assistant corpus paraphrases every question
        cases.append(Case(Question(q.text, q.evidence, q.kind, style), rankings))
    return cases, [s.key for s in corpus.sessions]


# -- scoring every weighting at once ---------------------------------------------------------------


@dataclass
class Matrix:
    """A data set's normalised scores: scores[q, s, n] of question q, signal s, session n;
    listed[q, s, n]: whether signal s listed session n; evidence[q, n]."""

    names: list[str]
    scores: np.ndarray
    listed: np.ndarray
    evidence: np.ndarray
    styles: list[str]


def _normalised(ranking: Sequence[tuple[str, float]], norm: str) -> dict[str, float]:
    first = dict(reversed(ranking))  # an item's best (first) score
    first = {item: first[item] for item in dict.fromkeys(i for i, _ in ranking)}
    if not first:
        return {}
    if norm in ("minmax", "spread"):  # the engine's own scaling, not a copy of it
        scale = next(engine for engine, mine in ENGINE_NORMS.items() if mine == norm)
        return dict(zip(first, scaled(list(first.values()), scale), strict=True))
    values = np.array(list(first.values()), dtype=np.float64)
    if norm == "rrf":
        out = 1.0 / (60 + np.arange(1, len(values) + 1))
    elif norm == "max":
        out = values / values.max() if values.max() > 0 else np.ones_like(values)
    else:
        if norm != "z":
            raise ValueError(f"unknown normalisation {norm!r}")
        out = (values - values.mean()) / values.std() if values.std() > 0 else np.zeros_like(values)
    return dict(zip(first, out.tolist(), strict=True))


def _norm_of(name: str, norm: str) -> str:
    """A normalisation may be two, "dense/lexical": the first for dense signals, the second for
    lexical ones (BM25 scores); `engine` is the engine's own for its signals (SCALES) and
    minmax/spread for the others."""
    if norm == "engine":
        scale = sessions.SCALES.get(name)
        return ENGINE_NORMS[scale] if scale is not None else _norm_of(name, "minmax/spread")
    dense, _, lexical = norm.partition("/")
    return (lexical or dense) if "lexical" in name or "bm25" in name else dense


def matrix_of(cases: Sequence[Case], keys: Sequence[str], names: Sequence[str], norm: str) -> Matrix:
    column = {key: n for n, key in enumerate(keys)}
    scores = np.zeros((len(cases), len(names), len(keys)), dtype=np.float64)
    listed = np.zeros(scores.shape, dtype=bool)
    evidence = np.zeros((len(cases), len(keys)), dtype=bool)
    for q, case in enumerate(cases):
        for e in case.question.evidence:
            evidence[q, column[e]] = True
        for s, name in enumerate(names):
            how = _norm_of(name, norm)
            normalised = _normalised(case.rankings.get(name, []), how)
            if not normalised:
                continue
            # An unlisted session: as the worst listed, or as engine.memory.fusion has it (0: the
            # same below a spread, and no points where a flat ranking gives every listed one 1).
            scores[q, s, :] = 0.0 if how in ENGINE_NORMS.values() else min(normalised.values())
            for item, value in normalised.items():
                scores[q, s, column[item]] = value
                listed[q, s, column[item]] = True
    return Matrix(list(names), scores, listed, evidence, [c.question.style for c in cases])


def ranks(m: Matrix, weights: np.ndarray) -> np.ndarray:
    """The rank of each question's first evidence session (inf: not in the top 10), fused by
    `weights` (one per signal); a tie goes against the evidence."""
    fused = np.einsum("s,qsn->qn", weights, m.scores)
    candidate = (m.listed & (weights > 0)[None, :, None]).any(axis=1)
    found = m.evidence & candidate
    best = np.where(found, fused, -np.inf).max(axis=1)
    ahead = (candidate & ~m.evidence & (fused >= best[:, None])).sum(axis=1)
    rank = np.where(found.any(axis=1), ahead + 1, np.inf)
    return np.where(rank <= 10, rank, np.inf)


def metrics(rank: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": float(np.mean(rank <= k)) for k in KS}
    out["mrr"] = float(np.mean(np.where(np.isfinite(rank), 1 / rank, 0.0)))
    return {k: round(v, 3) for k, v in out.items()}


def by_style(m: Matrix, weights: np.ndarray) -> dict[str, dict[str, float]]:
    rank = ranks(m, weights)
    styles = np.array(m.styles)
    out = {"all": metrics(rank)}
    for style in sorted(set(m.styles)):
        out[style] = metrics(rank[styles == style])
    return out


def vector(names: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    return np.array([weights.get(name, 0.0) for name in names], dtype=np.float64)


# -- the search ------------------------------------------------------------------------------------


TARGETS = ("recall@1", "recall@5", "mrr")
TOLERANCE = 0.01  # how far below the engine's weights the assistant corpus may go unpenalised


@dataclass
class Pooled:
    """A data set's seeds pooled: the matrix of the signals searched over (`m`), of the baselines
    (each in its own order) and of the engine's signals as the engine normalises them."""

    corpus: str
    m: Matrix
    baseline: Matrix
    engine: Matrix


def objective(sets: Sequence[Pooled], weights: np.ndarray) -> float:
    """Mean over sets and styles of (R@1 + R@5 + MRR) / 3, less a penalty wherever BM25 over
    transcripts beats the weighting on a style of the dialogues corpus, and wherever the weighting
    falls more than TOLERANCE below the engine's weights on the assistant corpus."""
    gains, penalty = [], 0.0
    for data in sets:
        mine = by_style(data.m, weights)
        if data.corpus == "dialogues":
            bar = by_style(data.baseline, vector(data.baseline.names, {"bm25_transcripts": 1.0}))
            slack = 0.0
        else:
            bar = by_style(data.engine, vector(data.engine.names, sessions.WEIGHTS))
            slack = TOLERANCE
        for style, row in mine.items():
            if style == "all":
                continue
            gains.append(sum(row[k] for k in TARGETS) / 3)
            penalty += sum(max(0.0, bar[style][k] - slack - row[k]) for k in TARGETS)
    return statistics.fmean(gains) - penalty


def ascent(sets: Sequence[Pooled], start: np.ndarray, sweeps: int = 6) -> np.ndarray:
    best, value = start.copy(), objective(sets, start)
    for _ in range(sweeps):
        improved = False
        for s in range(len(best)):
            for w in GRID:
                trial = best.copy()
                trial[s] = w
                if trial.sum() <= 0:
                    continue
                v = objective(sets, trial)
                if v > value + 1e-9:
                    best, value, improved = trial, v, True
        if not improved:
            break
    return best


# The grid searched with --search grid: the engine's dense weights and a little around them, the
# candidate signals, and small weights for the lexical ones (scaled by their spread, they reach
# several units).
SPACE: Mapping[str, tuple[float, ...]] = {
    "turn_dense": (0.5, 1.0),
    "session_dense": (0.5, 1.0),
    "summary_dense": (0.25, 0.5),
    "window_dense": (0.0, 0.5, 1.0, 1.5),
    "session_lexical": (0.0, 0.1, 0.2, 0.3, 0.5),
    "turn_lexical": (0.0, 0.05, 0.1),
    "summary_lexical": (0.0, 0.1),
    "window_lexical": (0.0, 0.1),
}


def grid(sets: Sequence[Pooled], names: Sequence[str]) -> np.ndarray:
    """The best weighting of SPACE's product by the objective (the first found of equals)."""
    best, value = np.zeros(len(names)), -np.inf
    for combo in itertools.product(*SPACE.values()):
        trial = vector(names, dict(zip(SPACE, combo, strict=True)))
        v = objective(sets, trial)
        if v > value:
            best, value = trial, v
    return best


# -- the command -----------------------------------------------------------------------------------


# The default data sets: (corpus, half, seeds).
TUNING = [("dialogues", 0, [7, 11, 13, 17, 19, 41]), ("assistant", 0, [7, 11, 13, 17, 19])]
HELD_OUT = [("dialogues", 1, [23, 29, 31, 37, 43, 47]), ("assistant", 0, [23, 29, 31])]


def parse_set(text: str) -> tuple[str, int, list[int]]:
    name, half, seeds = text.split(":")
    if name not in ("dialogues", "assistant"):
        raise argparse.ArgumentTypeError(f"unknown corpus {name!r}")
    return name, int(half), [int(s) for s in seeds.split(",")]


def signal_names(choice: Sequence[str]) -> list[str]:
    engine = list(sessions.WEIGHTS)
    if choice == ["engine"]:
        return engine
    if choice == ["all"]:
        return engine + _extra_names()
    return engine + [name for name in choice if name not in engine]


def _extra_names() -> list[str]:
    return [name for name in EXTRA if name != "dense_turns" and name not in sessions.WEIGHTS]


def pooled(
    data: Mapping[tuple[str, int, int], tuple[list[Case], list[str]]],
    sets: Sequence[tuple[str, int, list[int]]],
    names: Sequence[str],
    norm: str,
) -> list[Pooled]:
    """One Pooled per data set (each seed's sessions are apart: its keys are prefixed with the
    seed)."""
    out = []
    for corpus, half, seeds in sets:
        cases, keys = [], []
        for seed in seeds:
            found, own = data[(corpus, half, seed)]
            cases += [
                Case(
                    Question(
                        c.question.text,
                        tuple(f"{seed}:{e}" for e in c.question.evidence),
                        c.question.kind,
                        c.question.style,
                    ),
                    {n: [(f"{seed}:{i}", v) for i, v in r] for n, r in c.rankings.items()},
                )
                for c in found
            ]
            keys += [f"{seed}:{k}" for k in own]
        # A baseline alone is ranked in its own order, whatever the normalisation: a greeting said
        # in every session gives them all one score, and a tie must not count against it.
        baselines = ["bm25_transcripts", "dense_turns", *sessions.WEIGHTS]
        engine = matrix_of(cases, keys, list(sessions.WEIGHTS), "engine")
        out.append(
            Pooled(
                corpus, matrix_of(cases, keys, names, norm), matrix_of(cases, keys, baselines, "rrf"), engine
            )
        )
    return out


def report(sets: Sequence[Pooled], label: Mapping[str, np.ndarray], tables: dict[str, Any]) -> None:
    for data in sets:
        corpus, m, baseline, engine = data.corpus, data.m, data.baseline, data.engine
        rows = {"engine today (WEIGHTS)": by_style(engine, vector(engine.names, sessions.WEIGHTS))}
        rows |= {name: by_style(m, w) for name, w in label.items()}
        for mode in ("lexical", "dense"):  # the engine's weights on the mode's signals, as search() fuses
            weights = sessions.WEIGHTS_OF_MODE[mode]
            mine = {n: weights.get(n, 0.0) for n in sessions.SIGNALS_OF_MODE[mode]}
            rows[f"engine {mode} mode"] = by_style(engine, vector(engine.names, mine))
        rows["bm25 transcripts"] = by_style(baseline, vector(baseline.names, {"bm25_transcripts": 1.0}))
        rows["dense turns"] = by_style(baseline, vector(baseline.names, {"dense_turns": 1.0}))
        tables[corpus] = rows
        print(f"\n{corpus}: {len(m.styles)} questions")
        styles = list(next(iter(rows.values())))
        print(f"{'method':<28}" + "".join(f"{s:>22}" for s in styles))
        print(f"{'':<28}" + "".join(f"{'R@1  R@5  R@10 MRR':>22}" for _ in styles))
        for name, row in rows.items():
            cells = [
                " ".join(f"{row[s][k]:.2f}" for k in ("recall@1", "recall@5", "recall@10", "mrr"))
                for s in styles
            ]
            print(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tune", type=parse_set, nargs="+", default=TUNING)
    parser.add_argument("--check", type=parse_set, nargs="+", default=HELD_OUT)
    parser.add_argument(
        "--norm", nargs="+", default=list(NORMS), help=f"of {NORMS}, or dense/lexical: minmax/z"
    )
    parser.add_argument("--signals", nargs="+", default=["all"], help="engine, all, or extra names")
    parser.add_argument("--search", choices=("ascent", "grid"), default="ascent")
    parser.add_argument("--weights", type=json.loads, help="a weighting to report beside (JSON)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fusion-embeddings.pkl"))
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--cases", type=Path, help="every question's rankings, kept here (a pickle) and read back"
    )
    args = parser.parse_args(argv)

    wanted = [(name, half, seed) for name, half, seeds in [*args.tune, *args.check] for seed in seeds]
    kept = pickle.loads(args.cases.read_bytes()) if args.cases and args.cases.exists() else {}
    if not set(wanted) <= set(kept):  # what the cached rankings lack is computed
        embedder = CachedEmbedder(args.cache)
        for name, half, seed in wanted:
            if (name, half, seed) not in kept:
                cases, keys = cases_of(embedder, name, seed, half)
                kept[(name, half, seed)] = ([(c.question, c.rankings) for c in cases], keys)
        embedder.save()
        if args.cases:
            args.cases.write_bytes(pickle.dumps(kept))
    data = {key: ([Case(q, r) for q, r in kept[key][0]], kept[key][1]) for key in wanted}
    names = signal_names(args.signals)
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.fusion", *(argv if argv is not None else sys.argv[1:])]),
        "signals": names,
        "tune": args.tune,
        "check": args.check,
        "engine": {"scales": dict(sessions.SCALES), "weights": dict(sessions.WEIGHTS)},
        "norms": {},
    }
    for norm in args.norm:
        tuning = pooled(data, args.tune, names, norm)
        today = vector(names, sessions.WEIGHTS)
        found = ascent(tuning, today) if args.search == "ascent" else grid(tuning, names)
        chosen = {n: float(w) for n, w in zip(names, found, strict=True) if w}
        label = {"engine's weights, this norm": today, "found": found}
        if args.weights:
            label["given"] = vector(names, args.weights)
        print(f"\n=== {norm}: found {json.dumps(chosen)}; objective on tuning "
              f"{objective(tuning, found):.3f} (engine's {objective(tuning, today):.3f})")  # fmt: skip
        tables: dict[str, Any] = {}
        print("-- tuning")
        report(tuning, label, tables)
        print("-- held out")
        held: dict[str, Any] = {}
        report(pooled(data, args.check, names, norm), label, held)
        result["norms"][norm] = {"weights": chosen, "tuning": tables, "held_out": held}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def check_against_engine(cases: Sequence[Case], keys: Sequence[str]) -> bool:
    """Whether `ranks` agrees with engine.memory.fusion.fuse on these cases (a self-test)."""
    m = matrix_of(cases, keys, list(sessions.WEIGHTS), "engine")
    mine = ranks(m, vector(m.names, sessions.WEIGHTS))
    for q, case in enumerate(cases):
        order = [i for i, _ in fuse(case.rankings, sessions.WEIGHTS, sessions.SCALES)[:10]]
        first = next((r for r, i in enumerate(order, 1) if i in case.question.evidence), np.inf)
        if first != mine[q] and np.isfinite(first):
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
