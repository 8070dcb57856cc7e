"""`session-engine`: serve the HTTP API (starting or joining Ray), and manage API keys."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from engine import __version__
from engine.config import ConfigError, EngineConfig, load_config
from engine.errors import ModelMissing
from engine.keys import add_key, ensure_default_key, list_keys, load_key_store, revoke_key
from engine.logs import setup_logging
from engine.models.files import check_models
from engine.storage.layout import claim_layout

log = logging.getLogger("session_engine")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    claim_layout(config.data_dir, config.shards, config.memory.shards)
    new_key = ensure_default_key(config)
    if new_key is not None:
        _announce_key(new_key, config)
    keys = load_key_store(config)  # fail fast on a bad keys setting, before Ray starts
    try:
        check_models(config.models.embedder.path, config.models.summarizer.path)
    except ModelMissing as exc:
        print(f"session-engine: {exc.message}", file=sys.stderr)
        return 2

    import uvicorn

    from api.app import RESOLVED_CONFIG_ENV, create_app
    from api.edge import PROTOCOL
    from engine.runtime import ray_host, ray_memory
    from engine.runtime.ray_actors import StartupError

    address = ray_host.connect(config)
    embedded = not config.ray.address
    try:
        # Memory and models first: the session shards resume unfinished summary jobs as they start.
        memory = ray_memory.ensure_memory(config)
        shards = ray_host.ensure_shards(config)
        log.info(
            "serving",
            extra={"url": f"http://{config.host}:{config.port}", "shards": config.shards, "ray": address},
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
        if config.workers == 1:
            uvicorn.run(create_app(config, keys=keys), **common)  # type: ignore[arg-type]
        else:
            # Worker processes join the Ray this process started and find the shards by name.
            resolved = config.model_copy(update={"ray": config.ray.model_copy(update={"address": address})})
            os.environ[RESOLVED_CONFIG_ENV] = resolved.to_env_json()
            uvicorn.run("api.app:app_from_env", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]
        if embedded:
            # This process owns the actors: final snapshots, locks released. Session shards first,
            # so no summary job is half-way through the memory when it stops.
            ray_host.stop_shards(shards)
            ray_memory.stop_memory(memory)
    except StartupError as exc:
        print(f"session-engine: {exc}", file=sys.stderr)
        return 1
    finally:
        ray_host.disconnect()
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
