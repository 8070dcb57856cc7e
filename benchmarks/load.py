"""Load generation: wrk (compiled, so the client is not the bottleneck) or, where wrk cannot be had,
a Python generator on httpx that says it is one. Both replay a plan: requests picked at random.

Only loopback targets are loaded by the suite's own servers; `--url` points it at a deployment the
user names. Every run is bounded by its duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk" / "plan.lua"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Load:
    """How hard and how long: connections held open, seconds, wrk threads."""

    connections: int
    duration_s: float
    threads: int = 2


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package when it is missing and this user may; else None."""
    return ensure_package("wrk", "wrk")


def ensure_package(binary: str, package: str) -> str | None:
    """A program's path, installing its Debian package when it is missing and this user may; else None."""
    found = shutil.which(binary)
    if found or not shutil.which("apt-get"):
        return found
    command = ["apt-get", "install", "-y", "-q", package]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return None
        command = ["sudo", "-n", *command]
    try:
        subprocess.run(command, capture_output=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return shutil.which(binary)


def run(generator: str, url: str, key: str, plan: list[Request], load: Load, work: Path) -> dict[str, Any]:
    """Replay the plan against url for load.duration_s; counts, rates and latency percentiles (ms)."""
    if generator == "wrk":
        return _run_wrk(url, key, plan, load, work)
    return asyncio.run(_run_python(url, key, plan, load))


def _run_wrk(url: str, key: str, plan: list[Request], load: Load, work: Path) -> dict[str, Any]:
    plan_file = work / f"plan-{os.getpid()}-{time.monotonic_ns()}.tsv"
    with plan_file.open("wb") as f:
        for r in plan:
            if b"\t" in r.body or b"\n" in r.body:
                raise ValueError("a plan body must be one line without tabs (compact JSON)")
            f.write(f"{r.method}\t{r.path}\t".encode() + r.body + b"\n")
    command = [
        "wrk", f"-t{min(load.threads, load.connections)}", f"-c{load.connections}",
        f"-d{max(1, round(load.duration_s))}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), url, "--", str(plan_file), key,
    ]  # fmt: skip
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=load.duration_s + 60
        ).stdout
    finally:
        plan_file.unlink(missing_ok=True)
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    raw = json.loads(line.removeprefix("RESULT "))
    seconds = raw["duration_us"] / 1e6
    return {
        "generator": "wrk",
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "errors": raw["non_2xx"] + raw["socket_errors"],
        **{f"{p}_ms": round(raw[f"{p}_us"] / 1000, 2) for p in ("mean", "p50", "p90", "p99", "p999", "max")},
    }


async def _run_python(url: str, key: str, plan: list[Request], load: Load) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=load.connections, max_keepalive_connections=load.connections)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10) as client:
        started = time.perf_counter()
        deadline = started + load.duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                r = random.choice(plan)
                sent = time.perf_counter()
                try:
                    response = await client.request(r.method, r.path, content=r.body or None)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - sent)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(load.connections)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies or [0.0]) * 1000
    return {
        "generator": "python-httpx",
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "errors": errors,
        "mean_ms": round(float(ms.mean()), 2),
        **{
            f"p{name}_ms": round(float(np.percentile(ms, q)), 2)
            for name, q in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))
        },
        "max_ms": round(float(ms.max()), 2),
    }
