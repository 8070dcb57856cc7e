"""A real multi-node Ray on this machine (ray.cluster_utils.Cluster: a head and worker nodes, each
with its own raylet), and gateways that join it as they would join a cluster of machines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.server import ServerProcess

DATA_RESOURCE = "session_engine_data"  # what nodes that mount the data directory have
# The shipped config for two nodes of 2 CPUs: its shard counts and placement are the cluster's here.
SMALL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cluster.small.yaml"
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 2,
    "resources": {DATA_RESOURCE: 1},
    "object_store_memory": 80 * 1024 * 1024,
}
KEY = "cluster-key"


@pytest.fixture(autouse=True)
def _tiny_summarizer(servers_use_tiny_summarizer: None) -> None:
    """Gateways here summarize with the tiny model."""


class RayNodes:
    """The cluster, and the gateways' shared settings: configs/cluster.small.yaml (its placement
    keeps shards on nodes with the data resource, and fits on one node), one namespace per
    cluster, and the gateways on loopback."""

    def __init__(self, data_dir: Path) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True, connect=False, head_node_args={**NODE_ARGS, "include_dashboard": False}
        )
        self.workers = [self.cluster.add_node(**NODE_ARGS)]
        self.data_dir = data_dir
        self.env = {
            "SESSION_ENGINE_API_KEYS": f"{KEY}=acme",
            "SESSION_ENGINE_RAY__NAMESPACE": f"cluster-{uuid.uuid4().hex[:8]}",
            "SESSION_ENGINE_HOST": "127.0.0.1",
            "RAY_ADDRESS": "",
        }
        self.config_args = ["--config", str(SMALL_CONFIG)]

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def gateway(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return ServerProcess(
            self.data_dir,
            [*self.config_args, "--ray-address", self.address, *args],
            {**self.env, **(env or {})},
        )

    def command(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """A `session-engine` operator command run against this cluster."""
        return subprocess.run(
            [sys.executable, "-m", "session_engine", *args, "--ray-address", self.address],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=_env(self.env),
        )

    def status(self) -> dict[str, Any]:
        result = self.command("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def described(self, name: str) -> dict[str, Any]:
        """What the actor of this name says of itself ({} while it does not answer)."""
        (entry,) = [a for a in self.status()["actors"] if a["name"] == name]
        found: dict[str, Any] = entry.get("described") or {}
        return found

    def shard_nodes(self) -> dict[str, str]:
        return {
            a["name"]: a["node_id"]
            for a in self.status()["actors"]
            if a["role"].endswith("shard") and a.get("ray_state") == "ALIVE"
        }

    def shutdown(self) -> None:
        self.cluster.shutdown()


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}, **extra}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNodes]:
    started = RayNodes(tmp_path_factory.mktemp("cluster") / "data")
    try:
        yield started
    finally:
        started.shutdown()


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
