"""Placement on shards: sessions by jump consistent hash of organization and session id; vector
memory by organization alone.

Jump hash (Lamping and Veach, 2014) maps a 64-bit key to one of N buckets with no table, and when
N grows to N+1 only about 1/(N+1) of the keys move, all of them to the new bucket.
"""

from __future__ import annotations

import hashlib

_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 2862933555777941757


def jump_hash(key: int, buckets: int) -> int:
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def _bucket(key: str, shards: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "little"), shards)


def shard_for(org: str, session_id: str, shards: int) -> int:
    return _bucket(f"{org}/{session_id}", shards)


def memory_shard_for(org: str, shards: int) -> int:
    """An organization's whole vector memory lives on one memory shard, so a query is one call."""
    return _bucket(f"memory/{org}", shards)


def shard_share(quota: int | None, shards: int) -> int | None:
    """An organization's sessions are spread over the shards by id; each shard holds it to this
    share of an organization-wide quota (None: no quota)."""
    return None if quota is None else -(-quota // shards)
