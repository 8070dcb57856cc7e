"""The cluster configs in configs/ validate, and their placement fits the nodes they are for (the
placement check that a first gateway runs, against the resources such nodes report)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from engine.config import load_config
from engine.errors import ConfigError
from engine.runtime.controller import check_placement

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def node(cpus: float) -> dict[str, float]:
    return {"CPU": cpus, "session_engine_data": 1.0}


def cluster_of(monkeypatch: pytest.MonkeyPatch, *nodes: dict[str, float]) -> None:
    total = {key: sum(n.get(key, 0.0) for n in nodes) for key in {k for n in nodes for k in n}}
    monkeypatch.setattr(ray, "cluster_resources", lambda: total)


@pytest.mark.parametrize("name", ["cluster.example.yaml", "cluster.small.yaml"])
def test_cluster_configs_validate(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.ray.address == "auto" and config.placement.data_resource == "session_engine_data"


def test_the_small_config_runs_on_one_of_its_two_nodes_of_2_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(CONFIGS / "cluster.small.yaml")
    cluster_of(monkeypatch, node(2))  # what is left when either node is lost
    check_placement(config)


def test_the_example_config_needs_bigger_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(CONFIGS / "cluster.example.yaml")
    cluster_of(monkeypatch, node(2), node(2))
    with pytest.raises(ConfigError, match="placement settings reserve 26 CPU"):
        check_placement(config)


def test_summarizers_reserve_nothing_under_model_pass_off(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(CONFIGS / "cluster.example.yaml")
    models = config.models
    off = config.model_copy(
        update={
            "models": models.model_copy(
                update={"summarizer": models.summarizer.model_copy(update={"model_pass": "off"})}
            )
        }
    )
    workers = models.summarizer.workers * config.placement.model_cpus
    cluster_of(monkeypatch, node(26 - workers))  # all but what the summarizers would hold
    check_placement(off)
    with pytest.raises(ConfigError, match="placement settings reserve 26 CPU"):
        check_placement(config)
