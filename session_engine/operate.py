"""The operator commands (`status`, `drain`, `stop`, `rebalance`, `backup`): each joins the cluster's Ray as a
driver and reads or changes its actors (engine/runtime/operators.py does the work).

Ray is imported inside the commands, never at the top: Ray reads its auth mode when it is imported,
and `main` sets that first (serve.prepare_ray_auth); `keys` and `check` start without Ray."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from engine.config import EngineConfig, load_config
from engine.errors import StartupError

from .serve import RAY_ADDRESS_FILE, connect

OperatorCommand = Callable[[argparse.Namespace, EngineConfig], int]


def add_cluster_options(command: argparse.ArgumentParser) -> None:
    """The options every command that joins a running cluster takes: where its config and its Ray are."""
    command.add_argument("--config", type=Path)
    command.add_argument("--data-dir", type=Path, help="an embedded server's data directory (default ./data)")
    command.add_argument("--ray-address", help="the cluster's Ray: 'auto' on a cluster node, or host:port")


def _operator(command: OperatorCommand) -> Callable[[argparse.Namespace], int]:
    """An operator command: joined to the cluster's Ray, given the running cluster's config, and
    any failure on the way (an actor that does not answer, a move that cannot be made) one line."""

    def run(args: argparse.Namespace) -> int:
        from ray.exceptions import RayError  # Ray only once the command runs (module docstring)

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
    from engine.runtime import controller  # Ray only once the command runs (module docstring)

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
    if connect(joined) is None:
        return None
    running = controller.running_config(config.ray.namespace)
    if running is None:
        print(f"session-engine: no cluster runs in Ray namespace {config.ray.namespace!r}", file=sys.stderr)
        return None
    return running


@_operator
def status(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import operators  # Ray only once the command runs (module docstring)

    found = operators.status(config)
    if args.json:
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        print(_status_text(found))
    return 3 if unhealthy(found) else 0


# A shard serves; a model actor is loading its model (a start), idle or busy (a summarizer
# generating, texts waiting for the embedder): all of them are working as they should. A model
# that failed to load is not.
HEALTHY_STATES = (None, "serving", "loading", "idle", "busy")
# A summarizer the pool never created, since the model pass is off or was paused at the start
# (engine.runtime.operators.said_unstarted): as it should be, though Ray has no such actor.
NOT_STARTED_STATES = ("off", "paused")
# The actors (roles, as engine.runtime.names.actor_names gives them) that load a model. A
# summarizer loads its model in its constructor, so Ray shows it PENDING_CREATION until the load
# ends (tens of seconds at a start): that one is loading, not failing. A shard is never let off so.
MODEL_ROLES = ("embedder", "summarizer", "summarizer pool")


def unhealthy(found: dict[str, Any]) -> list[str]:
    """The names of the actors that make `status` exit 3: not alive in Ray (a model actor still
    being created is loading, and alive enough), not answering, or a shard that is not serving
    (draining, read-only, refused, fenced). A summarizer left off (the model pass is off or
    paused) is healthy."""
    return [
        a["name"]
        for a in found["actors"]
        if actor_state(a) not in NOT_STARTED_STATES
        and (
            (a.get("ray_state") != "ALIVE" and not _model_being_created(a))
            or actor_state(a) not in HEALTHY_STATES
        )
    ]


def _model_being_created(actor: dict[str, Any]) -> bool:
    return actor.get("ray_state") == "PENDING_CREATION" and actor.get("role") in MODEL_ROLES


def actor_state(actor: dict[str, Any]) -> str | None:
    """What the actor says it is doing; "loading" for a model actor Ray is still creating (its
    model loads in its constructor); "no answer" when it is alive but did not answer the probe in
    time, "unreachable" when the call failed."""
    if _model_being_created(actor):
        return "loading"
    described = actor.get("described") or {}
    state = described.get("state")
    if state is not None:
        return str(state)
    if "error" not in described:
        return None
    return "no answer" if described["error"] == "GetTimeoutError" else "unreachable"


def _work(described: dict[str, Any]) -> str:
    """What a busy model actor is doing, in words."""
    if "busy_s" in described:  # a summarizer
        return f"generating {described['generating']} summaries for {described['busy_s']:.0f} s"
    if "waiting_texts" in described:  # an embedder
        return f"{sum(described['waiting_texts'].values())} texts waiting"
    return f"{described.get('generating', 0)} summaries being made, {described.get('waiting', 0)} waiting"


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
            actor_state(a) or "",
            d.get("epoch") or "",
            holds,
            "" if log_bytes is None else _size(log_bytes),
            "" if age is None else f"{age:.0f} s",
        )
        lines.append(_STATUS_ROW.format(*row) + f"  {lock}")
        if d.get("reason"):
            lines.append(f"    refused: {d['reason']}")
        if d.get("state") == "busy":
            lines.append(f"    busy: {_work(d)}")
        if d.get("live_turns_waiting"):  # a session shard's turns live memory has not indexed yet
            lines.append(f"    live memory: {d['live_turns_waiting']} turns waiting to be indexed")
        if isinstance(d.get("model_pass"), dict):
            lines += _model_pass_lines(d["model_pass"])
    return "\n".join(lines)


def _model_pass_lines(found: dict[str, Any]) -> list[str]:
    """The summarizer pool's model pass (engine.closing.model_pass): its state, and why it is paused."""
    rate = found.get("acceptance")
    accepted = "no verdicts yet" if rate is None else f"acceptance {rate:.0%}"
    lines = [
        f"    model pass: {found.get('state')} (model_pass: {found.get('mode')}), "
        f"{found.get('kept')}/{found.get('judged')} kept of the last {found.get('window')} judged, {accepted}"
    ]
    if found.get("why"):
        lines.append(f"    paused: {found['why']}")
    if found.get("resume"):
        lines.append(f"    to resume: {found['resume']}")
    return lines


_STATUS_ROW = "{:<20} {:<10} {:<13} {:>8} {:<10} {:>5} {:>10} {:>10} {:>9}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@_operator
def drain(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import operators  # Ray only once the command runs (module docstring)

    answers = operators.drain(config, on=not args.undo)
    states = Counter(str(a.get("state")) for a in answers)
    print(f"{len(answers)} shards: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    return 0


@_operator
def stop(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import operators  # Ray only once the command runs (module docstring)

    operators.stop(config)
    print(
        "stopped: every shard drained, took its final snapshot and released its directory; the "
        "cluster's actors are removed. Gateways still running answer 503 until they are stopped.",
        file=sys.stderr,
    )
    return 0


@_operator
def rebalance(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.runtime import operators  # Ray only once the command runs (module docstring)

    moves = operators.rebalance(config, dry_run=args.dry_run)
    if not moves:
        print("balanced: no node hosts two shards more than another")
    return 0


@_operator
def backup(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.backup.take import take_backup  # Ray only once the command runs (module docstring)
    from engine.runtime import backups  # Ray only once the command runs (module docstring)

    if args.incremental != (args.previous is not None):
        print("session-engine backup: --incremental and --from PREVIOUS go together", file=sys.stderr)
        return 2
    taken = asyncio.run(
        take_backup(
            args.dest,
            backups.shard_sources(config),
            backups.layout(config),
            previous=args.previous,
            keys_file=config.resolved_keys_file,
            max_bytes_s=None if args.max_rate is None else args.max_rate * 2**20,
        )
    )
    manifest = taken.manifest
    if args.json:
        print(orjson.dumps({**manifest.as_dict(), "bytes": taken.bytes, "seconds": taken.seconds}).decode())
        return 0
    kind = f"incremental from {args.previous}" if args.previous is not None else "full"
    print(f"backup {manifest.backup_id} ({kind}) of cluster {manifest.cluster_id} in {args.dest}")
    for shard in manifest.shards:
        held = f"snapshot at {shard.snapshot_lsn}, " if shard.snapshot_lsn else ""
        print(f"  {shard.directory}: {held}log to record {shard.lsn} ({len(shard.files)} files)")
    rate = taken.bytes / 2**20 / taken.seconds if taken.seconds > 0 else 0.0
    print(f"{_size(taken.bytes)} in {taken.seconds:.1f} s ({rate:.1f} MiB/s)")
    return 0
