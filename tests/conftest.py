"""Shared by the integration and crash suites: one real local Ray for the whole test run."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath)).as_posix()
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/crash/" in path:
            item.add_marker(pytest.mark.crash)
        if "/tests/cluster/" in path:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Started on first use, stopped at the end of the run; gateways under test join it."""
    import ray

    ray.init(
        address="local",  # a Ray of its own, whatever other Ray runs here
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024 * 1024,
        namespace="tests",
        logging_level=logging.WARNING,
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _retire_joined_actors() -> Iterator[None]:
    """After each test, the actors of joined gateways that have all stopped are removed from the
    run's Ray: a joined gateway leaves them for the next one, and a run that kept every test's
    shards and models piled up workers until Ray killed some for memory on a 24 GiB machine."""
    yield
    ray = sys.modules.get("ray")  # never imported here: tests without Ray do not load it
    if ray is None or not ray.is_initialized():
        return
    from benchmarks.server import ServerProcess, retired_namespaces  # same cause as above

    retired = retired_namespaces()
    if not retired:
        return
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] in retired:
            with contextlib.suppress(ValueError):  # gone meanwhile
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    ServerProcess.started[:] = [
        s for s in ServerProcess.started if s.env.get("SESSION_ENGINE_RAY__NAMESPACE") not in retired
    ]


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random T5 saved as a local transformers directory: a real seq2seq summarizer."""
    from tests.support.tiny_models import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def servers_use_tiny_summarizer(tiny_t5: Path) -> Iterator[None]:
    """Every server the tests start summarizes with the tiny T5, not the default SmolLM2, and
    expires due sessions every 0.1 s, so TTL tests wait less."""
    from benchmarks.server import ServerProcess

    ServerProcess.base_env = {
        "SESSION_ENGINE_MODELS__SUMMARIZER__PATH": str(tiny_t5),
        "SESSION_ENGINE_EXPIRY_TICK_S": "0.1",
    }
    try:
        yield
    finally:
        ServerProcess.base_env = {}


@pytest.fixture
def tmp_data(tmp_path: Path) -> Path:
    return tmp_path / "data"
