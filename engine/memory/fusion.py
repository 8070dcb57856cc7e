"""Fusing several scored rankings of the same things into one: a weighted sum of min-max
normalized scores (a convex combination).

Each ranking's scores are scaled to [0, 1] by its own best and worst (so a cosine similarity and
a BM25 score, whose scales do not compare, can be added), multiplied by the ranking's weight and
summed per item; an item a ranking does not list gets 0 from it. The sum is divided by the total
weight, so a fused score lies in [0, 1] and 1 means "best by every signal".

Chosen over reciprocal rank fusion on the recall benchmark (benchmarks/README.md, "Session
memory recall"): ranks throw away how far ahead the best hit is, and that gap is what tells a
query whose rare word matched one message (a name, a book title) from one whose words match
everything a little. Bruch, Gai and Ingber (ACM TOIS 2023) found the same on public benchmarks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def fuse(
    rankings: Mapping[str, Sequence[tuple[T, float]]], weights: Mapping[str, float]
) -> list[tuple[T, float]]:
    """(item, fused score), best first; ties keep the order in which items were first seen.
    Each ranking is (item, score) best first; an item listed twice in one ranking counts once, at
    its first (best) place. A ranking with no weight, or weight 0, is left out."""
    total = sum(weights.get(name, 0.0) for name in rankings if weights.get(name, 0.0) > 0)
    if total <= 0:
        return []
    fused: dict[T, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 0.0)
        if weight <= 0 or not ranking:
            continue
        scores = [score for _, score in ranking]
        best, worst = max(scores), min(scores)
        seen: set[T] = set()
        for item, score in ranking:
            if item in seen:
                continue
            seen.add(item)
            scaled = (score - worst) / (best - worst) if best > worst else 1.0
            fused[item] = fused.get(item, 0.0) + weight * scaled
    order = sorted(fused.items(), key=lambda pair: -pair[1])  # stable: first seen wins a tie
    return [(item, score / total) for item, score in order]
