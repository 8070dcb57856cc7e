"""What ray_host (session shards) and ray_memory (memory shards, models) both do with Ray actors:
create them by name, wait for them to start, look them up, and call a shard's `apply_batch`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from engine.config import EngineConfig
from engine.errors import Unavailable

RAY_ERRORS = (RayActorError, ActorUnavailableError, GetTimeoutError)


class StartupError(Exception):
    """The engine cannot start; the message says why."""


def create_named(actor_class: Any, name: str, config: EngineConfig, *args: Any, num_gpus: float = 0) -> Any:
    """A detached actor by name, or the running one if another gateway already created it."""
    return actor_class.options(
        name=name, namespace=config.ray.namespace, get_if_exists=True, lifetime="detached", num_gpus=num_gpus
    ).remote(*args)


def wait_started(handles: Sequence[Any], what: str, timeout_s: float) -> list[Any]:
    """Every actor's `describe()`, once each has started. A failed start is a StartupError; a missing
    model's line (which names its setting) is the message when there is one."""
    try:
        return list(ray.get([h.describe.remote() for h in handles], timeout=timeout_s))
    except RayActorError as exc:
        message = str(getattr(exc, "error_msg", "") or exc.__cause__ or exc)
        for line in message.splitlines():
            if "ModelMissing" in line or "models." in line:
                raise StartupError(line.strip()) from None
        raise StartupError(f"a {what} failed to start: {message.strip().splitlines()[-1]}") from None


def find_named(names: Sequence[str], config: EngineConfig, timeout_s: float) -> list[Any]:
    """Look actors up by name, waiting while the process that creates them starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return [ray.get_actor(name, namespace=config.ray.namespace) for name in names]
        except ValueError:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"actors {list(names)} not found in Ray namespace {config.ray.namespace!r}"
                ) from None
            time.sleep(0.2)


async def apply_remote(handle: Any, ops: Sequence[Any], what: str, index: int) -> list[Any]:
    """One batch to a shard actor; a shard that is down or restarting is 503 UNAVAILABLE."""
    try:
        result: list[Any] = await handle.apply_batch.remote(ops)
    except RAY_ERRORS as exc:
        raise Unavailable(
            f"{what} {index} is unavailable",
            {what.replace(" ", "_"): index},
            f"The {what} is restarting; retry shortly. A write that got this answer may or may not have "
            "been applied.",
        ) from exc
    return result
