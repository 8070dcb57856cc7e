"""`session-engine`: serve the HTTP API (starting or joining Ray), operate a running cluster
(status, drain, stop, rebalance), check a data directory offline, and manage API keys.

The command line sits above both layers it wires together, the engine (`engine/`) and the HTTP
API (`api/`), so that `engine/` never imports FastAPI."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from engine import __version__
from engine.config import load_config
from engine.errors import ConfigError
from engine.keys import add_key, list_keys, revoke_key

from . import operate
from . import serve as serving


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    serving.prepare_ray_auth()
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


def _check(args: argparse.Namespace) -> int:
    from engine.check import CLEAN, REFUSED, check_data_dir  # the stores and FAISS: only `check` reads them

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
    parser = argparse.ArgumentParser(prog="session-engine", description=(__doc__ or "").split("\n\n")[0])
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
        "--http-server", choices=["uvicorn", "granian"], help="the ASGI server (default uvicorn)"
    )
    serve.add_argument(
        "--ray-address", help="join this Ray cluster ('auto' or host:port) instead of starting one"
    )
    serve.set_defaults(func=serving.serve)

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
            operate.status,
            "every shard and model actor: node, restarts, epoch, lock, counts, log and snapshot age",
        ),
        ("drain", operate.drain, "every shard stops taking changes (reads go on) and takes a snapshot"),
        ("stop", operate.stop, "drain, final snapshots, locks released, the cluster's actors removed"),
        ("rebalance", operate.rebalance, "move shards one at a time onto nodes that host fewer (new ones)"),
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
