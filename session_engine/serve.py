"""`session-engine serve`: start or join Ray, create or join the cluster's actors, and run the
gateway (uvicorn, one or several worker processes) until a stop signal or the loss of Ray.

Ray and the gateway are imported inside the functions that use them, never at the top: Ray reads
its auth mode when it is imported, and `main` sets that first (prepare_ray_auth); `keys` and
`check`, which import this module too, start without Ray, FastAPI and uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from engine.config import EngineConfig, load_config
from engine.errors import ModelMissing, StartupError
from engine.keys import KeyStore, ensure_default_key, load_key_store
from engine.logs import setup_logging
from engine.models.files import check_models
from engine.storage.layout import claim_layout
from engine.storage.lock import write_atomically

log = logging.getLogger("session_engine")

RAY_ADDRESS_FILE = "ray-address"  # an embedded server's Ray, for the operator commands


def serve(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        data_dir=args.data_dir,
        shards=args.shards,
        ray__address=args.ray_address,
        http__server=args.http_server,
    )
    setup_logging(config.log_level)
    # Shard actors run in other processes, with another working directory: hand them absolute paths.
    config = config.model_copy(update={"data_dir": config.data_dir.resolve()})
    embedded = not config.ray.address
    keys = None
    if embedded:
        # Fail fast on data the shard counts do not fit, and on a bad keys setting, before Ray starts.
        claim_layout(config.data_dir, config.shards, config.memory.shards, config.cluster_settings())
        keys = _ensure_keys(config)
    try:
        check_models(config.models.embedder.path, config.models.summarizer.path)
    except ModelMissing as exc:
        print(f"session-engine: {exc.message}", file=sys.stderr)
        return 2

    # The gateway and Ray only once the command runs (module docstring), and after the checks above.
    import uvicorn

    # The same cause as for uvicorn above.
    from api.app import RESOLVED_CONFIG_ENV, create_app
    from api.edge import PROTOCOL
    from api.metrics import MULTIPROC_ENV
    from engine.runtime import controller, memory_shards, operators, ray_cluster, session_shards
    from engine.runtime.ray_actors import wait_started
    from engine.runtime.watch import RayWatch

    address = connect(config)
    if address is None:
        return 2
    watch = None
    try:
        # Checked against the running cluster before anything is created (ConfigError: exit 2).
        cluster_id, created = controller.join_or_create(config)
        keys = keys or _ensure_keys(config)  # joining: only once the cluster is known to be this one
        # The session shards' processes first (Ray starts a few workers at a time), then memory and
        # the models by name without waiting for them: a session shard that resumes a summary job
        # finds them, and the job waits while they load. Sessions are served once the session
        # shards have recovered; /readyz says what is still loading (docs/operations.md).
        created_shards = session_shards.create_shards(config, cluster_id)
        memory_shards.ensure_memory(config, cluster_id)
        wait_started(created_shards, "shard", timeout_s=600)
        if embedded:
            _write_ray_address(config.data_dir, address)
        log.info(
            "serving",
            extra={
                "url": f"http://{config.host}:{config.port}",
                "shards": config.shards,
                "ray": address,
                "cluster_id": cluster_id,
                "created_cluster": created,
            },
        )
        common = {
            "host": config.host,
            "port": config.port,
            "log_config": None,
            "access_log": False,
            "timeout_graceful_shutdown": 30,  # finish in-flight requests, then stop
            "http": PROTOCOL,  # bounded connections, headers and read times (api/edge.py)
            "ws": "none",  # no WebSocket routes: an Upgrade header is served as plain HTTP
            "timeout_keep_alive": config.http.keep_alive_s,
        }
        _absorb_stop_signals()
        watch = RayWatch(_stop_self).start()
        if config.workers == 1 and config.http.server == "uvicorn":
            uvicorn.run(create_app(config, keys=keys), **common)  # type: ignore[arg-type]
        else:
            # Worker processes join the Ray this process started and find the shards by name.
            resolved = config.model_copy(update={"ray": config.ray.model_copy(update={"address": address})})
            os.environ[RESOLVED_CONFIG_ENV] = resolved.to_env_json()
            # The workers' metrics go to files here, and each /metrics sums every worker's.
            metrics_dir = tempfile.mkdtemp(prefix="session-engine-metrics-")
            os.environ[MULTIPROC_ENV] = metrics_dir
            try:
                if config.http.server == "granian":
                    _run_granian(config)
                else:
                    uvicorn.run("api.app:app_from_env", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]
            finally:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        watch.stop()
        if watch.lost:
            print("session-engine: lost the Ray cluster; stopped serving", file=sys.stderr)
            os._exit(1)  # Ray's own shutdown would wait for a control store that is gone
        if embedded:
            # This process owns the actors: final snapshots, locks released, actors removed.
            operators.stop(config)
            with contextlib.suppress(OSError):
                (config.data_dir / RAY_ADDRESS_FILE).unlink(missing_ok=True)
    except StartupError as exc:
        print(f"session-engine: {exc}", file=sys.stderr)
        return 1
    finally:
        if watch is None or not watch.lost:
            ray_cluster.disconnect()
    return 0


def _run_granian(config: EngineConfig) -> None:
    """The gateway workers on granian, until a stop signal: each imports the app as uvicorn's do."""
    # Only for `--http-server granian`: the default server's start does not import granian.
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    # granian starts its workers with the default start method, fork on Linux; a forked copy of
    # this process's Ray driver hangs. Spawned, each worker joins Ray afresh, as uvicorn's do.
    multiprocessing.set_start_method("spawn", force=True)
    Granian(
        "api.app:app_from_env",
        address=config.host,
        port=config.port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=config.workers,
        http=HTTPModes.http1,
        websockets=False,
        backpressure=config.http.max_connections,
        http1_settings=HTTP1Settings(header_read_timeout=round(config.http.header_timeout_s * 1000)),
        log_level="warning",  # type: ignore[arg-type]
        workers_kill_timeout=30,  # finish in-flight requests, then stop
    ).serve()


def _ensure_keys(config: EngineConfig) -> KeyStore:
    new_key = ensure_default_key(config)
    if new_key is not None:
        _announce_key(new_key, config)
    return load_key_store(config)


def _ray_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def prepare_ray_auth() -> None:
    """Ray 2.60 clusters use token authentication by default, but a process that joins one by
    address uses it only with RAY_AUTH_MODE=token, read when Ray is imported. Set it here, before
    that, when a token is at hand (as Ray does for a cluster it finds by itself)."""
    path = _ray_token_path()
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or path.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def _write_ray_address(data_dir: Path, address: str) -> None:
    """For the operator commands on this machine; a disk that refuses it must not stop the start
    (the shards serve reads read-only), so it is only a warning."""
    try:
        write_atomically(data_dir / RAY_ADDRESS_FILE, address.encode())
    except OSError as exc:
        log.warning("cannot write the Ray address for operator commands", extra={"error": str(exc)})


def connect(config: EngineConfig) -> str | None:
    """Start or join Ray; a cluster that refuses this process (no token) is one line, not a traceback."""
    # Ray only once the command runs (module docstring).
    from ray.exceptions import AuthenticationError

    # The same cause as for Ray's exceptions above.
    from engine.runtime import ray_cluster

    token = _ray_token_path()
    try:
        address = ray_cluster.connect(config)
    except (AuthenticationError, ConnectionError) as exc:
        reason = (
            str(exc).split(". Note:")[0].strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        )
        print(
            f"session-engine: cannot join the Ray cluster at {config.ray.address}: {reason[:200]}. "
            "On a token-auth cluster (Ray's default), put the cluster's token in ~/.ray/auth_token "
            "(mode 600) or RAY_AUTH_TOKEN",
            file=sys.stderr,
        )
        return None
    if token.is_file() and token.stat().st_mode & 0o077:
        log.warning(
            "the Ray token file can be read by other users of this machine; chmod 600 it",
            extra={"path": str(token), "mode": oct(token.stat().st_mode & 0o777)},
        )
    return address


def _stop_self() -> None:
    """Ray is gone: stop serving (uvicorn's graceful stop, as on SIGTERM), and exit for sure soon after."""
    os.kill(os.getpid(), signal.SIGTERM)
    timer = threading.Timer(45.0, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def _absorb_stop_signals() -> None:
    """uvicorn stops on SIGINT/SIGTERM, then raises the same signal again for the handler it found.
    Ray's driver handler would exit(15) there and skip the shards' final snapshots; this one lets
    serve return from uvicorn and finish its own shutdown."""

    def stop_requested(signum: int, frame: object) -> None:
        log.info("stop signal handled", extra={"signal": signal.Signals(signum).name})

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_requested)


def _announce_key(key: str, config: EngineConfig) -> None:
    # Printed once, to the terminal, never to the logs; only its hash is stored.
    print(
        f"\nCreated an API key for organization 'default' (only its hash is kept, in "
        f"{config.resolved_keys_file}):\n\n    {key}\n\n"
        f"Use it as 'Authorization: Bearer {key}'. It is not shown again.\n",
        file=sys.stderr,
        flush=True,
    )
