"""A real gateway for the client's tests, joining the run's one local Ray."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.server import joined_server

KEYS = {f"org-client-{i}": f"key-client-{i}" for i in range(20)}
API_KEYS = ",".join(f"{key}={org}" for org, key in KEYS.items())


@pytest.fixture(scope="module")
def gateway(
    ray_address: str, servers_use_tiny_summarizer: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A gateway of its own (the restart test replaces its process), with what starts it again."""
    data_dir = tmp_path_factory.mktemp("client") / "data"
    env = {
        "SESSION_ENGINE_API_KEYS": API_KEYS,
        "SESSION_ENGINE_RAY__NAMESPACE": f"client-{uuid.uuid4().hex[:8]}",
    }
    state: dict[str, Any] = {"data_dir": data_dir, "env": env, "ray_address": ray_address}
    state["server"] = joined_server(data_dir, ray_address, env)
    try:
        yield state
    finally:
        state["server"].stop()


_keys = iter(KEYS.values())


@pytest.fixture
def key() -> str:
    """An API key of an organization no other test uses."""
    return next(_keys)
