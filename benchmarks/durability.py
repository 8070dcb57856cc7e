"""Durability costs: snapshot size and pause, recovery time, and append throughput per fsync policy.

    python -m benchmarks.durability [--sessions 10000 100000] [--duration 10] [--skip-http]

Recovery and snapshots are measured on one shard's DurableShard directly (no Ray, no HTTP): N
sessions of 10 messages of ~100 characters written through the log, then the shard is opened the
way a SessionShard actor opens it (recovery from the log alone), snapshotted (size, time, and the
longest step: the pause the shard's traffic sees), and opened again (recovery from the snapshot).
Throughput goes through HTTP: the embedded server, once per fsync policy, loaded by wrk with
single-message appends on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.coalescing import HERE, machine, measure_appends
from engine.config import DurabilityConfig
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.storage.durable import DurableShard

MESSAGE = "an agent turn of about one hundred characters, the size the targets assume for each message."


def build(path: Path, sessions: int) -> int:
    """Write N sessions of 10 messages through the log (no snapshot); returns the log's size."""
    shard = DurableShard(path, DurabilityConfig(fsync="never"))
    batch: list[Any] = []
    for i in range(sessions):
        sid = new_session_id()
        batch.append(CreateSession("bench", sid, f"s{i}", 86_400, {"i": i}))
        batch.append(AppendMessages("bench", sid, tuple(NewMessage("user", MESSAGE) for _ in range(10))))
        if len(batch) >= 500:
            shard.apply_batch(batch)
            batch = []
    shard.apply_batch(batch)
    shard.close(snapshot=False)
    return sum(p.stat().st_size for p in path.glob("wal-*.log"))


def open_as_actor(path: Path) -> tuple[DurableShard, float]:
    """Open the shard the way a SessionShard actor does; returns it and how long recovery took."""
    started = time.perf_counter()
    shard = DurableShard(path, DurabilityConfig(snapshot_chunk_sessions=500), own_process=True)
    return shard, time.perf_counter() - started


def measure_recovery(sessions: int, work: Path) -> dict[str, Any]:
    path = work / f"shard-{sessions}"
    log_bytes = build(path, sessions)
    shard, from_log_s = open_as_actor(path)
    taken = shard.snapshot_now()
    shard.close(snapshot=False)
    shard, from_snapshot_s = open_as_actor(path)
    shard.close(snapshot=False)
    return {
        "sessions": sessions,
        "log_only_bytes": log_bytes,
        "recover_from_log_s": round(from_log_s, 2),
        "snapshot_bytes": taken.bytes,
        "snapshot_s": round(taken.seconds, 2),
        "snapshot_longest_pause_ms": round(taken.longest_step_ms, 1),
        "recover_from_snapshot_s": round(from_snapshot_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--duration", type=int, default=10, help="seconds of HTTP load per fsync policy")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--skip-http", action="store_true", help="only recovery and snapshots")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "durability.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d"), "recovery": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sessions:
            report["recovery"].append(measure_recovery(n, Path(tmp)))
            print(json.dumps(report["recovery"][-1]))
        if not args.skip_http:
            report["append_by_fsync"] = {
                policy: measure_appends(
                    {"SESSION_ENGINE_DURABILITY__FSYNC": policy},
                    Path(tmp) / policy,
                    args.duration,
                    args.connections,
                )
                for policy in ("always", "everysec", "never")
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {report['machine']}\n")
    print(
        "| sessions (10 msgs) | log alone | recover from log | snapshot | longest pause | recover from it |"
    )
    print("|---|---|---|---|---|---|")
    for r in report["recovery"]:
        print(
            f"| {r['sessions']:,} | {r['log_only_bytes'] / 2**20:.0f} MiB | {r['recover_from_log_s']} s "
            f"| {r['snapshot_bytes'] / 2**20:.0f} MiB in {r['snapshot_s']} s "
            f"| {r['snapshot_longest_pause_ms']} ms | {r['recover_from_snapshot_s']} s |"
        )
    if "append_by_fsync" in report:
        print("\n| fsync | appends/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
        for policy, r in report["append_by_fsync"].items():
            rps, p50, p99 = r["requests_per_s"], r["p50_ms"], r["p99_ms"]
            print(f"| {policy} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {r['errors']:.0f} |")


if __name__ == "__main__":
    main()
