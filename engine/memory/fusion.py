"""Fusing several scored rankings of the same things into one: a weighted sum of scaled scores.

Each ranking's scores are scaled by its own spread before they are weighed, since a cosine
similarity and a BM25 score do not compare; an item a ranking does not list gets 0 from it. Two
scalings (`SCALES`):
- `range` (min-max): (score - worst) / (best - worst), so 0 to 1. The default, and the one every
  dense ranking uses: a cosine's range says how far ahead the best hit is.
- `spread`: score / the population standard deviation of the scores and one 0, so 0 for an item
  not listed and several units where one item stands out. Session memory's lexical rankings use it
  (engine.memory.sessions): min-max gives the best BM25 hit 1 whether a rare word matched one
  session or the question only shares a name with every session, and the spread tells the two
  apart. The 0 is the BM25 score of a session that did not match at all, so a short list is
  scaled against it: a lone hit gets 2, two sessions tied on a rare word both get more than 2,
  two hits a hair apart get nearly the same. Scaled against the worst listed instead, the better
  of two got 2 and the other 0 however slight the gap, and a ranking of one or of equals gave
  nothing; that scored a little better on the tuning sets by benchmarks/fusion.py's objective,
  but it ranked those plain cases wrong (benchmarks/README.md, "Session memory on conversations
  between friends", has both). A negative score counts as 0 (BM25 gives none).
With `range`, a ranking whose scores are all equal gives its items 1 (a single hit still counts,
as a namespace's hybrid search wants).

The weighted sum is divided by the total weight: with `range` alone a fused score lies in [0, 1]
and 1 means "best by every signal"; with `spread` it has no upper bound, and a score only ranks
the items of one answer against each other.

Score fusion was chosen over reciprocal rank fusion on the recall benchmark (benchmarks/README.md,
"Session memory recall"): ranks throw away how far ahead the best hit is, and that gap is what
tells a query whose rare word matched one message (a name, a book title) from one whose words
match everything a little. Bruch, Gai and Ingber (ACM TOIS 2023) found the same on public
benchmarks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np

T = TypeVar("T", bound=Hashable)
Scale = Literal["range", "spread"]
SCALES: tuple[Scale, ...] = ("range", "spread")


def scaled(scores: Sequence[float], scale: Scale = "range") -> list[float]:
    """Scores (each item's best, once) scaled by their own spread: see the module's docstring."""
    if not scores:
        return []
    values = np.asarray(scores, dtype=np.float64)
    if scale == "spread":
        matched = np.maximum(values, 0.0)
        deviation = float(np.append(matched, 0.0).std())
        return (matched / deviation).tolist() if deviation > 0 else [0.0] * len(values)
    worst = float(values.min())
    span = float(values.max()) - worst
    return ((values - worst) / span).tolist() if span > 0 else [1.0] * len(values)


def fuse(
    rankings: Mapping[str, Sequence[tuple[T, float]]],
    weights: Mapping[str, float],
    scales: Mapping[str, Scale] | None = None,
) -> list[tuple[T, float]]:
    """(item, fused score), best first; ties keep the order in which items were first seen.
    Each ranking is (item, score) best first; an item listed twice in one ranking counts once, at
    its first (best) place. A ranking with no weight, or weight 0, is left out. `scales`: each
    ranking's scaling by name (default `range`)."""
    total = sum(weights.get(name, 0.0) for name in rankings if weights.get(name, 0.0) > 0)
    if total <= 0:
        return []
    fused: dict[T, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 0.0)
        if weight <= 0 or not ranking:
            continue
        best: dict[T, float] = {}
        for item, score in ranking:
            best.setdefault(item, score)
        scale: Scale = "range" if scales is None else scales.get(name, "range")
        for item, value in zip(best, scaled(list(best.values()), scale), strict=True):
            fused[item] = fused.get(item, 0.0) + weight * value
    order = sorted(fused.items(), key=lambda pair: -pair[1])  # stable: first seen wins a tie
    return [(item, score / total) for item, score in order]
