"""`session-engine status` on model actors at work, on a real local Ray: a summarizer busy in a
generate call answers the probe (busy, and with what), and status counts it as working, not as an
actor that does not answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from engine.config import EngineConfig
from engine.models.summarizer import Conversation
from engine.runtime import operators
from engine.runtime.model_actors import SummarizerPool
from engine.runtime.names import POOL_NAME, SUMMARIZER_NAME
from engine.runtime.ray_actors import create_named, wait_started
from session_engine.operate import actor_state, unhealthy

PROBE_TIMEOUT_S = 2.0  # the status probe's patience here; a generate call below lasts far longer


@pytest.fixture
def pool(ray_address: str, tiny_t5: Path, tmp_path: Path) -> Iterator[tuple[EngineConfig, Any]]:
    """A summarizer pool with one summarizer, in a namespace of its own, that writes the longest
    summaries it may: the tiny model then generates for many seconds a batch."""
    config = EngineConfig(
        data_dir=tmp_path,
        ray={"namespace": f"status-{uuid.uuid4().hex[:8]}"},
        models={"summarizer": {"path": tiny_t5, "min_new_tokens": 4096, "max_new_tokens": 4096}},
    )
    handle = create_named(SummarizerPool, POOL_NAME, config, config, role="control")
    wait_started([handle], "summarizer pool", timeout_s=300)
    try:
        yield config, handle
    finally:
        ray.get(handle.shutdown.remote(), timeout=60)
        ray.kill(handle, no_restart=True)


def test_a_summarizer_busy_generating_shows_as_busy_and_keeps_status_healthy(
    pool: tuple[EngineConfig, Any],
) -> None:
    config, handle = pool
    conversation = Conversation("long", ((0, "user", "tell me everything"), (1, "assistant", "ok")), 2)
    for _ in range(3):  # the pool's shutdown, after the test, drops them
        handle.upgrade.remote(conversation)
    deadline = time.monotonic() + 60
    while True:  # the pool hands the first job to the summarizer at once
        found = operators.status(config, probe_timeout_s=PROBE_TIMEOUT_S)
        actors = {a["name"]: a for a in found["actors"]}
        summarizer = actors[SUMMARIZER_NAME.format(index=0)]
        if actor_state(summarizer) != "idle" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert actor_state(summarizer) == "busy", summarizer
    assert summarizer["described"]["generating"] >= 1 and summarizer["described"]["busy_s"] >= 0
    described_pool = actors[POOL_NAME]["described"]
    assert described_pool["state"] == "busy" and described_pool["generating"] >= 1
    assert described_pool["workers"][0]["state"] == "busy"
    assert (
        described_pool["model_pass"]["state"] == "active" and described_pool["model_pass"]["mode"] == "auto"
    )
    # The cluster's shards and the embedder are not in this namespace (missing); the model actors
    # at work are not among what makes status exit 3.
    bad = unhealthy(found)
    assert SUMMARIZER_NAME.format(index=0) not in bad and POOL_NAME not in bad
