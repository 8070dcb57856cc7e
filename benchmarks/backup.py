"""Backup, restore and export of N messages on the embedded default, against what each is
compared with (the targets in benchmarks/README.md, "Backup, restore and export"):

1. data: N messages (sessions of PER_SESSION ~100-character messages, with a context) written
   offline into a fresh data directory through the real stores, in the shards the gateway routes
   them to (benchmarks.scenarios.build_engine_data), then `session-engine serve` started on it;
2. appends while a backup runs: single-message appends at a fixed rate, each latency counted from
   the moment the request was due (so a stall counts against every request it holds up), in
   windows of the same length alternating without and with `session-engine backup` (started
   DELAY_S into the window, and again into a fresh destination until the window ends): p50/p99 of
   each, p99 with ÷ p99 without, and each backup's MiB/s;
3. restore against recovery: `session-engine restore` of the last full backup into a new data
   directory, against the start of a server on the original directory after a graceful stop,
   timed to the first acknowledged append to a session that was there (benchmarks.restart's
   probe) and from each shard's own "shard recovered" log line;
4. export: GET /export of the organization streamed and counted (no other load), with the peak
   resident memory (VmRSS) of the gateway and of every shard process against their memory before it.

    python -m benchmarks.backup [--messages 1000000] [--window 30] [--rate 200] [--out DIR]

The default config (`make run`'s: 2 session shards, 2 memory shards, 1 gateway worker, fsync
always); the summarizer is the default model, as in benchmarks/restart.py. Load goes to
127.0.0.1 only, every load is bounded by its window, and everything is written under a temporary
directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

from benchmarks import restart, scenarios
from benchmarks.server import ServerProcess, default_summarizer
from benchmarks.stamp import describe, engine_config, machine

KEY, ORG = restart.KEY, restart.ORG
AUTH = {"Authorization": f"Bearer {KEY}"}
PER_SESSION = 50
CONTEXT = {"agent": "benchmark", "goal": "answer the user's questions about their account", "step": 0}
RATE = 200.0  # appends a second: a steady load well under what the gateway answers (benchmarks/README.md)
ROUNDS = 2  # windows with a backup, each between two without
APPEND_THREADS = 8
DELAY_S = 3.0  # into a window before its backup starts
SAMPLE_S = 0.1  # between two readings of the processes' memory during the export
TARGETS = {"p99_ratio": 1.5, "restore_ratio": 2.0, "export_messages_per_s": 50_000}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds or [0.0]) * 1000
    return {
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
        "max_ms": round(float(ms.max()), 2),
    }


def paced_appends(url: str, sessions: list[str], rate: float, duration_s: float) -> dict[str, Any]:
    """`rate` single-message appends a second for `duration_s`, spread over APPEND_THREADS
    threads each holding one connection; each latency from the moment its request was due, so a
    stall counts against every request it holds up. (benchmarks.hardening's open loop, a task per
    append on one event loop, fell behind its rate on the 2-core machine with other work on it:
    benchmarks/RESULTS.md, "Backup, restore and export".)"""
    body = orjson.dumps({"role": "user", "content": scenarios.MESSAGE})
    headers = {**AUTH, "Content-Type": "application/json"}
    latencies: list[list[float]] = [[] for _ in range(APPEND_THREADS)]
    errors = [0] * APPEND_THREADS
    t0 = time.monotonic() + 0.2
    total = int(rate * duration_s)

    def worker(i: int) -> None:
        pick = random.Random(i)
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for k in range(i, total, APPEND_THREADS):
                due = t0 + k / rate
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    ok = client.post(f"/sessions/{pick.choice(sessions)}/messages", content=body).status_code
                except httpx.HTTPError:
                    ok = 0
                latencies[i].append(time.monotonic() - due)
                errors[i] += ok != 201

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(APPEND_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - t0
    done = [s for each in latencies for s in each]
    return {
        "load_average": round(os.getloadavg()[0], 1),  # the machine's, over the last minute
        "requests": len(done),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(done) / seconds, 1),
        "errors": sum(errors),
        **_percentiles(done),
    }


def cli(env: dict[str, str], *args: str) -> tuple[dict[str, Any], float]:
    """`session-engine ARGS --json` under the server's environment: its JSON answer and the
    command's wall seconds (its Python start and Ray connection included)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}
    full_env |= {**ServerProcess.base_env, **env}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "session_engine", *args, "--json"],
        env=full_env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"session-engine {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall_s


class Backups(threading.Thread):
    """Full backups of the server's data one after another, each into a fresh destination, from
    DELAY_S into a window until its end; keeps only the last one on disk."""

    def __init__(
        self, data: Path, env: dict[str, str], work: Path, window_t0: float, until: float, extra: list[str]
    ) -> None:
        super().__init__(name="backups", daemon=True)
        self.data, self.env, self.work, self.extra = data, env, work, extra
        self.window_t0, self.until = window_t0, until
        self.taken: list[dict[str, Any]] = []
        self.last: Path | None = None
        self.failed: Exception | None = None

    def run(self) -> None:
        delay_s = min(DELAY_S, (self.until - self.window_t0) / 4)
        time.sleep(max(0.0, self.window_t0 + delay_s - time.monotonic()))
        try:
            while not self.taken or time.monotonic() < self.until:
                dest = self.work / f"backup-{time.monotonic_ns()}"
                began = time.monotonic() - self.window_t0
                answer, wall_s = cli(self.env, "backup", str(dest), "--data-dir", str(self.data), *self.extra)
                self.taken.append(
                    {
                        "from_s": round(began, 2),
                        "to_s": round(time.monotonic() - self.window_t0, 2),
                        "bytes": answer["bytes"],
                        "seconds": round(answer["seconds"], 2),
                        "wall_s": round(wall_s, 2),
                        "mib_per_s": round(answer["bytes"] / 2**20 / answer["seconds"], 1),
                    }
                )
                if self.last is not None:
                    shutil.rmtree(self.last)
                self.last = dest
        except (
            RuntimeError,
            OSError,
            ValueError,
            subprocess.SubprocessError,
        ) as exc:  # the window reports it
            self.failed = exc


def appends_and_backups(
    server: ServerProcess, data: Path, env: dict[str, str], work: Path, sessions: list[str], args: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """A warm-up (not measured), then windows alternating without and with backups, `args.rounds`
    of each and one more without; the warm-up, the windows, and the last backup's path."""
    warm_up = paced_appends(server.url, sessions, args.rate, min(2.0, args.window))
    windows = []
    last: Path | None = None
    for round_ in range(args.rounds):
        for backed_up in (False, True):
            t0 = time.monotonic()
            extra = [] if args.backup_max_rate is None else ["--max-rate", str(args.backup_max_rate)]
            backups = Backups(data, env, work, t0, t0 + args.window, extra) if backed_up else None
            if backups is not None:
                backups.start()
            row = {
                "round": round_ + 1,
                "backup": backed_up,
                **paced_appends(server.url, sessions, args.rate, args.window),
            }
            if backups is not None:
                backups.join()
                if backups.failed is not None:
                    raise RuntimeError("a backup failed") from backups.failed
                if last is not None and backups.last is not None:
                    shutil.rmtree(last)
                last = backups.last or last
                row["backups"] = backups.taken
            windows.append(row)
    if last is None:
        raise ValueError("--rounds must be at least 1")
    # One more window without a backup at the end, so each window with one lies between two without.
    windows.append(
        {
            "round": args.rounds + 1,
            "backup": False,
            **paced_appends(server.url, sessions, args.rate, args.window),
        }
    )
    return warm_up, windows, last


def process_ids(server: ServerProcess) -> dict[str, int]:
    """The gateway (the serve process itself, with one worker) and every shard's process."""
    found = {"gateway": server.proc.pid}
    counts: dict[str, int] = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            name = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for kind in ("SessionShard", "MemoryShard"):
            if name.startswith(f"ray::{kind}"):
                counts[kind] = counts.get(kind, 0) + 1
                found[f"{kind}-{counts[kind]}"] = proc.pid
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class RssPeaks(threading.Thread):
    """Each process's highest VmRSS, read every SAMPLE_S until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="rss", daemon=True)
        self.pids = pids
        self.peaks = {name: rss_mib(pid) for name, pid in pids.items()}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], rss_mib(pid))


def export(server: ServerProcess) -> dict[str, Any]:
    """GET /export read in chunks, its lines counted; the end line's counts; memory before and peak."""
    pids = process_ids(server)
    before = {name: rss_mib(pid) for name, pid in pids.items()}
    peaks = RssPeaks(pids)
    peaks.start()
    lines = size = 0
    tail = b""
    started = time.monotonic()
    with httpx.stream("GET", f"{server.url}/export", headers=AUTH, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
            tail = (tail + chunk)[-4096:]
    seconds = time.monotonic() - started
    peaks.stopping.set()
    peaks.join()
    end = orjson.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return {
        "seconds": round(seconds, 2),
        "lines": lines,
        "bytes": size,
        "sessions": end["sessions"],
        "messages": end["messages"],
        "messages_per_s": round(end["messages"] / seconds),
        "mib_per_s": round(size / 2**20 / seconds, 1),
        "rss_mib": {name: {"before": before[name], "peak": peaks.peaks[name]} for name in pids},
    }


def first_append(data: Path, env: dict[str, str], session: str, give_up_s: float = 900) -> dict[str, Any]:
    """A server started on `data`: seconds to the first acknowledged append to `session` and to
    /readyz ready (benchmarks.restart's probes), and each shard's own recovery seconds."""
    server = ServerProcess(data, [], env)
    t0 = time.monotonic()
    probes = [
        restart.Probe(
            "append", server.url, t0,
            lambda c: c.post(f"/sessions/{session}/messages", json={"role": "user", "content": "after"}),
            lambda r: r.status_code == 201, give_up_s,
        ),
        restart.Probe(
            "ready", server.url, t0, lambda c: c.get("/readyz"),
            lambda r: r.status_code == 200 and r.json().get("status") == "ready", give_up_s,
        ),
    ]  # fmt: skip
    for probe in probes:
        probe.start()
    for probe in probes:
        probe.join(give_up_s + 10)
    server.stop()
    recovered = [e for e in restart.log_entries(server.output()) if e.get("msg") == "shard recovered"]
    return {
        "to_first_append_s": probes[0].seconds,
        "to_ready_s": probes[1].seconds,
        "shards_recovery_s": sorted(round(e["seconds"], 2) for e in recovered),
        "sessions_recovered": sum(e.get("sessions", 0) for e in recovered),
    }


def measure(args: Any, work: Path) -> dict[str, Any]:
    env = restart.engine_env(args.summarizer)
    data = work / "data"
    sessions = max(1, args.messages // PER_SESSION)
    started = time.monotonic()
    ids = scenarios.build_engine_data(data, ORG, sessions, 2, messages=PER_SESSION, context=CONTEXT)
    built_s = time.monotonic() - started
    data_bytes = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    result: dict[str, Any] = {
        "data": {
            "loaded": "offline: DurableSessions over the shard directories claim_layout gives (2 shards), "
            "then snapshotted, as benchmarks.scenarios.build_engine_data writes them",
            "sessions": sessions,
            "messages": sessions * PER_SESSION,
            "bytes": data_bytes,
            "written_s": round(built_s, 2),
        }
    }
    server = ServerProcess(data, [], env).wait_ready(timeout_s=900)
    try:
        warm_up, windows, last = appends_and_backups(server, data, env, work, ids, args)
        result["appends"] = {
            "backup_max_rate_mib_s": args.backup_max_rate,
            "rate": args.rate,
            "threads": APPEND_THREADS,
            "window_s": args.window,
            "warm_up": warm_up,
            "windows": windows,
        }
        result["export"] = export(server)
    finally:
        server.stop()
    restored, restore_wall_s = cli(env, "restore", str(last), "--data-dir", str(work / "restored"))
    result["restore"] = {"wall_s": round(restore_wall_s, 2), "answer": restored}
    result["recovery"] = first_append(data, env, ids[0])
    result["restored_start"] = first_append(work / "restored", env, ids[0])
    result["summary"] = summarize(result)
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The targets' numbers: medians over the windows of each kind (each window with a backup
    lies between two without, so drift in the machine shows in the rows, not in the ratio)."""
    windows = result["appends"]["windows"]

    def median(key: str, backed_up: bool) -> float:
        return round(float(np.median([w[key] for w in windows if w["backup"] == backed_up])), 2)

    taken = [b for w in windows for b in w.get("backups", [])]
    recovery_s = result["recovery"]["to_first_append_s"]
    shards_s = max(result["recovery"]["shards_recovery_s"], default=None)
    restore_s = result["restore"]["wall_s"]
    restored_s = result["restored_start"]["to_first_append_s"]
    return {
        "p50_without_ms": median("p50_ms", False),
        "p50_with_ms": median("p50_ms", True),
        "p99_without_ms": median("p99_ms", False),
        "p99_with_ms": median("p99_ms", True),
        "p99_ratio": round(median("p99_ms", True) / median("p99_ms", False), 2),
        "backup_mib_per_s": round(float(np.median([b["mib_per_s"] for b in taken])), 1),
        "backup_s": round(float(np.median([b["seconds"] for b in taken])), 2),
        "backup_wall_s": round(float(np.median([b["wall_s"] for b in taken])), 2),
        "backup_bytes": taken[-1]["bytes"],
        "restore_s": restore_s,
        "restore_own_s": round(result["restore"]["answer"]["seconds"], 2),
        "recovery_s": recovery_s,
        "restore_ratio": round(restore_s / recovery_s, 2) if recovery_s else None,
        "shards_recovery_s": shards_s,
        "restore_to_shards_recovery": round(restore_s / shards_s, 2) if shards_s else None,
        "restore_then_start_s": round(restore_s + restored_s, 2) if restored_s else None,
        "export_messages_per_s": result["export"]["messages_per_s"],
    }


def _backups_cell(taken: list[dict[str, Any]]) -> str:
    return (
        ", ".join(f"{b['seconds']} s ({b['wall_s']} s wall) at {b['mib_per_s']} MiB/s" for b in taken) or "-"
    )


def tables(result: dict[str, Any]) -> list[str]:
    """The results as markdown lines: the windows, the targets' numbers, the export's memory."""
    s = result["summary"]
    rows = [
        f"| {w['round']} | {'yes' if w['backup'] else 'no'} | {w['requests_per_s']:,.0f} | {w['errors']} "
        f"| {w['p50_ms']} / {w['p99_ms']} / {w['max_ms']} | {w['load_average']} "
        f"| {_backups_cell(w.get('backups', []))} |"
        for w in result["appends"]["windows"]
    ]
    rss = result["export"]["rss_mib"]
    memory = ", ".join(f"{name} {m['before']} -> {m['peak']}" for name, m in rss.items())
    data, export, appends = result["data"], result["export"], result["appends"]
    return [
        f"Data: {data['messages']:,} messages in {data['sessions']:,} sessions, "
        f"{data['bytes'] / 2**20:.0f} MiB on disk, {data['loaded']}.",
        "",
        f"Appends: {appends['rate']:.0f} a second for {appends['window_s']:.0f} s a window, one message "
        f"each to a random session ({appends['threads']} threads; latency from when each was due).",
        "",
        "| window | backup | appends/s | errors | p50 / p99 / max ms | load avg | backups in the window |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| appends' p99 with a backup ÷ without (medians of the windows) | {s['p99_without_ms']} -> "
        f"{s['p99_with_ms']} ms: {s['p99_ratio']} | <= {TARGETS['p99_ratio']} |",
        f"| full backup of {s['backup_bytes'] / 2**20:.0f} MiB (median; the command's wall time) "
        f"| {s['backup_s']} s ({s['backup_wall_s']} s), {s['backup_mib_per_s']} MiB/s | stated |",
        f"| restore (the command's wall time; its own count) "
        f"| {s['restore_s']} s ({s['restore_own_s']} s) | |",
        f"| recovery: a start after a graceful stop, to the first acknowledged append "
        f"| {s['recovery_s']} s | |",
        f"| restore ÷ recovery | {s['restore_ratio']} | <= {TARGETS['restore_ratio']} |",
        f"| restore ÷ the slowest shard's own recovery | {s['restore_to_shards_recovery']} | |",
        f"| restore, then a start on it to the first append | {s['restore_then_start_s']} s | |",
        f"| export, messages/s | {s['export_messages_per_s']:,} | >= {TARGETS['export_messages_per_s']:,} |",
        "",
        f"Shards' own recovery seconds: {result['recovery']['shards_recovery_s']} (on the restored "
        f"directory: {result['restored_start']['shards_recovery_s']}).",
        "",
        f"Export: {export['messages']:,} messages, {export['bytes'] / 2**20:.0f} MiB in "
        f"{export['seconds']} s ({export['mib_per_s']} MiB/s). "
        f"Resident memory (VmRSS, MiB, before -> peak): {memory}.",
    ]


def markdown(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Backup, restore and export",
            "",
            f"{result['when']}, {describe(result['machine'])}; `{result['command']}`; "
            f"{result['elapsed_s']} s in all",
            "",
            *tables(result),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of appends a window")
    parser.add_argument("--rate", type=float, default=RATE, help="appends a second")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="windows with a backup (each between two without)"
    )
    parser.add_argument(
        "--summarizer", type=Path, help="local summarizer directory (default: the default model)"
    )
    parser.add_argument(
        "--backup-max-rate",
        type=float,
        metavar="MIB_S",
        help="each backup's --max-rate (default: none, as fast as the disk goes)",
    )
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    if args.summarizer is None:
        args.summarizer = default_summarizer()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="session-engine-backup-") as tmp:
        result = measure(args, Path(tmp))
        if args.out:  # each server's log (the first is the one the appends, backups and export ran on)
            (args.out / "logs").mkdir(parents=True, exist_ok=True)
            for log in Path(tmp).glob("*.log"):
                shutil.copy(log, args.out / "logs" / log.name)
    result |= {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python -m benchmarks.backup " + " ".join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "config": engine_config({}),
        "targets": TARGETS,
    }
    text = markdown(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
