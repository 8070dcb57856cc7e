"""Every actor of a cluster by role and name (engine/runtime/names.py), as `status`, `stop` and
`rebalance` walk them."""

from __future__ import annotations

from engine.config import EngineConfig
from engine.runtime.names import actor_names


def test_every_actor_is_named_shards_first_and_the_controller_last() -> None:
    config = EngineConfig(
        shards=2, memory={"shards": 1}, models={"embedder": {"replicas": 2}, "summarizer": {"workers": 1}}
    )
    assert actor_names(config) == [
        ("session shard", "session-shard-0"),
        ("session shard", "session-shard-1"),
        ("memory shard", "memory-shard-0"),
        ("embedder", "embedder-0"),
        ("embedder", "embedder-1"),
        ("embedder", "embedder-background-0"),  # indexing's own (models.embedder.background_replicas)
        ("summarizer pool", "summarizer-pool"),
        ("summarizer", "summarizer-0"),
        ("controller", "controller"),
    ]


def test_indexing_shares_the_query_embedders_without_background_replicas() -> None:
    config = EngineConfig(models={"embedder": {"replicas": 1, "background_replicas": 0}})
    assert [name for role, name in actor_names(config) if role == "embedder"] == ["embedder-0"]
