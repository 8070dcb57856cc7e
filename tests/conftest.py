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


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Started on first use, stopped at the end of the run; gateways under test join it."""
    import ray

    ray.init(
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


@pytest.fixture
def tmp_data(tmp_path: Path) -> Path:
    return tmp_path / "data"
