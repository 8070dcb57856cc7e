"""`session-engine`: serve the HTTP API (starting or joining Ray), operate a running cluster
(status, drain, stop, rebalance), check a data directory offline, and manage API keys."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from engine import __version__
from engine.config import EngineConfig, load_config
from engine.errors import ConfigError, ModelMissing, StartupError
from engine.keys import KeyStore, add_key, ensure_default_key, list_keys, load_key_store, revoke_key
from engine.logs import setup_logging
from engine.models.files import check_models
from engine.storage.layout import claim_layout
from engine.storage.lock import write_atomically

log = logging.getLogger("session_engine")

RAY_ADDRESS_FILE = "ray-address"  # an embedded server's Ray, for the operator commands


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _prepare_ray_auth()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"session-engine: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A data directory or keys file that cannot be made or written (a full or read-only disk):
        # one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"session-engine: cannot use the disk: {exc.strerror or exc}{where}. Free space there "
            "(or make it writable) and start again.",
            file=sys.stderr,
        )
        return 2


def _serve(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        data_dir=args.data_dir,
        shards=args.shards,
        ray__address=args.ray_address,
    )
    setup_logging(config.log_level)
    # Shard actors run in other processes, with another working directory: hand them absolute paths.
    config = config.model_copy(update={"data_dir": config.data_dir.resolve()})
    embedded = not config.ray.address
    keys = None
    if embedded:
        # Fail fast on data the shard counts do not fit, and on a bad keys setting, before Ray starts.
        claim_layout(config.data_dir, config.shards, config.memory.shards, config.cluster_settings())
        keys = keys or _ensure_keys(config)  # joining: only once the cluster is known to be this one
    try:
        check_models(config.models.embedder.path, config.models.summarizer.path)
    except ModelMissing as exc:
        print(f"session-engine: {exc.message}", file=sys.stderr)
        return 2

    import uvicorn

    from api.app import RESOLVED_CONFIG_ENV, create_app
    from api.edge import PROTOCOL
    from api.metrics import MULTIPROC_ENV
    from engine.runtime import ray_cluster, ray_host, ray_memory

    address = _connect(config)
    if address is None:
        return 2
    watch = None
    try:
        # Checked against the running cluster before anything is created (ConfigError: exit 2).
        cluster_id, created = ray_cluster.join_or_create(config)
        keys = keys or _ensure_keys(config)  # joining: only once the cluster is known to be this one
        # Memory and models first: the session shards resume unfinished summary jobs as they start.
        ray_memory.ensure_memory(config, cluster_id)
        ray_host.ensure_shards(config, cluster_id)
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
            "timeout_keep_alive": config.http.keep_alive_s,
        }
        _absorb_stop_signals()
        watch = ray_cluster.RayWatch(_stop_self).start()
        if config.workers == 1:
            uvicorn.run(create_app(config, keys=keys), **common)  # type: ignore[arg-type]
        else:
            # Worker processes join the Ray this process started and find the shards by name.
            resolved = config.model_copy(update={"ray": config.ray.model_copy(update={"address": address})})
            os.environ[RESOLVED_CONFIG_ENV] = resolved.to_env_json()
            # The workers' metrics go to files here, and each /metrics sums every worker's.
            metrics_dir = tempfile.mkdtemp(prefix="session-engine-metrics-")
            os.environ[MULTIPROC_ENV] = metrics_dir
            try:
                uvicorn.run("api.app:app_from_env", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]
            finally:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        watch.stop()
        if watch.lost:
            print("session-engine: lost the Ray cluster; stopped serving", file=sys.stderr)
            os._exit(1)  # Ray's own shutdown would wait for a control store that is gone
        if embedded:
            # This process owns the actors: final snapshots, locks released, actors removed.
            ray_cluster.stop(config)
            with contextlib.suppress(OSError):
                (config.data_dir / RAY_ADDRESS_FILE).unlink(missing_ok=True)
    except StartupError as exc:
        print(f"session-engine: {exc}", file=sys.stderr)
        return 1
    finally:
        if watch is None or not watch.lost:
            ray_host.disconnect()
    return 0


def _ensure_keys(config: EngineConfig) -> KeyStore:
    new_key = ensure_default_key(config)
    if new_key is not None:
        _announce_key(new_key, config)
    return load_key_store(config)


def _ray_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _prepare_ray_auth() -> None:
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


def _connect(config: EngineConfig) -> str | None:
    """Start or join Ray; a cluster that refuses this process (no token) is one line, not a traceback."""
    from ray.exceptions import AuthenticationError

    from engine.runtime import ray_host

    token = _ray_token_path()
    try:
        address = ray_host.connect(config)
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


# -- operator commands: they join the cluster's Ray as a driver and read or change its actors ----


OperatorCommand = Callable[[argparse.Namespace, EngineConfig], int]


def _operator(command: OperatorCommand) -> Callable[[argparse.Namespace], int]:
    """An operator command: joined to the cluster's Ray, given the running cluster's config, and
    any failure on the way (an actor that does not answer, a move that cannot be made) one line."""

    def run(args: argparse.Namespace) -> int:
        from ray.exceptions import RayError

        config = _operator_config(args)
        if config is None:
            return 2
        try:
            return command(args, config)
        except (RayError, StartupError) as exc:
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            print(f"session-engine {args.command}: {last}", file=sys.stderr)
            return 1

    return run


def _operator_config(args: argparse.Namespace) -> EngineConfig | None:
    """Join the cluster's Ray (the address from --ray-address, the config, or the file an
    embedded server writes in its data directory) and return the running cluster's config."""
    from engine.runtime import ray_cluster

    config = load_config(args.config, data_dir=args.data_dir, ray__address=args.ray_address)
    address = config.ray.address
    if not address:
        path = config.data_dir / RAY_ADDRESS_FILE
        if not path.exists():
            print(
                f"session-engine: no cluster address: pass --ray-address (auto on a cluster node), or "
                f"--data-dir of a running embedded server ({path} is not there)",
                file=sys.stderr,
            )
            return None
        address = path.read_text().strip()
    joined = config.model_copy(update={"ray": config.ray.model_copy(update={"address": address})})
    if _connect(joined) is None:
        return None
    running = ray_cluster.running_config(config.ray.namespace)
    if running is None:
        print(f"session-engine: no cluster runs in Ray namespace {config.ray.namespace!r}", file=sys.stderr)
        return None
    return running


@_operator
def _status(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import ray_cluster

    found = ray_cluster.status(config)
    if args.json:
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        print(_status_text(found))
    unhealthy = [
        a
        for a in found["actors"]
        if a.get("ray_state") != "ALIVE" or _shard_state(a) not in (None, "serving")
    ]
    return 3 if unhealthy else 0


def _shard_state(actor: dict[str, Any]) -> str | None:
    described = actor.get("described") or {}
    state = described.get("state")
    return str(state) if state is not None else ("unreachable" if "error" in described else None)


def _status_text(found: dict[str, Any]) -> str:
    lines = ["NODE          IP               ALIVE  RESOURCES"]
    for node in found["nodes"]:
        resources = ", ".join(f"{k}={v:g}" for k, v in sorted(node["resources"].items()) if "node:" not in k)
        lines.append(f"{node['node_id'][:12]:<13} {node['ip']:<16} {node['alive']!s:<6} {resources}")
    header = ("ACTOR", "RAY", "NODE", "RESTARTS", "STATE", "EPOCH", "HOLDS", "LOG", "SNAP AGE")
    lines += ["", _STATUS_ROW.format(*header) + "  LOCK"]
    for a in found["actors"]:
        d = a.get("described") or {}
        holds = d.get("sessions", d.get("vectors", ""))
        log_bytes = d.get("log_bytes")
        age = d.get("snapshot_age_s")
        lock = f"pid {d['pid']}@{d['host']}" if "pid" in d and "epoch" in d else ""
        row = (
            a["name"],
            a.get("ray_state", ""),
            (a.get("node_id") or "")[:12],
            a.get("restarts", ""),
            _shard_state(a) or "",
            d.get("epoch") or "",
            holds,
            "" if log_bytes is None else _size(log_bytes),
            "" if age is None else f"{age:.0f} s",
        )
        lines.append(_STATUS_ROW.format(*row) + f"  {lock}")
        if d.get("reason"):
            lines.append(f"    refused: {d['reason']}")
    return "\n".join(lines)


_STATUS_ROW = "{:<20} {:<10} {:<13} {:>8} {:<10} {:>5} {:>10} {:>10} {:>9}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@_operator
def _drain(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import ray_cluster

    answers = ray_cluster.drain(config, on=not args.undo)
    states = Counter(str(a.get("state")) for a in answers)
    print(f"{len(answers)} shards: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    return 0


@_operator
def _stop(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import ray_cluster

    ray_cluster.stop(config)
    print(
        "stopped: every shard drained, took its final snapshot and released its directory; the "
        "cluster's actors are removed. Gateways still running answer 503 until they are stopped.",
        file=sys.stderr,
    )
    return 0


@_operator
def _rebalance(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import ray_cluster

    moves = ray_cluster.rebalance(config, dry_run=args.dry_run)
    if not moves:
        print("balanced: no node hosts two shards more than another")
    return 0


def _check(args: argparse.Namespace) -> int:
    from engine.storage.check import CLEAN, REFUSED, check_data_dir

    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"session-engine: {data_dir} is not a directory", file=sys.stderr)
        return 2
    reports = check_data_dir(data_dir)
    if args.json:
        print(orjson.dumps([r.as_dict() for r in reports], option=orjson.OPT_INDENT_2).decode())
    else:
        for report in reports:
            print("\n".join(report.lines()))
        if not reports:
            print(f"{data_dir}: no shard data (a start would begin empty)")
    verdicts = {r.verdict for r in reports}
    return REFUSED if REFUSED in verdicts else max(verdicts, default=CLEAN)


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


def _keys_file(args: argparse.Namespace) -> Path:
    return load_config(args.config, data_dir=args.data_dir, keys_file=args.keys_file).resolved_keys_file


def _keys_create(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    key = add_key(path, args.org)
    print(key)
    print(
        f"Created a key for organization {args.org!r}; its hash is in {path}. "
        "A running server takes it within a second.",
        file=sys.stderr,
    )
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    listed = list_keys(path)
    for entry in listed:
        created = entry["created_at"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created / 1000)) if created else "-"
        print(f"{entry['id']}  {entry['org']:<24}  created {when} UTC")
    if not listed:
        print(f"no keys in {path}", file=sys.stderr)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    try:
        revoked = revoke_key(_keys_file(args), args.id)
    except ConfigError as exc:
        print(f"session-engine: {exc}", file=sys.stderr)
        return 1
    print(
        f"Revoked key {revoked['id']} of organization {revoked['org']!r}; a running server refuses it "
        "within a second.",
        file=sys.stderr,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="session-engine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"session-engine {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the HTTP API (and a local Ray unless --ray-address)")
    serve.add_argument("--config", type=Path, help="YAML config file, layered over configs/default.yaml")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--data-dir", type=Path, help="where keys and data live (default ./data)")
    serve.add_argument("--workers", type=int, help="gateway processes (default 1)")
    serve.add_argument("--shards", type=int, help="SessionShard actors (default 2)")
    serve.add_argument(
        "--ray-address", help="join this Ray cluster ('auto' or host:port) instead of starting one"
    )
    serve.set_defaults(func=_serve)

    check = commands.add_parser(
        "check",
        help="verify a data directory offline: what a start would use, cut, quarantine or refuse",
        description="Reads every shard directory as a start would, changing nothing. Exits 0 when "
        "all are consistent, 3 when a start would cut, quarantine or pass over something, 1 when a "
        "start would refuse.",
    )
    check.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.set_defaults(func=_check)

    operator = [
        (
            "status",
            _status,
            "every shard and model actor: node, restarts, epoch, lock, counts, log and snapshot age",
        ),
        ("drain", _drain, "every shard stops taking changes (reads go on) and takes a snapshot"),
        ("stop", _stop, "drain, final snapshots, locks released, the cluster's actors removed"),
        ("rebalance", _rebalance, "move shards, one at a time, onto nodes that host fewer (e.g. new ones)"),
    ]
    for name, func, text in operator:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path)
        command.add_argument(
            "--data-dir", type=Path, help="an embedded server's data directory (default ./data)"
        )
        command.add_argument(
            "--ray-address", help="the cluster's Ray: 'auto' on a cluster node, or host:port"
        )
        command.set_defaults(func=func, command=name)
        if name == "status":
            command.add_argument("--json", action="store_true", help="machine-readable")
        if name == "drain":
            command.add_argument("--undo", action="store_true", help="take changes again")
        if name == "rebalance":
            command.add_argument("--dry-run", action="store_true", help="print the moves, make none")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(required=True, metavar="ACTION")
    create = keys.add_parser("create", help="create a key for an organization and print it once")
    create.add_argument("--org", required=True, help="organization the key belongs to")
    listing = keys.add_parser("list", help="list the keys: id, organization, creation time")
    revoke = keys.add_parser("revoke", help="remove a key; a running server refuses it within a second")
    revoke.add_argument("id", help="the key's id from 'keys list' (its first 6 characters or more)")
    for command, func in ((create, _keys_create), (listing, _keys_list), (revoke, _keys_revoke)):
        command.add_argument("--config", type=Path)
        command.add_argument("--data-dir", type=Path)
        command.add_argument("--keys-file", type=Path)
        command.set_defaults(func=func)
    return parser


if __name__ == "__main__":
    sys.exit(main())
