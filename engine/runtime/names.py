"""The name of every actor of a cluster, in one place: a gateway, an operator command or another
actor finds an actor by its name in the cluster's Ray namespace, and nothing imports an actor's
module only to learn what it is called. Imports neither Ray nor an actor module."""

from __future__ import annotations

from engine.config import EngineConfig

CONTROLLER_NAME = "controller"  # the cluster's controller actor (engine.runtime.controller)
SHARD_NAME = "session-shard-{index}"
MEMORY_SHARD_NAME = "memory-shard-{index}"
EMBEDDER_NAME = "embedder-{index}"
BACKGROUND_EMBEDDER_NAME = "embedder-background-{index}"  # indexing's (models.embedder.background_replicas)
POOL_NAME = "summarizer-pool"
SUMMARIZER_NAME = "summarizer-{index}"


def shard_names(config: EngineConfig) -> list[str]:
    return [SHARD_NAME.format(index=i) for i in range(config.shards)]


def memory_names(config: EngineConfig) -> list[str]:
    return [MEMORY_SHARD_NAME.format(index=i) for i in range(config.memory.shards)]


def embedder_names(config: EngineConfig) -> list[str]:
    return [EMBEDDER_NAME.format(index=i) for i in range(config.models.embedder.replicas)]


def background_embedder_names(config: EngineConfig) -> list[str]:
    return [
        BACKGROUND_EMBEDDER_NAME.format(index=i) for i in range(config.models.embedder.background_replicas)
    ]


def summarizer_names(config: EngineConfig) -> list[str]:
    return [SUMMARIZER_NAME.format(index=i) for i in range(config.models.summarizer.workers)]


def actor_names(config: EngineConfig) -> list[tuple[str, str]]:
    """(role, name) of every actor of the cluster, shards first."""
    return (
        [("session shard", name) for name in shard_names(config)]
        + [("memory shard", name) for name in memory_names(config)]
        + [("embedder", name) for name in embedder_names(config)]
        + [("embedder", name) for name in background_embedder_names(config)]
        + [("summarizer pool", POOL_NAME)]
        + [("summarizer", name) for name in summarizer_names(config)]
        + [("controller", CONTROLLER_NAME)]
    )
