"""The gateway in one process, for the fast path's tests: shards and memory in this process, a
clock that stands still (two apps told the same requests answer the same bytes), one API key."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI

from api.app import create_app
from engine.clock import ManualClock
from engine.config import EngineConfig, load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

AUTH = {"Authorization": "Bearer k"}


def app_in_process(
    config: EngineConfig | None = None, memory: type[LocalMemoryTransport] = LocalMemoryTransport
) -> FastAPI:
    """`memory`: the memory shards' class (a test's double that fails some ops)."""
    return create_app(
        config or load_config(),
        transport=lambda c: LocalTransport(c.shards, ManualClock()),
        memory=lambda c: memory(
            c.memory.shards, IndexParams(), lambda texts: np.ones((len(texts), 4), np.float32) / 2
        ),
        keys=KeyStore.from_spec("k=acme"),
    )
