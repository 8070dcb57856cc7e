"""Reciprocal rank fusion: several rankings of the same things become one.

Each ranking gives an item `weight / (K + rank)` (rank 1 is the best); an item's fused score is the
sum over the rankings it appears in. Ranks, not scores, are fused, because a cosine similarity and
a BM25 score are on scales that do not compare (Cormack, Clarke and Büttcher, SIGIR 2009, who also
give K = 60). Scores are divided by the most any item could get (first in every ranking), so they
lie in (0, 1] and 1 means "first by every signal".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = 60
T = TypeVar("T", bound=Hashable)


def fuse(
    rankings: Mapping[str, Sequence[T]], weights: Mapping[str, float], k: int = K
) -> list[tuple[T, float]]:
    """(item, fused score), best first; ties keep the order in which items were first seen.
    A ranking with no weight (or weight 0) is ignored; an item listed twice in one ranking counts
    at its best rank."""
    scores: dict[T, float] = {}
    best = 0.0
    for name, ranking in rankings.items():
        weight = weights.get(name, 0.0)
        if weight <= 0:
            continue
        best += weight / (k + 1)
        seen: set[T] = set()
        for rank, item in enumerate(ranking, start=1):
            if item not in seen:
                seen.add(item)
                scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    if not scores:
        return []
    order = sorted(scores.items(), key=lambda pair: -pair[1])  # stable: first seen wins a tie
    return [(item, score / best) for item, score in order]
