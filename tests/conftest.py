"""Shared by the integration and crash suites: one real local Ray for the whole test run."""

from __future__ import annotations

import logging
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
