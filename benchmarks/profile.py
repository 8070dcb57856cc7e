"""Where the time goes: one HTTP scenario under load, with py-spy on every process that serves it.

Starts the engine (or the ceiling baseline) the way the suite does, sets up the scenario, and
while wrk replays its plan records each process with py-spy (sampling without pausing it) and
measures the CPU each one spent. Writes, per process, the raw stacks (`*.txt`, for
flamegraph.pl or speedscope) and a summary with the CPU spent a request and the functions that
spent it, by own time and by time below them.

    python -m benchmarks.profile append --seconds 10
    python -m benchmarks.profile list --server ceiling
    python -m benchmarks.profile append --env SESSION_ENGINE_SHARDS=4

py-spy must be installed (`pip install py-spy`) and allowed to read other processes' memory.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from benchmarks import load, scenarios, suite
from benchmarks.server import ServerProcess, default_summarizer
from benchmarks.suite import KEY

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "scenario", help=f"{', '.join(sorted(scenarios.HTTP_SCENARIOS))}, or query@N (N vectors)"
    )
    parser.add_argument("--server", choices=["engine", "ceiling"], default="engine")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rate",
        type=int,
        default=250,
        help="py-spy samples a second; 0: measure CPU only, without py-spy's own cost",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed a process")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the engine")
    parser.add_argument("--http-server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profiles")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.rate > 0 and not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    if args.scenario.startswith("query@"):
        scenario = scenarios.query_scenario(int(args.scenario.removeprefix("query@")))
    elif args.scenario in scenarios.HTTP_SCENARIOS:
        scenario = scenarios.HTTP_SCENARIOS[args.scenario]
    else:
        parser.error(f"unknown scenario {args.scenario!r}")
    if scenario.latency_bound and args.connections == 64:
        args.connections = 8  # as the suite loads it
    out = args.out / f"{args.scenario}-{args.server}-{args.http_server}"
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="session-engine-profile-") as tmp,
        _server(args, Path(tmp)) as (
            pid,
            url,
        ),
    ):
        plan = suite.warmed_plan("wrk", url, KEY, scenario, args.connections, Path(tmp))
        targets = _targets(pid)
        result = _record(py_spy, targets, args, url, plan, Path(tmp), out)
    report = _report(args, result, targets, out)
    (out / "summary.md").write_text(report)
    print(report)
    return 0


@contextlib.contextmanager
def _server(args: argparse.Namespace, work: Path) -> Iterator[tuple[int, str]]:
    """The engine (the suite's settings, `--env` over them) or the ceiling: its pid and URL."""
    if args.server == "ceiling":
        with suite.ceiling_server(work, args.http_server) as (proc, url):
            yield proc.pid, url
        return
    extra = {"SESSION_ENGINE_HTTP__SERVER": args.http_server, **dict(e.split("=", 1) for e in args.env)}
    engine = ServerProcess(work / "engine", [], suite.engine_env(default_summarizer(), **extra))
    try:
        engine.wait_ready(timeout_s=300)
        yield engine.proc.pid, engine.url
    finally:
        engine.stop()


def _targets(root_pid: int) -> dict[str, int]:
    """The processes that serve requests: the gateway (or its workers) and the session shards."""
    root = psutil.Process(root_pid)
    root_cmdline = " ".join(root.cmdline())
    found: dict[str, int] = {"gateway": root_pid}
    workers = 0
    for proc in root.children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "SessionShard" in cmdline:
            found[f"shard-{sum(k.startswith('shard') for k in found)}"] = proc.pid
        elif "MemoryShard" in cmdline:
            found[f"memory-{sum(k.startswith('memory') for k in found)}"] = proc.pid
        elif proc.ppid() == root_pid and ("multiprocessing.spawn" in cmdline or cmdline == root_cmdline):
            # A worker process: spawned (uvicorn's, the engine's granian's) or forked (granian's)
            workers += 1
            found[f"gateway-worker-{workers}"] = proc.pid
    return found


def _record(
    py_spy: str,
    targets: dict[str, int],
    args: argparse.Namespace,
    url: str,
    plan: list[load.Request],
    work: Path,
    out: Path,
) -> dict[str, Any]:
    procs = {name: psutil.Process(pid) for name, pid in targets.items()}
    before = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    threads_before = {name: _thread_cpu(p) for name, p in procs.items()}
    spies = []
    for name, pid in targets.items() if args.rate > 0 else ():
        spy = [py_spy, "record", "--pid", str(pid), "--duration", str(round(args.seconds)), "--nonblocking",
               "--rate", str(args.rate), "--format", "raw", "--output", str(out / f"{name}.txt")]  # fmt: skip
        spies.append(subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    answer: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: answer.update(
            load.run("wrk", url, KEY, plan, load.Load(args.connections, args.seconds), work)
        )
    )
    runner.start()
    runner.join()
    after = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    answer["threads"] = {}
    for name, p in procs.items():
        spent = {
            thread: round(cpu - threads_before[name].get(thread, 0.0), 2)
            for thread, cpu in _thread_cpu(p).items()
        }
        answer["threads"][name] = dict(sorted(spent.items(), key=lambda kv: -kv[1])[:6])
    for spy in spies:
        spy.wait(args.seconds + 60)
    answer["cpu_s"] = {name: round(after[name] - before[name], 2) for name in procs}
    return answer


def _thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds by thread name (Ray's C++ threads, the event loop, ...), from /proc."""
    spent: dict[str, float] = {}
    for thread in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue
        spent[name] = spent.get(name, 0.0) + thread.user_time + thread.system_time
    return spent


def _report(args: argparse.Namespace, result: dict[str, Any], targets: dict[str, int], out: Path) -> str:
    requests = result["requests"]
    lines = [
        f"# {args.scenario} on the {args.server}: {result['requests_per_s']:,.0f} requests/s "
        f"({args.connections} connections, {args.seconds:g} s, wrk; p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms)",
        "",
        f"`python -m benchmarks.profile {' '.join(sys.argv[1:])}`",
        "",
        "| process | CPU s | CPU µs a request | CPU s by thread (the busiest) |",
        "|---|---|---|---|",
    ]
    for name, cpu in result["cpu_s"].items():
        threads = ", ".join(f"{t} {s}" for t, s in result["threads"][name].items() if s > 0)
        lines.append(f"| {name} | {cpu} | {cpu / max(1, requests) * 1e6:,.0f} | {threads} |")
    lines.append(f"| all | {sum(result['cpu_s'].values()):.2f} | "
                 f"{sum(result['cpu_s'].values()) / max(1, requests) * 1e6:,.0f} | |")  # fmt: skip
    for name in targets:
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        own, below, total = _functions(path)
        if not total:
            continue
        lines += ["", f"## {name}: {total} samples", "", "| own % | function | below % | function |",
                  "|---|---|---|---|"]  # fmt: skip
        by_own = own.most_common(args.top)
        by_below = below.most_common(args.top)
        for (f1, n1), (f2, n2) in zip(by_own, by_below, strict=False):
            lines.append(f"| {100 * n1 / total:.1f} | `{f1}` | {100 * n2 / total:.1f} | `{f2}` |")
    return "\n".join(lines) + "\n"


def _functions(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """From py-spy's raw (collapsed) stacks: samples a function was the leaf of, samples it was
    anywhere in, and all samples."""
    own: collections.Counter[str] = collections.Counter()
    below: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            below[frame] += n
    return own, below, total


def _short(frame: str) -> str:
    # "handle (api/http.py:120)" -> "handle (api/http.py)"; site-packages paths cut to the package.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif "/lib/python" in where:
        where = "stdlib/" + where.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({where})"


if __name__ == "__main__":
    raise SystemExit(main())
