"""What the operator commands do to a running cluster (`session-engine status`, `drain`, `stop`,
`rebalance`; session_engine/operate.py prints what they return). Each runs in a driver joined to
the cluster's Ray and reaches the actors by name (engine.runtime.names)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import ray

from engine.config import EngineConfig
from engine.errors import StartupError

from .controller import DESCRIBE_TIMEOUT_S, controller_state, find_controller
from .memory_shards import MemoryShard, stop_memory
from .names import CONTROLLER_NAME, actor_names, memory_names, shard_names
from .ray_actors import RAY_ERRORS, create_named, lookup, wait_started
from .session_shards import SessionShard, stop_shards


def status(config: EngineConfig, probe_timeout_s: float = DESCRIBE_TIMEOUT_S) -> dict[str, Any]:
    """Every actor of the cluster: where it runs, its Ray state and restarts, and what it says of
    itself (shards: epoch, lock holder, sessions or vectors, log size and snapshot age; model
    actors: idle or busy, and with what). An alive actor that does not answer within
    `probe_timeout_s` is described as {"error": "GetTimeoutError"}."""
    # Ray's private internals (the actor table, without a dashboard), imported where they are used:
    # a Ray that moves them breaks this command, not every import of this module.
    from ray._private.state import state as ray_state

    nodes = {n["NodeID"]: n for n in ray_nodes()}
    actors = []
    for role, name in actor_names(config):
        entry: dict[str, Any] = {"role": role, "name": name}
        handle = lookup(name, config)
        # By the actor's id: other namespaces of the same Ray have actors of the same names.
        info = ray_state.actor_table(handle._actor_id.hex()) if handle is not None else None
        if handle is None or not info:
            entry["ray_state"] = "MISSING"
            actors.append(entry)
            continue
        node = nodes.get(info["Address"]["NodeID"], {})
        entry |= {
            "ray_state": info["State"],
            "restarts": info["NumRestarts"],
            "node_id": info["Address"]["NodeID"] or None,
            "node_ip": node.get("NodeManagerAddress"),
            "pid": info["Pid"] or None,
        }
        if info["State"] == "ALIVE":
            try:
                entry["described"] = ray.get(handle.describe.remote(), timeout=probe_timeout_s)
            except RAY_ERRORS as exc:
                entry["described"] = {"error": type(exc).__name__}
        actors.append(entry)
    said_unstarted(actors)
    return {
        "nodes": [
            {
                "node_id": n["NodeID"],
                "ip": n["NodeManagerAddress"],
                "alive": n["Alive"],
                "resources": n.get("Resources", {}),
            }
            for n in nodes.values()
        ],
        "actors": actors,
    }


def said_unstarted(actors: list[dict[str, Any]]) -> None:
    """Summarizers the pool never created, because its model pass is off or was paused at the
    start (engine.closing.model_pass), are described as that state, not as MISSING: nothing is
    wrong with them, and `session-engine status` stays healthy."""
    pool = next((a for a in actors if a["role"] == "summarizer pool"), None)
    described = (pool or {}).get("described") or {}
    state = (described.get("model_pass") or {}).get("state")
    if state not in ("off", "paused") or described.get("workers"):
        return
    for entry in actors:
        if entry["role"] == "summarizer" and entry.get("ray_state") == "MISSING":
            entry["ray_state"] = "NOT_CREATED"
            entry["described"] = {"state": state}


def ray_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def drain(config: EngineConfig, on: bool = True) -> list[dict[str, Any]]:
    """Every shard stops taking changes (reads go on) and takes a snapshot; `on=False` undoes it."""
    controller = lookup(CONTROLLER_NAME, config)
    if controller is not None:
        ray.get(controller.set_drained.remote(on), timeout=DESCRIBE_TIMEOUT_S)
    handles = _shard_handles(config)
    return list(ray.get([h.drain.remote(on) for h in handles], timeout=600))


def stop(config: EngineConfig) -> None:
    """Drain, then stop every actor of the cluster: final snapshots, locks released, the detached
    actors removed. Session shards stop before memory (no summary job is half-way into memory)."""
    drain(config)
    found = [
        (role, handle) for role, name in actor_names(config) if (handle := lookup(name, config)) is not None
    ]

    def of(wanted: str) -> list[Any]:
        return [handle for role, handle in found if role == wanted]

    stop_shards(of("session shard"))
    stop_memory(
        {
            "pool": next(iter(of("summarizer pool")), None),
            "embedders": of("embedder"),
            "memory": of("memory shard"),
        }
    )
    for _, name in actor_names(config):  # the summarizers, the controller, and anything left
        leftover = lookup(name, config)
        if leftover is not None:
            ray.kill(leftover, no_restart=True)


def _shard_handles(config: EngineConfig) -> list[Any]:
    names = [name for role, name in actor_names(config) if role.endswith("shard")]
    return [h for h in (lookup(name, config) for name in names) if h is not None]


def rebalance(
    config: EngineConfig, *, dry_run: bool = False, report: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Move shards, one at a time, from the nodes that host the most to those that host the
    fewest, until no node hosts two more than another. A move is: the shard drains (changes get
    503 with Retry-After; reads go on), takes its final snapshot and releases its directory, and
    is created again on the target node, where it recovers from the same files. No acknowledged
    write can be lost: every one is in the log the new incarnation reads."""
    cluster = controller_state(config)
    eligible = _eligible_nodes(config)
    if not eligible:
        raise StartupError("no alive node can host shards (placement.data_resource)")
    # Each shard's actor class and index, to create it again exactly as it was.
    shards: dict[str, tuple[Any, int]] = {
        **{name: (SessionShard, i) for i, name in enumerate(shard_names(config))},
        **{name: (MemoryShard, i) for i, name in enumerate(memory_names(config))},
    }
    where = _shard_nodes(config)
    moves: list[dict[str, Any]] = []
    while True:
        load = Counter(dict.fromkeys(eligible, 0))
        load.update(node for node in where.values() if node in load)
        busiest, most = load.most_common()[0]
        idlest, fewest = min(load.items(), key=lambda item: item[1])
        if most - fewest <= 1:
            return moves
        name = next(n for n, node in where.items() if node == busiest)
        move: dict[str, Any] = {"shard": name, "from": busiest, "to": idlest}
        report(f"moving {name} from node {busiest[:12]} to node {idlest[:12]}")
        if not dry_run:
            actor_class, index = shards[name]
            started = time.monotonic()
            _move(config, cluster, actor_class, name, index, idlest)
            move["seconds"] = round(time.monotonic() - started, 2)
            report(f"  {name} serves again after {move['seconds']} s")
        moves.append(move)
        where[name] = idlest


def _move(
    config: EngineConfig, cluster: dict[str, Any], actor_class: Any, name: str, index: int, node: str
) -> None:
    """Drain, stop and remove the shard, and create it again on `node`. The controller holds the
    shard as moving meanwhile, so gateways answer its callers that it is moving. A gateway's call
    that finds the old actor dead goes to the new one (engine.runtime.ray_actors.NamedActors)."""
    controller = find_controller(config)
    ray.get(controller.set_moving.remote(name, True), timeout=DESCRIBE_TIMEOUT_S)
    try:
        handle = lookup(name, config)
        if handle is not None:
            ray.get(handle.drain.remote(True, moving=True), timeout=600)
            ray.get(handle.shutdown.remote(), timeout=600)  # final snapshot, lock released
            ray.kill(handle, no_restart=True)
            _wait_gone(name, config)
        moved = create_named(actor_class, name, config, index, config, cluster["cluster_id"], node_id=node)
        wait_started([moved], "moved shard", timeout_s=600)  # a refusal there is a StartupError
    finally:
        ray.get(controller.set_moving.remote(name, False), timeout=DESCRIBE_TIMEOUT_S)


def _wait_gone(name: str, config: EngineConfig, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while lookup(name, config) is not None:
        if time.monotonic() > deadline:
            raise StartupError(f"{name} did not go away after it was stopped")
        time.sleep(0.1)


def _eligible_nodes(config: EngineConfig) -> list[str]:
    marker = config.placement.data_resource
    return [
        n["NodeID"]
        for n in ray_nodes()
        if n["Alive"] and (not marker or n.get("Resources", {}).get(marker, 0) > 0)
    ]


def _shard_nodes(config: EngineConfig) -> dict[str, str]:
    found = status(config)
    return {
        a["name"]: a["node_id"]
        for a in found["actors"]
        if a["role"].endswith("shard") and a.get("node_id") and a.get("ray_state") == "ALIVE"
    }
