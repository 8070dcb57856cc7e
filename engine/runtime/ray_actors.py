"""What the actor modules (session_shards, memory_shards, model_actors, controller) and the
operator commands do with Ray actors: create them by name where the placement settings say, wait
for them to start, look them up, and call a shard's `handle`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.config import EngineConfig
from engine.errors import StartupError, Unavailable

from .names import CONTROLLER_NAME

RAY_ERRORS = (RayActorError, ActorUnavailableError, GetTimeoutError)
# A custom resource a placement setting names is asked for in this amount: enough to keep the
# actor on nodes that have it, small enough that a node with 1 of it hosts every shard.
MARKER_AMOUNT = 0.001


def placement_options(
    config: EngineConfig, role: Literal["shard", "model", "control"], node_id: str | None = None
) -> dict[str, Any]:
    """Ray options for an actor of this role: the resources it reserves and where it may run.
    `node_id` puts it on that node (soft: if the node goes, Ray restarts it elsewhere)."""
    placement = config.placement
    options: dict[str, Any] = {"num_cpus": 0}
    resources: dict[str, float] = {}
    if role == "shard":
        options["num_cpus"] = placement.shard_cpus
        if placement.data_resource:
            resources[placement.data_resource] = MARKER_AMOUNT
    elif role == "model":
        options["num_cpus"] = placement.model_cpus
        options["num_gpus"] = config.models.num_gpus
        if placement.model_resource:
            resources[placement.model_resource] = MARKER_AMOUNT
    if resources:
        options["resources"] = resources
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    elif role != "control" and placement.strategy == "SPREAD":
        options["scheduling_strategy"] = "SPREAD"
    return options


def create_named(
    actor_class: Any,
    name: str,
    config: EngineConfig,
    *args: Any,
    role: Literal["shard", "model", "control"] = "shard",
    node_id: str | None = None,
) -> Any:
    """A detached actor by name, or the running one if another gateway already created it."""
    return actor_class.options(
        name=name,
        namespace=config.ray.namespace,
        get_if_exists=True,
        lifetime="detached",
        **placement_options(config, role, node_id),
    ).remote(*args)


def wait_started(handles: Sequence[Any], what: str, timeout_s: float) -> list[Any]:
    """Every actor's `describe()`, once each has started, and a model actor has loaded (it says
    "loading" until then: engine.runtime.model_actors). A failed start, a model that failed to
    load, or a shard that refuses its directory, is a StartupError; a missing model's line (which
    names its setting) is the message when there is one."""
    deadline = time.monotonic() + timeout_s
    try:
        described = list(ray.get([h.describe.remote() for h in handles], timeout=timeout_s))
        while any(found.get("state") == "loading" for found in described):
            time.sleep(0.2)
            left = deadline - time.monotonic()
            if left <= 0:
                raise GetTimeoutError
            described = list(ray.get([h.describe.remote() for h in handles], timeout=left))
    except GetTimeoutError:
        raise StartupError(
            f"a {what} did not start within {timeout_s:.0f} s; `session-engine status` shows where it "
            "waits (often: no node has the resources the placement settings ask for)"
        ) from None
    except RayActorError as exc:
        message = str(getattr(exc, "error_msg", "") or exc.__cause__ or exc)
        for line in message.splitlines():
            if "ModelMissing" in line or "models." in line:
                raise StartupError(line.strip()) from None
        raise StartupError(f"a {what} failed to start: {message.strip().splitlines()[-1]}") from None
    for found in described:
        if found.get("state") == "refused":  # a shard on a directory not its own (engine.runtime.hosted)
            raise StartupError(f"{found['kind']} shard {found['index']} refuses to serve: {found['reason']}")
        if found.get("state") == "failed":  # a model that could not be loaded
            raise StartupError(f"a {what} failed to load: {found.get('error')}")
    return described


def lookup(name: str, config: EngineConfig) -> Any | None:
    try:
        return ray.get_actor(name, namespace=config.ray.namespace)
    except ValueError:
        return None


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


class NamedActors:
    """Handles to actors by name. An actor that was stopped and created again (moved by
    `session-engine rebalance`, or a cluster stopped and started) is a new actor under the same
    name: a call that finds the old one dead looks the name up again and goes to the new one."""

    def __init__(self, names: Sequence[str], config: EngineConfig, handles: Sequence[Any]) -> None:
        self.names = list(names)
        self._config = config
        self._handles = list(handles)
        self._gone: dict[int, tuple[float, Unavailable]] = {}  # why each missing actor is missing

    def __len__(self) -> int:
        return len(self._handles)

    def __getitem__(self, index: int) -> Any:
        return self._handles[index]

    def died(self, index: int) -> None:
        found = lookup(self.names[index], self._config)
        if found is not None:
            self._handles[index] = found

    async def call(self, index: int, ops: Sequence[Any], what: str) -> list[Any]:
        """One batch to a shard actor; a shard that is stopped, moving or restarting is 503 UNAVAILABLE."""
        result: list[Any] = await self.invoke(index, "handle", what, ops)
        return result

    async def invoke(self, index: int, method: str, what: str, *args: Any) -> Any:
        """Call one method of a shard actor, with the same 503 as `call`. A call that finds its actor
        dead and another one already under its name goes to that one, once and at once: an operator
        command replaced it (rebalance, or stop and a new start), and those drain and stop an actor
        before they remove it, so the dead one had nothing of this call to apply. The call that finds
        it dead learns of it from Ray at once; a replacement takes seconds to exist."""
        handle = self._handles[index]
        try:
            return await getattr(handle, method).remote(*args)
        except ActorDiedError as exc:
            replacement = self._replacement(index, handle)
            if replacement is None:
                raise await self._missing(index, what) from exc
            try:
                return await getattr(replacement, method).remote(*args)
            except RAY_ERRORS as again:
                raise restarting(what, index) from again
        except RAY_ERRORS as exc:
            raise restarting(what, index) from exc

    def _replacement(self, index: int, dead: Any) -> Any | None:
        """The actor under this name now, if it is not the dead one (Ray restarts an actor that
        failed under the same id: that one is restarting, not replaced)."""
        if self._handles[index] is dead:  # not looked up again by a call before this one
            self.died(index)
        current = self._handles[index]
        return None if current._actor_id == dead._actor_id else current

    async def _missing(self, index: int, what: str) -> Unavailable:
        """Why no actor serves this name: moved by `rebalance` (its controller says so), or stopped by
        `session-engine stop` (no controller either). Remembered for a second, so the requests of a
        busy gateway do not each ask."""
        now = time.monotonic()
        known = self._gone.get(index)
        if known is not None and now - known[0] < 1.0:
            return known[1]
        controller = lookup(CONTROLLER_NAME, self._config)
        if controller is None:
            error = stopped(what, index)
        else:
            try:
                cluster = await asyncio.wait_for(controller.describe.remote(), timeout=5)
            except (*RAY_ERRORS, TimeoutError):
                cluster = {}
            moving = self.names[index] in cluster.get("moving", ())
            error = moving_away(what, index) if moving else restarting(what, index)
        self._gone[index] = (now, error)
        return error


def restarting(what: str, index: int) -> Unavailable:
    return Unavailable(
        f"{what} {index} is restarting",
        {what.replace(" ", "_"): index, "state": "restarting"},
        f"The {what}'s process failed or its node was lost; Ray is starting it again and it recovers "
        "from its files. Retry shortly. A write that got this answer may or may not have been applied "
        "(an Idempotency-Key makes the retry safe).",
    )


def moving_away(what: str, index: int) -> Unavailable:
    return Unavailable(
        f"{what} {index} is moving to another node",
        {what.replace(" ", "_"): index, "state": "moving"},
        f"An operator is moving this {what} (session-engine rebalance); it serves again from the same "
        "files in seconds. Retry shortly: a change that got this answer was not applied.",
    )


def stopped(what: str, index: int) -> Unavailable:
    error = Unavailable(
        f"{what} {index} is stopped",
        {what.replace(" ", "_"): index, "state": "stopped"},
        "An operator stopped the cluster (session-engine stop): every change made before it is on "
        "disk. It serves again once a gateway starts it (session-engine serve); this gateway then "
        "finds it by itself. A change that got this answer was not applied.",
    )
    error.retry_after_s = 10.0
    return error
