from __future__ import annotations

from collections import Counter

import pytest

from engine.routing import jump_hash, shard_for
from engine.sessions.session import new_session_id


def test_every_key_lands_in_range_and_stays_put() -> None:
    for key in range(0, 2**64, 2**58 + 12345):
        bucket = jump_hash(key, 7)
        assert 0 <= bucket < 7
        assert jump_hash(key, 7) == bucket


def test_growing_by_one_shard_only_moves_keys_to_the_new_shard() -> None:
    keys = [k * 0x9E3779B97F4A7C15 % 2**64 for k in range(5000)]
    moved = 0
    for key in keys:
        before, after = jump_hash(key, 10), jump_hash(key, 11)
        if before != after:
            assert after == 10
            moved += 1
    assert 0.05 < moved / len(keys) < 0.14  # about 1/11


def test_sessions_spread_evenly_over_shards() -> None:
    counts = Counter(shard_for("acme", new_session_id(), 8) for _ in range(16000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 1.15 * 2000


def test_zero_buckets_is_refused() -> None:
    with pytest.raises(ValueError):
        jump_hash(1, 0)
