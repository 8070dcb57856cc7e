from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run the core without Ray; starting one here is a mistake."""
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """The command line sets RAY_AUTH_MODE for the Ray it is about to start or join. Left set in
    this process, it would reach the Ray a later test in the same run starts, whose client read
    the mode when Ray was imported (here, above): the two would disagree on token auth."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
