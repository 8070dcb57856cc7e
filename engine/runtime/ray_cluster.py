"""The cluster as a whole: its controller actor (identity and settings, as the first gateway
declared them), joining or creating it, and what the operator commands do (status, drain, stop,
rebalance), plus the watch a gateway keeps on Ray itself.

The controller holds no data and takes no requests; it is the one place a gateway or an operator
command reads the cluster's settings from, so that a gateway with other settings is refused
before it creates anything, and a shard moved by `rebalance` is created again exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import ray

from engine.config import EngineConfig, settings_diff
from engine.errors import ConfigError, StartupError
from engine.storage.layout import claim_layout, read_layout

from .ray_actors import CONTROLLER_NAME, RAY_ERRORS, create_named, lookup, wait_started

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT_S = 10.0


@ray.remote(max_restarts=-1, max_task_retries=0)
class ClusterController:
    def __init__(self, cluster_id: str, config: EngineConfig) -> None:
        self._cluster_id = cluster_id
        self._config = config
        self._created_at = int(time.time() * 1000)
        self._drained = False
        self._moving: set[str] = set()  # shards that `rebalance` is moving now

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_id": self._cluster_id,
            "created_at": self._created_at,
            "drained": self._drained,
            "moving": sorted(self._moving),
            "settings": self._config.cluster_settings(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def config(self) -> EngineConfig:
        return self._config

    def set_drained(self, drained: bool) -> None:
        self._drained = drained

    def set_moving(self, name: str, moving: bool) -> None:
        """While a shard moves, a gateway that finds no actor under its name says it is moving."""
        if moving:
            self._moving.add(name)
        else:
            self._moving.discard(name)


def join_or_create(config: EngineConfig) -> tuple[str, bool]:
    """The running cluster's id, after checking that this gateway's settings are the cluster's and
    that its data directory is the cluster's (nothing is created then); or, with no cluster
    running, the data directory claimed and the controller created. Returns (cluster id, created).
    A mismatch is a ConfigError that names every setting that differs."""
    controller = lookup(CONTROLLER_NAME, config)
    created = False
    if controller is None:
        check_placement(config)
        cluster_id = claim_layout(
            config.data_dir, config.shards, config.memory.shards, config.cluster_settings()
        )
        stored = config.model_copy(update={"api_keys": None})  # the actors never need the keys
        controller = create_named(
            ClusterController, CONTROLLER_NAME, config, cluster_id, stored, role="control"
        )
        created = True
    running = ray.get(controller.describe.remote(), timeout=60)
    differences = settings_diff(config.cluster_settings(), running["settings"])
    if differences:
        raise ConfigError(
            "this gateway's settings differ from the running cluster's, so it starts nothing: "
            + "; ".join(differences)
            + ". Use the cluster's values (they are in `session-engine status`), or stop the cluster first"
        )
    layout = read_layout(config.data_dir)
    if layout is None or layout.get("cluster_id") != running["cluster_id"]:
        found = "no engine.json" if layout is None else f"cluster {layout.get('cluster_id')}"
        raise ConfigError(
            f"data_dir {config.data_dir} on this node holds {found}, but the running cluster is "
            f"{running['cluster_id']}: this node does not see the cluster's shared data directory at "
            "that path; mount it there before starting a gateway here"
        )
    return str(running["cluster_id"]), created


def check_placement(config: EngineConfig) -> None:
    """Refuse, before creating anything, placement settings the cluster cannot satisfy at all."""
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    shards = config.shards + config.memory.shards
    models = config.models.embedder.replicas + config.models.summarizer.workers
    wanted = {
        "CPU": shards * config.placement.shard_cpus + models * config.placement.model_cpus,
        "GPU": models * config.models.num_gpus,
    }
    for name, amount in wanted.items():
        if amount > resources.get(name, 0.0) + 1e-9:
            raise ConfigError(
                f"the placement settings reserve {amount:g} {name} in all, but the Ray cluster has "
                f"{resources.get(name, 0.0):g}; lower placement.shard_cpus / placement.model_cpus / "
                "models.num_gpus, or add nodes"
            )
    for setting in ("data_resource", "model_resource"):
        name = getattr(config.placement, setting)
        if name and name not in resources:
            raise ConfigError(
                f"placement.{setting} is {name!r}, but no node of the Ray cluster has that resource; "
                f"start the nodes that should host them with `ray start --resources '{{\"{name}\": 1}}'`"
            )


def preflight(address: str) -> None:
    """Reach the cluster's control store once, in milliseconds, before `ray.init`, which on a
    refused token would retry for about 20 s and then raise. Raises AuthenticationError or
    ConnectionError with Ray's reason."""
    from ray._private.services import canonicalize_bootstrap_address_or_die
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    GcsClient(address=canonicalize_bootstrap_address_or_die(address), cluster_id=None)


# -- operator commands --------------------------------------------------------------------------


def actor_names(config: EngineConfig) -> list[tuple[str, str]]:
    """(role, name) of every actor of the cluster, shards first."""
    from .memory_shards import memory_names
    from .model_actors import EMBEDDER_NAME, POOL_NAME, SUMMARIZER_NAME
    from .session_shards import shard_names

    return (
        [("session shard", n) for n in shard_names(config)]
        + [("memory shard", n) for n in memory_names(config)]
        + [("embedder", EMBEDDER_NAME.format(index=i)) for i in range(config.models.embedder.replicas)]
        + [("summarizer pool", POOL_NAME)]
        + [("summarizer", SUMMARIZER_NAME.format(index=i)) for i in range(config.models.summarizer.workers)]
        + [("controller", CONTROLLER_NAME)]
    )


def running_config(namespace: str) -> EngineConfig | None:
    """The config the running cluster in `namespace` was created with, or None if none runs."""
    probe = EngineConfig(ray={"namespace": namespace})
    controller = lookup(CONTROLLER_NAME, probe)
    if controller is None:
        return None
    config: EngineConfig = ray.get(controller.config.remote(), timeout=DESCRIBE_TIMEOUT_S)
    return config


def status(config: EngineConfig, probe_timeout_s: float = DESCRIBE_TIMEOUT_S) -> dict[str, Any]:
    """Every actor of the cluster: where it runs, its Ray state and restarts, and what it says of
    itself (shards: epoch, lock holder, sessions or vectors, log size and snapshot age; model
    actors: idle or busy, and with what). An alive actor that does not answer within
    `probe_timeout_s` is described as {"error": "GetTimeoutError"}."""
    from ray._private.state import state as ray_state  # the actor table, without a dashboard

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
    from .memory_shards import stop_memory
    from .model_actors import POOL_NAME
    from .session_shards import stop_shards

    drain(config)
    found = {name: handle for _, name in actor_names(config) if (handle := lookup(name, config)) is not None}
    stop_shards([h for name, h in found.items() if name.startswith("session-shard")])
    stop_memory(
        {
            "pool": found.get(POOL_NAME),
            "embedders": [h for name, h in found.items() if name.startswith("embedder")],
            "memory": [h for name, h in found.items() if name.startswith("memory-shard")],
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
    from .memory_shards import MemoryShard
    from .session_shards import SessionShard

    cluster = _controller_state(config)
    eligible = _eligible_nodes(config)
    if not eligible:
        raise StartupError("no alive node can host shards (placement.data_resource)")
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
            actor_class = SessionShard if name.startswith("session") else MemoryShard
            index = int(name.rsplit("-", 1)[1])
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
    controller = _controller(config)
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


def _controller(config: EngineConfig) -> Any:
    controller = lookup(CONTROLLER_NAME, config)
    if controller is None:
        raise StartupError(f"no cluster runs in Ray namespace {config.ray.namespace!r}")
    return controller


def _controller_state(config: EngineConfig) -> dict[str, Any]:
    described: dict[str, Any] = ray.get(_controller(config).describe.remote(), timeout=DESCRIBE_TIMEOUT_S)
    return described


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


# -- the gateway's watch on Ray -------------------------------------------------------------------


class RayWatch:
    """Probes Ray's control store from a thread every `interval_s`. When no probe has succeeded
    for `lost_after_s`, calls `on_lost` once: the gateway stops, instead of keeping a port that
    accepts connections and answers nothing."""

    def __init__(
        self, on_lost: Callable[[], None], interval_s: float = 2.0, lost_after_s: float = 10.0
    ) -> None:
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._lost_after_s = lost_after_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="ray-watch", daemon=True)

    def start(self) -> RayWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_ok = time.monotonic()
        probe: threading.Thread | None = None
        answered = threading.Event()
        while not self._stop.wait(self._interval_s):
            if probe is None or not probe.is_alive():
                if answered.is_set():
                    last_ok = time.monotonic()
                answered = threading.Event()
                probe = threading.Thread(target=_probe, args=(answered,), daemon=True)
                probe.start()
                probe.join(self._interval_s)
                if answered.is_set():
                    last_ok = time.monotonic()
            if time.monotonic() - last_ok > self._lost_after_s:
                self.lost = True
                log.error("lost the Ray cluster (its control store does not answer); stopping this gateway")
                self._on_lost()
                return


def _probe(answered: threading.Event) -> None:
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        _internal_kv_get("session-engine-probe", namespace="session-engine")
    except Exception:  # noqa: BLE001 - any failure is "no answer"
        return
    answered.set()


def connect(config: EngineConfig) -> str:
    """Start a local Ray (no address configured) or join the configured one; returns its address."""
    if not ray.is_initialized():
        with _stop_handler_kept():
            _init(config)
    return str(ray.get_runtime_context().gcs_address)


@contextlib.contextmanager
def _stop_handler_kept() -> Iterator[None]:
    """ray.init makes SIGTERM raise SystemExit in the main thread, wherever it is. A gateway
    worker connects in its app's startup, after its HTTP server set the handler that stops it
    gracefully; Ray's would cut the request in flight short (an answer of 500). The handler in
    place before, when Python set it, stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _init(config: EngineConfig) -> None:
    if config.ray.address:
        preflight(config.ray.address)
        ray.init(address=config.ray.address, namespace=config.ray.namespace, logging_level=logging.WARNING)
    else:
        ray.init(
            # "local": always a Ray of its own, never one that `ray start` left on this machine.
            address="local",
            namespace=config.ray.namespace,
            include_dashboard=False,
            object_store_memory=config.ray.object_store_mb * 1024 * 1024,
            _node_ip_address=config.ray.node_ip,
            logging_level=logging.WARNING,
        )


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
