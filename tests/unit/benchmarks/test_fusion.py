"""The fusion harness's scoring (benchmarks/fusion.py) on hand-made rankings: no model, no index."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conversations import Question
from benchmarks.fusion import Case, _normalised, check_against_engine, matrix_of, metrics, ranks, vector
from engine.memory import fusion, sessions


def _case(evidence: tuple[str, ...], style: str, rankings: dict[str, list[tuple[str, float]]]) -> Case:
    return Case(Question("q", evidence, "kind", style), rankings)


def _random_cases(count: int, seed: int) -> tuple[list[Case], list[str]]:
    rng = np.random.default_rng(seed)
    keys = [f"s{i}" for i in range(12)]
    cases = []
    for _ in range(count):
        rankings = {}
        for name in sessions.WEIGHTS:
            # Every session listed in every ranking: a tie (which the engine breaks by first seen,
            # and `ranks` against the evidence) is then improbable.
            listed = rng.permutation(keys)
            scores = sorted(rng.random(len(listed)).tolist(), reverse=True)
            rankings[name] = list(zip(listed.tolist(), scores, strict=True))
        cases.append(_case((str(rng.choice(keys)),), "quote", rankings))
    return cases, keys


def test_ranks_agree_with_the_engines_fusion() -> None:
    cases, keys = _random_cases(200, seed=1)
    assert check_against_engine(cases, keys)


def test_an_evidence_session_no_weighted_signal_lists_is_a_miss() -> None:
    case = _case(("b",), "when", {"turn_dense": [("a", 0.9)], "session_lexical": [("b", 5.0)]})
    m = matrix_of([case], ["a", "b"], ["turn_dense", "session_lexical"], "minmax")
    assert np.isinf(ranks(m, vector(m.names, {"turn_dense": 1.0}))[0])
    assert ranks(m, vector(m.names, {"session_lexical": 1.0}))[0] == 1


def test_a_tie_counts_against_the_evidence() -> None:
    case = _case(("b",), "quote", {"turn_dense": [("a", 0.5), ("b", 0.5)]})
    m = matrix_of([case], ["a", "b"], ["turn_dense"], "max")
    assert ranks(m, np.array([1.0]))[0] == 2


def test_z_scaling_rewards_a_score_that_stands_out() -> None:
    others = [(f"s{i}", 1.0) for i in range(20)]
    standing_out = _normalised([("top", 10.0), *others], "z")
    flat_scores = [(f"s{i}", 2.0 - i / 20) for i in range(21)]
    flat = _normalised(flat_scores, "z")
    assert standing_out["top"] - standing_out["s0"] > flat["s0"] - flat["s20"]
    minmax = _normalised(flat_scores, "minmax")
    assert minmax["s0"] - minmax["s20"] == 1.0  # min-max stretches a flat ranking to the full range


def test_metrics_count_hits_at_k_and_reciprocal_ranks() -> None:
    scored = metrics(np.array([1.0, 3.0, np.inf, 7.0]))
    assert scored == {
        "recall@1": 0.25,
        "recall@5": 0.5,
        "recall@10": 0.75,
        "mrr": round((1 + 1 / 3 + 1 / 7) / 4, 3),
    }


def test_ranks_agree_with_the_engine_where_rankings_list_a_few_sessions_or_are_flat() -> None:
    rng = np.random.default_rng(2)
    keys = [f"s{i}" for i in range(12)]
    cases = []
    for _ in range(200):
        rankings = {}
        for name in sessions.WEIGHTS:
            # turn_dense lists every session, so no two tie at 0 (a tie goes against the evidence)
            listed = rng.permutation(keys)[
                : len(keys) if name == "turn_dense" else int(rng.integers(1, 12))
            ].tolist()
            flat = name.endswith("_lexical") and rng.random() < 0.3
            scores = [4.0] * len(listed) if flat else sorted(rng.random(len(listed)).tolist(), reverse=True)
            rankings[name] = list(zip(listed, scores, strict=True))
        cases.append(_case((str(rng.choice(keys)),), "quote", rankings))
    assert check_against_engine(cases, keys)


def test_the_engines_scalings_are_the_engines_own() -> None:
    ranking = [("a", 9.0), ("b", 3.0), ("c", 1.0)]
    assert _normalised(ranking, "spread") == dict(
        zip("abc", fusion.scaled([9.0, 3.0, 1.0], "spread"), strict=True)
    )
    m = matrix_of(
        [
            _case(("c",), "quote", {"session_lexical": [("a", 2.0), ("b", 2.0)]}),
            _case(("c",), "quote", {"session_lexical": [("a", 2.0)]}),
        ],
        ["a", "b", "c"],
        ["session_lexical"],
        "engine",
    )
    assert m.scores[0, 0].tolist() == pytest.approx([1.5 * 2**0.5] * 2 + [0.0]), "two tied hits both count"
    assert m.scores[1, 0].tolist() == [2.0, 0.0, 0.0], "a lone hit stands out, as the engine scales it"
