"""Connecting this process to Ray and disconnecting it: a Ray of its own when no address is
configured, else the configured cluster, reached once before `ray.init` so that a refused token
is one quick error."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import ray

from engine.config import EngineConfig


def connect(config: EngineConfig) -> str:
    """Start a local Ray (no address configured) or join the configured one; returns its address."""
    if not ray.is_initialized():
        with _stop_handler_kept():
            _init(config)
    return str(ray.get_runtime_context().gcs_address)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def preflight(address: str) -> None:
    """Reach the cluster's control store once before `ray.init`, which on a refused token would
    retry for a long while and then raise. Raises AuthenticationError or ConnectionError with Ray's
    reason at once."""
    # Ray's private internals, imported where they are used: a Ray that moves them breaks joining
    # a cluster by address, not every import of this module.
    from ray._private.services import canonicalize_bootstrap_address_or_die
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    GcsClient(address=canonicalize_bootstrap_address_or_die(address), cluster_id=None)


@contextlib.contextmanager
def _stop_handler_kept() -> Iterator[None]:
    """ray.init makes SIGTERM raise SystemExit in the main thread, wherever it is. A gateway
    worker connects in its app's startup, after its HTTP server set the handler that stops it
    gracefully; Ray's would cut the request in flight short (an answer of 500). The handler in
    place before, when Python set it, stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _init(config: EngineConfig) -> None:
    if config.ray.address:
        preflight(config.ray.address)
        ray.init(address=config.ray.address, namespace=config.ray.namespace, logging_level=logging.WARNING)
    else:
        ray.init(
            # "local": always a Ray of its own, never one that `ray start` left on this machine.
            address="local",
            namespace=config.ray.namespace,
            include_dashboard=False,
            object_store_memory=config.ray.object_store_mb * 1024 * 1024,
            _node_ip_address=config.ray.node_ip,
            logging_level=logging.WARNING,
        )
