"""Ray hosting: the SessionShard actor, starting or joining Ray, and the Ray transport.

This is the only module that imports Ray, so the rest of the engine is testable without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from engine.clock import SystemClock
from engine.config import ConfigError, EngineConfig
from engine.errors import Unavailable
from engine.sessions.ops import ExpireDue, Op, Ping
from engine.sessions.shard import ShardStore

log = logging.getLogger(__name__)

SHARD_NAME = "session-shard-{index}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class SessionShard:
    """Hosts one ShardStore: applies batches of ops in arrival order and runs its expiry timer."""

    def __init__(self, index: int, shards: int, expiry_tick_s: float) -> None:
        self._index = index
        self._shards = shards
        self._store = ShardStore()
        self._clock = SystemClock()
        self._tick_s = expiry_tick_s
        # Async actor: __init__ runs on the actor's event loop, so the timer lives beside the ops.
        self._timer = asyncio.get_running_loop().create_task(self._expire_forever())

    async def apply_batch(self, ops: Sequence[Op]) -> list[Any]:
        # No await inside: a batch is applied whole before the next one starts.
        return self._store.apply_batch(ops, self._clock.now_ms())

    async def describe(self) -> dict[str, Any]:
        return {
            "index": self._index,
            "shards": self._shards,
            **self._store.apply(Ping(), self._clock.now_ms()),
        }

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            deadline = self._store.next_deadline()
            now_ms = self._clock.now_ms()
            if deadline is not None and deadline <= now_ms:
                self._store.apply_batch([ExpireDue()], now_ms)


def connect(config: EngineConfig) -> str:
    """Start a local Ray (no address configured) or join the configured one; returns its address."""
    if not ray.is_initialized():
        if config.ray.address:
            ray.init(
                address=config.ray.address, namespace=config.ray.namespace, logging_level=logging.WARNING
            )
        else:
            ray.init(
                namespace=config.ray.namespace,
                include_dashboard=False,
                object_store_memory=config.ray.object_store_mb * 1024 * 1024,
                _node_ip_address=config.ray.node_ip,
                logging_level=logging.WARNING,
            )
    return str(ray.get_runtime_context().gcs_address)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def ensure_shards(config: EngineConfig) -> list[Any]:
    """Create the named shard actors, or find them if another gateway already did."""
    handles = [
        SessionShard.options(  # type: ignore[attr-defined]
            name=SHARD_NAME.format(index=i),
            namespace=config.ray.namespace,
            get_if_exists=True,
            lifetime="detached",
        ).remote(i, config.shards, config.expiry_tick_s)
        for i in range(config.shards)
    ]
    descriptions = ray.get([h.describe.remote() for h in handles], timeout=120)
    for description in descriptions:
        if description["shards"] != config.shards:
            raise ConfigError(
                f"shards is {config.shards} but the running shard actors were created with "
                f"shards={description['shards']}; use the same value on every gateway"
            )
    return handles


def find_shards(config: EngineConfig, timeout_s: float = 60.0) -> list[Any]:
    """Look the shard actors up by name, waiting while the process that creates them starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return [
                ray.get_actor(SHARD_NAME.format(index=i), namespace=config.ray.namespace)
                for i in range(config.shards)
            ]
        except ValueError:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"shard actors not found in Ray namespace {config.ray.namespace!r}"
                ) from None
            time.sleep(0.2)


class RayTransport:
    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    @property
    def shards(self) -> int:
        return len(self._handles)

    async def call(self, shard: int, ops: Sequence[Op]) -> list[Any]:
        try:
            result: list[Any] = await self._handles[shard].apply_batch.remote(ops)
        except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
            raise Unavailable(
                f"shard {shard} is unavailable",
                {"shard": shard},
                "The shard is restarting; retry shortly. A write that got this answer may or may not have "
                "been applied.",
            ) from exc
        return result
