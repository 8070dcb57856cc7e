"""`session-engine`: serve the HTTP API (starting or joining Ray), operate a running cluster
(status, drain, stop, rebalance, backup), check a data directory or a backup offline, restore a
backup, and manage API keys.

The command line sits above both layers it wires together, the engine (`engine/`) and the HTTP
API (`api/`), so that `engine/` never imports FastAPI."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import orjson

from engine import __version__
from engine.backup import restore
from engine.backup.manifest import BackupRefused, is_backup
from engine.config import load_config
from engine.errors import ConfigError
from engine.keys import add_key, list_keys, revoke_key

from . import operate
from . import serve as serving
from .transfer import add_commands as add_transfer_commands


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
    if is_backup(data_dir):
        return _check_backup(args)
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


def _check_backup(args: argparse.Namespace) -> int:
    try:
        found = restore.verify(args.data_dir, archive=args.archive)
    except BackupRefused as exc:
        if args.json:
            refused = {"backup": str(args.data_dir), "verdict": "refused", "refused": str(exc)}
            print(orjson.dumps(refused).decode())
        else:
            print(f"{args.data_dir} (backup)\n  REFUSED: {exc}")
        return 1
    if args.json:
        print(orjson.dumps({"backup": str(args.data_dir), "verdict": "clean", **found.as_dict()}).decode())
        return 0
    print(f"{args.data_dir} (backup of cluster {found.cluster_id}: {' <- '.join(found.backups[::-1])})")
    for shard in found.shards:
        source = f"snapshot at record {shard.snapshot_lsn}" if shard.snapshot_lsn else "no snapshot"
        archived = f" ({shard.from_archive} from the archive)" if args.archive is not None else ""
        print(f"  ok: {shard.directory}: {source}, then {shard.records} records{archived}, to {shard.lsn}")
    print(f"  every checksum matches ({found.bytes_read} bytes read)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    until = _moment(args.until) if args.until is not None else None
    done = restore.restore(args.backup, args.data_dir, archive=args.archive, until_ms=until)
    if args.json:
        print(orjson.dumps(done.as_dict()).decode())
        return 0
    print(f"restored {args.data_dir} from {' <- '.join(done.backups[::-1])} as cluster {done.cluster_id}")
    if done.until_ms is not None:
        moment = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(done.until_ms / 1000))
        print(f"  every shard as of {done.until_ms} ({moment} UTC)")
    for shard in done.shards:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(shard.last_ts / 1000)) + " UTC"
            if shard.last_ts is not None
            else "its snapshot"
        )
        archived = f", {shard.from_archive} from the archive" if args.archive is not None else ""
        replayed = f"{shard.records} records replayed{archived}"
        print(f"  {shard.directory}: to record {shard.lsn} ({when}; {replayed})")
    print(f"{done.bytes_read} bytes read in {done.seconds:.1f} s; start the server on {args.data_dir}")
    return 0


def _positive(text: str) -> float:
    """A positive, finite number (argparse's type for --max-rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _moment(text: str) -> int:
    """--until: milliseconds since the epoch, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--until {text!r} is neither milliseconds since the epoch nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


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
    check.add_argument("data_dir", type=Path, metavar="DATA_DIR|BACKUP")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.add_argument("--archive", type=Path, help="a backup's log archive, checked with it")
    check.set_defaults(func=_check)

    restoring = commands.add_parser(
        "restore",
        help="rebuild a data directory from a backup (and its log archive, to a moment)",
        description="Copies the backup (and the backups it is incremental from) into a new or empty "
        "data directory, every checksum verified, and replays the log archive up to --until. Refuses, "
        "changing nothing, a non-empty target, a damaged backup, another cluster's archive, or a gap "
        "in the log.",
    )
    restoring.add_argument("backup", type=Path, metavar="BACKUP")
    restoring.add_argument("--data-dir", type=Path, required=True, help="the new data directory")
    restoring.add_argument("--archive", type=Path, help="the log archive (durability.archive_dir)")
    restoring.add_argument(
        "--until", metavar="EPOCH_MS|ISO", help="stop before the first change logged after this moment"
    )
    restoring.add_argument("--json", action="store_true", help="machine-readable")
    restoring.set_defaults(func=_restore)

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
        operate.add_cluster_options(command)
        command.set_defaults(func=func, command=name)
        if name == "status":
            command.add_argument("--json", action="store_true", help="machine-readable")
        if name == "drain":
            command.add_argument("--undo", action="store_true", help="take changes again")
        if name == "rebalance":
            command.add_argument("--dry-run", action="store_true", help="print the moves, make none")
    add_transfer_commands(commands)  # export and import: operator commands too

    backup = commands.add_parser(
        "backup",
        help="copy every shard of a running cluster into DEST while it takes writes",
        description="Each shard is cut at its last log record and copied with the checksums of its "
        "files into DEST (new or empty), with a manifest written last. --incremental --from PREVIOUS "
        "copies only what is new since an earlier backup.",
    )
    backup.add_argument("dest", type=Path, metavar="DEST")
    backup.add_argument("--incremental", action="store_true", help="only what is new since --from")
    backup.add_argument("--from", dest="previous", type=Path, metavar="PREVIOUS", help="the earlier backup")
    backup.add_argument(
        "--max-rate",
        type=_positive,
        metavar="MIB_S",
        help="copy at most this many MiB a second (default: any)",
    )
    backup.add_argument("--json", action="store_true", help="print the manifest as JSON")
    operate.add_cluster_options(backup)
    backup.set_defaults(func=operate.backup, command="backup")

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
