"""How a session-memory match's `relevance` was calibrated, reproducibly.

    python -m benchmarks.relevance [--personas 4] [--sessions 24] [--tune-seeds 7 11]
                                   [--check-seeds 23] [--out FILE] [--matches FILE]

Each corpus (benchmarks/conversations.py) is indexed in this process the engine's way
(benchmarks.fusion.indexed: the default embedder, extractive summaries). Its questions are of two
sorts: the corpus's own, whose answer is in memory (their evidence session), and questions no
session answers (`unrelated_questions`: off-topic, about what a persona never told, about people
who are not in memory). Each question gets the engine's top 10 sessions
(engine.memory.sessions.search) with each session's evidence (engine.memory.sessions.evidence_of:
the cosine of the query to its closest message and to the whole session).

Tuning: the corpora of the tuning seeds, sessions named after their persona, the first half of
the unrelated sentences. A logistic regression (scikit-learn) learns "an evidence session" (every
evidence session among the matches) against "nothing relevant" (the best match of each unrelated
question), the two weighted equally; its coefficients are what engine.memory.relevance uses, and
the threshold with the best balanced accuracy on the same data (to 0.05) the recommended
min_relevance. Held out: the check seeds, the other half of the unrelated sentences, and sessions
named both ways ("numbered" names say nothing of whose session it is, which the fit never saw).

The report is of the engine's own constants (engine.memory.relevance), not of the fit just made:
run it, copy the fitted coefficients there if they moved, run it again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression  # comes with sentence-transformers
from sklearn.metrics import roc_auc_score

from benchmarks.conversations import UNRELATED_KINDS, Question, generate, unrelated_questions
from benchmarks.fusion import indexed
from benchmarks.stamp import describe, machine
from engine.memory import relevance as calibration
from engine.memory import sessions
from engine.models.embedder import Embedder

HERE = Path(__file__).resolve().parent
TOP_K = 10
# A group of matches: the corpus's questions' evidence sessions, their other matches, and the best
# match of each kind of unrelated question.
GROUPS = ("evidence", "other matches", *(f"best match, {kind}" for kind in UNRELATED_KINDS))
Naming = Literal["persona", "numbered"]


def matches_of(
    embedder: Any,
    personas: int,
    per_persona: int,
    seed: int,
    naming: Naming,
    half: int,
) -> list[dict[str, Any]]:
    """One row per (question, match) kept in a group: its group, rank, and evidence: `turn`, what
    the engine's relevance is made of (the closest message's cosine), and `session`, the cosine
    to the session's whole-conversation vector (the signal tried beside it)."""
    corpus = generate(personas, per_persona, seed=seed, naming=naming)
    indexes = indexed(embedder, corpus)
    assert indexes.whole is not None
    questions: list[Question] = [*corpus.questions, *unrelated_questions(corpus, seed, half)]
    rows = []
    for question, vector in zip(questions, embedder.embed([q.text for q in questions]), strict=True):
        found = sessions.search(indexes, vector, question.text, TOP_K)
        closest = sessions.closest_of(indexes, vector, [m.id for m in found])
        for rank, match in enumerate(found):
            if not question.evidence:
                group = f"best match, {question.kind}" if rank == 0 else None
            else:
                group = "evidence" if match.id in question.evidence else "other matches"
            if group is not None:
                whole = indexes.whole.vectors([indexes.whole.faiss_id(match.id) or 0])
                session = float((whole @ vector)[0])
                rows.append({"group": group, "rank": rank, "turn": closest[match.id], "session": session})
    return rows


def fit(rows: Sequence[dict[str, Any]], signals: Sequence[str] = ("turn",)) -> dict[str, float]:
    """Logistic regression of evidence against the best match of unrelated questions, the two
    weighted equally: each signal's weight, the bias, and the threshold with the best balanced
    accuracy (to 0.05)."""
    used = [r for r in rows if r["group"] != "other matches"]
    x = np.array([[r[signal] for signal in signals] for r in used])
    y = np.array([r["group"] == "evidence" for r in used])
    model = LogisticRegression(C=100, class_weight="balanced").fit(x, y)  # barely regularized
    scores = model.predict_proba(x)[:, 1]
    best = max(
        (round(t, 2) for t in np.arange(0.05, 1.0, 0.05)),
        key=lambda t: statistics.fmean(scores[y] >= t) + statistics.fmean(scores[~y] < t),
    )
    weights = dict(zip(signals, model.coef_[0].tolist(), strict=True))
    return {**weights, "bias": float(model.intercept_[0]), "threshold": best}


def report(rows: Sequence[dict[str, Any]], weights: dict[str, float], threshold: float) -> dict[str, Any]:
    """Per group: the relevance these weights give (percentiles) and the share that `threshold`
    keeps; and the ROC AUC of evidence against each kind of unrelated question's best match."""

    def relevance(row: dict[str, Any]) -> float:
        signals = [name for name in weights if name not in ("bias", "threshold")]
        logit = weights["bias"] + sum(weights[name] * row[name] for name in signals)
        return float(1 / (1 + np.exp(-logit)))

    values = {group: sorted(relevance(r) for r in rows if r["group"] == group) for group in GROUPS}
    out: dict[str, Any] = {}
    for group, ordered in values.items():
        if not ordered:
            continue
        out[group] = {
            "n": len(ordered),
            **{f"p{p}": round(float(np.percentile(ordered, p)), 3) for p in (5, 25, 50, 75, 95)},
            "kept": round(statistics.fmean(v >= threshold for v in ordered), 3),
        }
    for kind in UNRELATED_KINDS:
        negatives = values[f"best match, {kind}"]
        if negatives and values["evidence"]:
            labels = [1] * len(values["evidence"]) + [0] * len(negatives)
            out[f"auc, evidence vs {kind}"] = round(
                float(roc_auc_score(labels, values["evidence"] + negatives)), 3
            )
    return out


def _rounded(fitted: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 2) for name, value in fitted.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--check-seeds", type=int, nargs="+", default=[23])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "relevance.json")
    parser.add_argument(
        "--matches",
        type=Path,
        help="keep the matches and their evidence in this file, and read them from it when it "
        "exists (to report new constants without indexing again)",
    )
    args = parser.parse_args(argv)

    cached: dict[str, list[dict[str, Any]]] = (
        json.loads(args.matches.read_text()) if args.matches and args.matches.exists() else {}
    )
    embedder = None

    def corpus(seed: int, naming: Naming, half: int) -> list[dict[str, Any]]:
        nonlocal embedder
        key = f"{args.personas}x{args.sessions} seed {seed}, {naming} names, half {half}"
        if key not in cached:
            embedder = embedder or Embedder(None)
            cached[key] = matches_of(embedder, args.personas, args.sessions, seed, naming, half)
        return cached[key]

    namings: tuple[Naming, ...] = ("persona", "numbered")
    tuning = {n: [r for seed in args.tune_seeds for r in corpus(seed, n, 0)] for n in namings}
    checks = {n: [r for seed in args.check_seeds for r in corpus(seed, n, 1)] for n in namings}
    if args.matches:
        args.matches.write_text(json.dumps(cached))
    both = tuning["persona"] + tuning["numbered"]
    fitted = fit(both)
    engine = {"turn": calibration.SLOPE, "bias": calibration.BIAS}
    threshold = calibration.RECOMMENDED_MIN_RELEVANCE
    # The signal tried beside the closest message, and left out (engine.memory.relevance).
    with_session = fit(both, ("turn", "session"))
    result = {
        "fitted on the tuning data": _rounded(fitted),
        "engine": {**engine, "threshold": threshold},
        **{f"tuning ({n} names)": report(rows, engine, threshold) for n, rows in tuning.items()},
        **{f"held out ({n} names)": report(rows, engine, threshold) for n, rows in checks.items()},
        "tried: closest message and whole session, fitted": _rounded(with_session),
        **{
            f"tried: held out ({n} names)": report(rows, with_session, with_session["threshold"])
            for n, rows in checks.items()
        },
        "machine": describe(machine()),
        "command": "python -m benchmarks.relevance "
        + " ".join(
            f"--{name} {value}"
            for name, value in (
                ("personas", args.personas),
                ("sessions", args.sessions),
                ("tune-seeds", " ".join(map(str, args.tune_seeds))),
                ("check-seeds", " ".join(map(str, args.check_seeds))),
            )
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
