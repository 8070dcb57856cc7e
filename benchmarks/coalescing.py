"""Append throughput with and without the gateway's per-shard coalescing, in the same run.

Starts the embedded server (its own Ray) once per mode with the default config, creates sessions,
and drives single-message appends with wrk (a compiled load generator, so the client is not the
bottleneck). Only 127.0.0.1 is loaded; each run is bounded by --duration.

    python -m benchmarks.coalescing [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.server import ServerProcess

HERE = Path(__file__).resolve().parent
KEY = "bench-key"


def machine() -> str:
    """Cores, memory and CPU model, so every number names the machine it came from."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = cpu.group(1).strip() if cpu else "unknown CPU"
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {model}, {platform.system()}"


def run_wrk(url: str, ids_file: Path, duration_s: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
            "-s", str(HERE / "wrk" / "append.lua"), url, "--", str(ids_file), KEY,
        ],
        capture_output=True, text=True, check=True, timeout=duration_s + 60,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {p: _ms(re.search(rf"^\s+{p}%\s+([\d.]+\w+)", out, re.M).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {
        "requests_per_s": rps,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure_appends(
    env: dict[str, str], work: Path, duration_s: int, connections: int, threads: int = 2
) -> dict[str, float]:
    """Start the embedded server with env, create sessions, and load it with wrk appends."""
    env = {"SESSION_ENGINE_API_KEYS": f"{KEY}=bench", **env}
    server = ServerProcess(work, [], env).wait_ready()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            ids = [client.post("/sessions", json={"name": f"b{i}"}).json()["id"] for i in range(64)]
        ids_file = work.parent / f"{work.name}-ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        run_wrk(server.url, ids_file, 2, connections, threads)  # warm-up, discarded
        return run_wrk(server.url, ids_file, duration_s, connections, threads)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per mode")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "coalescing.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            mode: measure_appends(
                {"SESSION_ENGINE_OUTBOX__COALESCE": str(mode == "coalesced").lower()},
                Path(tmp) / mode.replace(" ", "-"),
                args.duration,
                args.connections,
                args.threads,
            )
            for mode in ("coalesced", "one call per request")
        }
    coalesced, per_request = results["coalesced"], results["one call per request"]
    report = {
        "machine": machine(),
        "command": f"python -m benchmarks.coalescing --duration {args.duration} "
        f"--connections {args.connections}",
        "load_generator": f"wrk, {args.threads} threads, {args.connections} connections, 1-message appends",
        "when": time.strftime("%Y-%m-%d"),
        "results": results,
        "ratio": coalesced["requests_per_s"] / per_request["requests_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"machine: {report['machine']}\nload: {report['load_generator']}\n")
    print("| gateway outbox | appends/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
    for mode, r in results.items():
        rps, p50, p99 = r["requests_per_s"], r["p50_ms"], r["p99_ms"]
        print(f"| {mode} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {r['errors']:.0f} |")
    print(f"\ncoalesced / one call per request = {report['ratio']:.2f}x")


if __name__ == "__main__":
    main()
