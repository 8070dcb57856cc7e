"""Redis as the physical anchor: the same append workload against a real `redis-server`.

A fleet operator compares a session store with Redis. This starts Debian's `redis-server` on
loopback with its append-only file fsynced on every write (`appendfsync always`, what the
engine's `fsync: always` promises), and drives it with `redis-benchmark`: `RPUSH` of the same
~100-character message the engine's scenarios send, to one of the same number of lists (one a
session), from as many clients as the engine gets connections, one command in flight each (the
engine gets no pipelining either). A batch is one `RPUSH` of 50 messages, as a batch append is
one request of 50.

    python -m benchmarks.redis_anchor --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.load import ensure_package
from benchmarks.scenarios import BATCH, MESSAGE
from benchmarks.server import free_port

SESSIONS = 64  # lists, as the append scenarios append to 64 sessions


def available() -> bool:
    """Whether redis-server and redis-benchmark are here, installing Debian's package if this user may."""
    return (
        ensure_package("redis-server", "redis-server") is not None
        and shutil.which("redis-benchmark") is not None
    )


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[int]:
    """A redis-server of our own on 127.0.0.1 (its port), its AOF fsynced on every write; stopped by pid."""
    port = free_port()
    data = work / f"redis-{port}"
    data.mkdir(parents=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
         "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(data / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def measure(port: int, per_command: int, clients: int, seconds: float) -> dict[str, Any]:
    """RPUSH of `per_command` messages a command, for about `seconds`: rates and latency (ms)."""
    command = ["RPUSH", "session:__rand_int__", *([MESSAGE] * per_command)]
    probe = _benchmark(port, command, clients, clients * 50)  # how many commands make `seconds`
    requests = max(clients * 50, round(probe["rps"] * seconds))
    row = _benchmark(port, command, clients, requests)
    return {
        "generator": "redis-benchmark",
        "requests": requests,
        "seconds": round(requests / row["rps"], 2),
        "requests_per_s": round(row["rps"], 1),
        "items_per_s": round(row["rps"] * per_command, 1),
        "errors": 0,
        "mean_ms": row["avg_latency_ms"],
        "p50_ms": row["p50_latency_ms"],
        "p90_ms": None,  # redis-benchmark reports p50, p95 and p99
        "p95_ms": row["p95_latency_ms"],
        "p99_ms": row["p99_latency_ms"],
        "p999_ms": None,
        "max_ms": row["max_latency_ms"],
        "config": "appendonly yes, appendfsync always, no pipelining",
    }


def _benchmark(port: int, command: list[str], clients: int, requests: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-n", str(requests),
         "-r", str(SESSIONS), "-P", "1", "--csv", *command],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    (row,) = list(csv.DictReader(io.StringIO(out)))
    return {key: float(value) for key, value in row.items() if key != "test"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_anchor", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    if not available():
        raise SystemExit(
            "redis-server is not installed and could not be installed (apt-get install redis-server)"
        )
    with tempfile.TemporaryDirectory(prefix="session-engine-redis-") as tmp, redis_server(Path(tmp)) as port:
        rows = {
            "append": measure(port, 1, args.clients, args.seconds),
            "append-batch": measure(port, BATCH, args.clients, args.seconds),
        }
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
