"""The cluster's controller actor: its identity and settings, as the first gateway declared them,
and joining or creating it.

The controller holds no data and takes no requests; it is the one place a gateway or an operator
command reads the cluster's settings from, so that a gateway with other settings is refused
before it creates anything, and a shard moved by `rebalance` is created again exactly as it was.
Like Ray Serve's controller, it is the control plane only: requests go from a gateway to the
shards without it.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from engine.config import EngineConfig, settings_diff
from engine.errors import ConfigError, StartupError
from engine.storage.layout import claim_layout, read_layout

from .names import CONTROLLER_NAME
from .ray_actors import create_named, lookup

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
    summarizer = config.models.summarizer
    # Under model_pass: off the pool creates no summarizer, so none is reserved for.
    embedders = config.models.embedder.replicas + config.models.embedder.background_replicas
    models = embedders + (summarizer.workers if summarizer.model_pass != "off" else 0)
    wanted = {
        "CPU": shards * config.placement.shard_cpus + models * config.placement.model_cpus,
        "GPU": models * config.models.num_gpus,
    }
    for name, amount in wanted.items():
        if amount > resources.get(name, 0.0) + 1e-9:
            raise ConfigError(
                f"the placement settings reserve {amount:g} {name} in all, but the Ray cluster has "
                f"{resources.get(name, 0.0):g}; lower placement.shard_cpus / placement.model_cpus / "
                "models.num_gpus / models.embedder.background_replicas (indexing's embedders: 0 "
                "indexes on the query embedders), or add nodes"
            )
    for setting in ("data_resource", "model_resource"):
        name = getattr(config.placement, setting)
        if name and name not in resources:
            raise ConfigError(
                f"placement.{setting} is {name!r}, but no node of the Ray cluster has that resource; "
                f"start the nodes that should host them with `ray start --resources '{{\"{name}\": 1}}'`"
            )


def running_config(namespace: str) -> EngineConfig | None:
    """The config the running cluster in `namespace` was created with, or None if none runs."""
    probe = EngineConfig(ray={"namespace": namespace})
    controller = lookup(CONTROLLER_NAME, probe)
    if controller is None:
        return None
    config: EngineConfig = ray.get(controller.config.remote(), timeout=DESCRIBE_TIMEOUT_S)
    return config


def find_controller(config: EngineConfig) -> Any:
    """The running cluster's controller; a StartupError when no cluster runs."""
    controller = lookup(CONTROLLER_NAME, config)
    if controller is None:
        raise StartupError(f"no cluster runs in Ray namespace {config.ray.namespace!r}")
    return controller


def controller_state(config: EngineConfig) -> dict[str, Any]:
    """What the running cluster's controller says of it (ClusterController.describe)."""
    described: dict[str, Any] = ray.get(find_controller(config).describe.remote(), timeout=DESCRIBE_TIMEOUT_S)
    return described
