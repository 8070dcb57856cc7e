"""Fusing rankings (engine.memory.fusion): each ranking scaled by its range or its spread."""

from __future__ import annotations

import pytest

from engine.memory.fusion import fuse, scaled


def test_spread_scaling_counts_standard_deviations_from_no_match() -> None:
    # The deviation is of the scores and one 0: [3, 2, 1, 0] has 1.118.
    assert scaled([3.0, 2.0, 1.0], "spread") == pytest.approx([3 / 1.118034, 2 / 1.118034, 1 / 1.118034])
    assert scaled([5.0, 5.0], "spread") == pytest.approx([2**0.5 * 1.5] * 2), (
        "tied on a rare word: both count"
    )
    assert scaled([7.5, 7.49], "spread")[0] == pytest.approx(scaled([7.5, 7.49], "spread")[1], abs=0.01)
    assert scaled([5.0, 5.0], "range") == [1.0, 1.0], "a single hit still counts with min-max"
    assert scaled([-1.0, 0.0], "spread") == [0.0, 0.0]
    assert scaled([], "spread") == []


def test_a_flat_lexical_ranking_keeps_the_dense_order_of_what_it_lists() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("d", 0.85)]
    flat = fuse(
        {"dense": dense, "lexical": [("b", 4.0), ("a", 4.0), ("c", 4.0)]},
        {"dense": 1.0, "lexical": 0.5},
        {"lexical": "spread"},
    )
    assert [item for item, _ in flat] == ["a", "b", "c", "d"], "matching the words counts, equally"


def test_a_lexical_hit_that_stands_out_outweighs_one_among_equals() -> None:
    others = [(f"s{i}", 1.0) for i in range(20)]
    standing_out = dict(fuse({"lexical": [("top", 10.0), *others]}, {"lexical": 1.0}, {"lexical": "spread"}))
    among_equals = dict(fuse({"lexical": [("top", 1.1), *others]}, {"lexical": 1.0}, {"lexical": "range"}))
    assert among_equals["top"] == 1.0, "min-max gives the best hit 1 however slight its lead"
    assert standing_out["top"] > 4.0, "the spread says how far ahead it is"


def test_spread_scaled_scores_are_unbounded_and_still_ordered() -> None:
    fused = fuse(
        {"dense": [("a", 0.5), ("b", 0.9)], "lexical": [("a", 30.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)]},
        {"dense": 1.0, "lexical": 1.0},
        {"lexical": "spread"},
    )
    values = [score for _, score in fused]
    assert fused[0][0] == "a" and values[0] > 1 and values == sorted(values, reverse=True)


def test_a_lone_lexical_hit_counts_as_one_that_stands_out() -> None:
    """Only one session has the invoice number: its lexical hit lifts it above a session the
    dense ranking put a little ahead."""
    assert scaled([7.5], "spread") == [2.0], "set against a session that matched nothing"
    fused = fuse(
        {"dense": [("other", 0.9), ("invoice", 0.8), ("third", 0.5)], "lexical": [("invoice", 7.5)]},
        {"dense": 1.0, "lexical": 0.2},
        {"lexical": "spread"},
    )
    assert [item for item, _ in fused] == ["invoice", "other", "third"]
