"""session-engine benchmark suite.

Starts the engine on the embedded default (or targets a running deployment with --url and
--api-key), runs the chosen scenarios, and writes results.json, results.md and PNG plots under
benchmarks/results/<profile>/, stamped with the machine, the versions and the config.

Every HTTP scenario is run the same way, with the same load generator, against the engine and two
baselines started here: the ceiling (a plain FastAPI + uvicorn app keeping sessions in a dict, in
one process, with the same validation and responses; see benchmarks/ceiling.py) and the naive
design (the engine with one Ray call per request, `outbox.coalesce: false`). Results are ratios
to them, which hold on noisy machines where absolute numbers do not.

Profiles: --quick (under two minutes on a 2-core machine), the default full run, and tiny (for
the suite's own tests). Load goes to 127.0.0.1 unless --url names a deployment.

    python -m benchmarks --quick
    python -m benchmarks --scenarios append create --duration 20
    python -m benchmarks --quick --scenarios append-live
    python -m benchmarks --url http://10.0.0.5:8080 --api-key KEY --scenarios append fleet
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import backup, feeds, load, recall, redis_anchor, report, restart, scenarios, stamp
from benchmarks.durability import measure_recovery
from benchmarks.memory import measure_summarizer
from benchmarks.server import ServerProcess, default_summarizer, free_port

HERE = Path(__file__).resolve().parent
KEY = "bench-key"
ORG = "bench"
ALL_SCENARIOS = (
    "append",
    "append-batch",
    "append-live",
    "create",
    "list",
    "query",
    "feeds",
    "fleet",
    "summarize",
    "scaling",
    "snapshot",
    "resident",
    "restart",
    "backup",
    "recall",
)

# The steps that start engines of their own (or none): run here only, never against --url.
LOCAL_STEPS = ("append-live", "scaling", "summarize", "snapshot", "resident", "restart", "backup")


@dataclass(frozen=True)
class Profile:
    duration_s: float  # of load per HTTP measurement (after a 1 s warm-up)
    connections: int
    fleet_users: int
    fleet_s: float
    query_sizes: tuple[int, ...]
    snapshot_sizes: tuple[int, ...]
    resident_sizes: tuple[int, ...]  # the first is preloaded into the engine the HTTP scenarios use
    summaries: int
    batch_sizes: tuple[int, ...]
    summary_tokens: int
    recall: tuple[int, int]  # personas, sessions each (benchmarks/recall.py)
    naive: tuple[str, ...] | None = None  # the scenarios the naive baseline runs; None: all it can
    feeds: int = 500  # idle change feeds held open while appends run (benchmarks/feeds.py)
    summary_wait_s: float = 60  # after the fleet, for the summaries of the sessions it closed
    scaling: tuple[tuple[int, ...], tuple[int, ...]] = ((1, 2, 4), (2, 4))  # gateway workers, shards
    restart_sessions: int = 10_000  # on disk when the engine is killed and started again
    # benchmarks/backup.py: messages backed up, restored and exported; seconds of appends a window.
    backup: tuple[int, float] = (1_000_000, 30.0)
    # append-live (scenarios.append_live_on_off): rounds of live memory on then off, seconds of load
    # each; every run starts a fresh engine, which is most of the step's time.
    live_on_off: tuple[int, float] = (3, 5.0)


PROFILES = {
    "full": Profile(15, 64, 32, 30, (10_000, 100_000), (10_000, 100_000, 1_000_000), (100_000, 1_000_000),
                    16, (1, 4, 8, 16), 128, (4, 24)),
    "quick": Profile(2, 64, 16, 4, (10_000,), (10_000,), (10_000,), 4, (1, 4), 24, (2, 12),
                     naive=("append", "create"), feeds=200, summary_wait_s=20, scaling=((1, 2), (2,)),
                     restart_sessions=2_000, backup=(50_000, 6.0), live_on_off=(1, 2.0)),
    "tiny": Profile(1, 8, 4, 3, (300,), (300,), (300,), 2, (1, 2), 8, (2, 3), feeds=10, summary_wait_s=20,
                    scaling=((1, 2), (2,)), restart_sessions=300, backup=(2_000, 2.0), live_on_off=(1, 1.0)),
}  # fmt: skip


@dataclass
class Run:
    args: argparse.Namespace
    profile: Profile
    work: Path
    console: Console
    generator: str = "wrk"
    results: dict[str, Any] = field(default_factory=dict)
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)  # each engine start: time, memory
    notes: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = PROFILES[args.profile]
    if args.duration is not None or args.connections is not None:
        profile = Profile(
            **{
                **profile.__dict__,
                "duration_s": args.duration or profile.duration_s,
                "connections": args.connections or profile.connections,
            }
        )
    out = args.out or HERE / "results" / args.profile
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="session-engine-bench-") as tmp:
        run = Run(args, profile, Path(tmp), console)
        run.generator = _choose_generator(args.generator, console)
        started = time.monotonic()
        _run_all(run)
        elapsed = time.monotonic() - started
    document = {
        "suite": "session-engine benchmarks",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": args.profile,
        "profile_settings": profile.__dict__,
        "elapsed_s": round(elapsed, 1),
        "target": args.url or "embedded engine started by the suite",
        "machine": stamp.machine(),
        "versions": stamp.versions(shutil.which("wrk")),
        "config": stamp.engine_config({}) if not args.url else {"note": "the deployment's own"},
        "load_generator": run.generator,
        "notes": run.notes,
        "engine_starts": run.starts,
        "scenarios": run.results,
    }
    document["targets"] = report.targets(document)
    paths = report.write(document, out)
    print(Path(paths["markdown"]).read_text())
    console.print(f"written: {', '.join(str(p) for p in paths.values())} in {elapsed:.0f} s")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="profile", action="store_const", const="quick", help="the quick profile"
    )
    size.add_argument("--profile", choices=sorted(PROFILES))
    parser.set_defaults(profile="full")
    parser.add_argument("--scenarios", nargs="+", choices=ALL_SCENARIOS, default=list(ALL_SCENARIOS))
    parser.add_argument("--url", help="a running deployment to load instead of starting the engine here")
    parser.add_argument("--api-key", help="an API key of that deployment (with --url)")
    parser.add_argument("--duration", type=float, help="seconds of load per measurement (profile's default)")
    parser.add_argument("--connections", type=int, help="connections held open by the load generator")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "python"], default="auto",
        help="auto: wrk, installed from the system's packages when missing, else the Python generator",
    )  # fmt: skip
    parser.add_argument(
        "--summarizer", type=Path, help="local model directory for `summarize` (default model)"
    )
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<profile>)")
    return parser


def _choose_generator(wanted: str, console: Console) -> str:
    if wanted == "python":
        return "python"
    if load.ensure_wrk() is not None:
        return "wrk"
    if wanted == "wrk":
        raise SystemExit("wrk is not installed and could not be installed (apt-get install wrk)")
    console.print("[yellow]wrk is missing and could not be installed: using the Python generator, "
                  "which may be the bottleneck; the results say so[/]")  # fmt: skip
    return "python"


def _summarizer(run: Run) -> Path:
    """--summarizer, or the default model."""
    if run.args.summarizer is None:
        run.args.summarizer = default_summarizer()
    return Path(run.args.summarizer)


FEEDS_PER_ORG = 10_000


def engine_env(summarizer: Path, **extra: str) -> dict[str, str]:
    """What an engine the benchmarks start gets: the bench key, the summarizer, and `extra`."""
    return {
        "SESSION_ENGINE_API_KEYS": f"{KEY}={ORG}",
        "SESSION_ENGINE_MODELS__SUMMARIZER__PATH": str(summarizer),
        # The feeds step holds hundreds of the bench organization's feeds open at once.
        "SESSION_ENGINE_EVENTS__MAX_FEEDS_PER_ORG": str(FEEDS_PER_ORG),
        **extra,
    }


def _engine_env(run: Run, **extra: str) -> dict[str, str]:
    return engine_env(_summarizer(run), **extra)


def _run_all(run: Run) -> None:
    args = run.args
    if args.url and not args.api_key:
        raise SystemExit("--url needs --api-key")
    chosen = [s for s in ALL_SCENARIOS if s in args.scenarios]
    http = [scenarios.HTTP_SCENARIOS[s] for s in chosen if s in scenarios.HTTP_SCENARIOS]
    if "query" in chosen:
        http += [scenarios.query_scenario(n) for n in run.profile.query_sizes]
    servers = ["engine", "ceiling"] + ([] if args.url else ["naive"])
    if args.url:
        run.notes.append("the naive baseline needs a local engine and was not run against --url")
    if run.profile.naive is not None and not args.url:
        run.notes.append(
            f"the naive baseline ran only {', '.join(run.profile.naive)} and the fleet in this profile"
        )

    def runs(server: str, scenario: scenarios.HttpScenario) -> bool:
        naive = run.profile.naive
        return server in scenario.servers and (server != "naive" or naive is None or scenario.name in naive)

    anchored = [] if args.url else [s for s in ("append", "append-batch") if s in chosen]
    steps = sum(1 for server in servers for s in http if runs(server, s)) + bool(anchored)
    steps += (
        ("feeds" in chosen)
        + len(servers) * ("fleet" in chosen)
        + sum(s in chosen for s in (*LOCAL_STEPS, "recall"))
    )
    with Progress(
        TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=run.console,
    ) as progress:  # fmt: skip
        task = progress.add_task("starting", total=steps)
        for server in servers:
            wanted = [s for s in http if runs(server, s)]
            fleet = "fleet" in chosen and server != "ceiling"
            if not wanted and not fleet:
                continue
            progress.update(task, description=f"{server}: starting")
            with _serve(run, server) as (url, key):
                for scenario in wanted:
                    progress.update(task, description=f"{server}: {scenario.name}")
                    _measure_http(run, scenario, server, url, key)
                    progress.advance(task)
                if fleet:
                    progress.update(task, description=f"{server}: fleet")
                    _measure_fleet(run, server, url, key)
                    progress.advance(task)
                if server == "engine" and "feeds" in chosen:
                    progress.update(task, description="engine: feeds and scrapes")
                    _measure_feeds(run, url, key)
                    progress.advance(task)
        if anchored:
            progress.update(task, description="redis: the same appends")
            _measure_redis(run, anchored)
            progress.advance(task)
        for name in LOCAL_STEPS:
            if name in chosen:
                progress.update(task, description=name)
                if args.url:
                    run.notes.append(f"{name} measures a local engine and was not run against --url")
                else:
                    steps_of = {"append-live": _append_live, "scaling": _scaling, "summarize": _summarize}
                    steps_of |= {"snapshot": _snapshot, "resident": _resident, "restart": _restart}
                    {**steps_of, "backup": _backup}[name](run)
                progress.advance(task)
        if "recall" in chosen:
            progress.update(task, description="recall")
            _recall(run)
            progress.advance(task)


@contextlib.contextmanager
def _serve(run: Run, server: str) -> Iterator[tuple[str, str]]:
    if server == "engine" and run.args.url:
        yield run.args.url, run.args.api_key
        return
    if server == "ceiling":
        with ceiling_server(run.work) as (_, url):
            yield url, KEY
        return
    # The engine on the embedded default; it starts on a data directory holding the first
    # `resident` size of sessions, so its restart time and memory are measured too.
    data = run.work / server
    preload = run.profile.resident_sizes[0] if server == "engine" and "resident" in run.args.scenarios else 0
    if preload:
        scenarios.build_engine_data(data, ORG, preload, 2)
    env = _engine_env(run, **({"SESSION_ENGINE_OUTBOX__COALESCE": "false"} if server == "naive" else {}))
    started = time.monotonic()
    process = ServerProcess(data, [], env).wait_ready(timeout_s=600)
    ready_s = time.monotonic() - started
    run.starts[server] = {
        "sessions": preload,
        "ready_s": round(ready_s, 2),
        **scenarios.engine_memory(process.proc.pid),
    }
    try:
        yield process.url, KEY
    finally:
        process.stop()


@contextlib.contextmanager
def ceiling_server(work: Path, http_server: str = "uvicorn") -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The ceiling baseline (benchmarks/ceiling.py) on a free loopback port: its process and URL."""
    port = free_port()
    log = (work / f"ceiling-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ceiling", "--port", str(port), "--api-key", KEY,
         "--http-server", http_server],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def warmed_plan(
    generator: str, url: str, key: str, scenario: scenarios.HttpScenario, connections: int, work: Path
) -> list[load.Request]:
    """The scenario set up on the server at `url`, and 1 s of its load run: its plan, ready to measure."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        plan = scenario.setup(client, connections)
    load.run(generator, url, key, plan, load.Load(connections, 1), work)
    return plan


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/sessions", timeout=2)
            return
        time.sleep(0.2)
    raise RuntimeError("baseline did not start")


def _measure_http(run: Run, scenario: scenarios.HttpScenario, server: str, url: str, key: str) -> None:
    connections = min(8, run.profile.connections) if scenario.latency_bound else run.profile.connections
    plan = warmed_plan(run.generator, url, key, scenario, connections, run.work)
    result = load.run(run.generator, url, key, plan, load.Load(connections, run.profile.duration_s), run.work)
    result["items_per_s"] = round(result["requests_per_s"] * scenario.per_request, 1)
    entry = run.results.setdefault(
        scenario.name,
        {
            "kind": "http",
            "does": scenario.does,
            "unit": scenario.unit,
            "connections": connections,
            "servers": {},
        },
    )
    entry["servers"][server] = result


def _measure_redis(run: Run, names: list[str]) -> None:
    """The append scenarios' shape against a real redis-server (benchmarks/redis_anchor.py)."""
    if not redis_anchor.available():
        run.notes.append("redis-server is missing and could not be installed: no engine ÷ Redis in this run")
        return
    with redis_anchor.redis_server(run.work) as port:
        for name in names:
            entry = run.results.get(name)
            if entry is None:
                continue
            per_command = scenarios.HTTP_SCENARIOS[name].per_request
            shape = redis_anchor.measure(port, per_command, entry["connections"], run.profile.duration_s)
            entry["servers"]["redis"] = shape


def _measure_fleet(run: Run, server: str, url: str, key: str) -> None:
    result = scenarios.run_fleet(url, key, run.profile.fleet_users, run.profile.fleet_s, run.work)
    result["items_per_s"] = result["requests_per_s"]
    if server == "engine":
        result["summary_lag"] = scenarios.summary_lag(url, key, run.profile.summary_wait_s)
    entry = run.results.setdefault(
        "fleet",
        {
            "kind": "http",
            "does": "agents: create, 24-40 appends (tool calls, context updates), read, close, query memory",
            "unit": "requests/s",
            "connections": run.profile.fleet_users,
            "servers": {},
        },
    )
    entry["servers"][server] = result


def _measure_feeds(run: Run, url: str, key: str) -> None:
    shape = load.Load(run.profile.connections, run.profile.duration_s)
    settle_s = min(feeds.SETTLE_S, run.profile.duration_s * 2)
    rows = feeds.measure(url, key, run.profile.feeds, shape, run.generator, run.work, settle_s)
    run.results["feeds"] = {
        "kind": "feeds",
        "does": f"appends with {run.profile.feeds} idle change feeds open, and with /metrics scraped "
        "every second, against plain runs before and after",
        "rows": rows,
    }


def _append_live(run: Run) -> None:
    """The append scenario with live memory on and off, each on a fresh engine: what live memory
    costs appends on this machine."""
    rounds, seconds = run.profile.live_on_off
    connections = run.profile.connections
    env = _engine_env(run)
    result = scenarios.append_live_on_off(run.generator, env, KEY, run.work, connections, seconds, rounds)
    run.results["append-live"] = {
        "kind": "engine",
        "does": f"single-message appends with live memory on, then off, on fresh engines, {rounds} "
        f"round(s) of {seconds:g} s, {connections} connections",
        **result,
    }


def _scaling(run: Run) -> None:
    """Single-message appends on the engine with each number of gateway workers and shards: what
    to set on a machine with more cores. Each setting is a fresh engine on an empty directory."""
    workers_options, shard_options = run.profile.scaling
    scenario = scenarios.HTTP_SCENARIOS["append"]
    rows = []
    for shards in shard_options:
        for workers in workers_options:
            env = _engine_env(run, SESSION_ENGINE_WORKERS=str(workers), SESSION_ENGINE_SHARDS=str(shards))
            data = run.work / f"scaling-{workers}-{shards}"
            process = ServerProcess(data, [], env).wait_ready(timeout_s=600)
            try:
                plan = warmed_plan(
                    run.generator, process.url, KEY, scenario, run.profile.connections, run.work
                )
                shape = load.Load(run.profile.connections, run.profile.duration_s)
                result = load.run(run.generator, process.url, KEY, plan, shape, run.work)
            finally:
                process.stop()
                shutil.rmtree(data, ignore_errors=True)
            rows.append({"workers": workers, "shards": shards, **result})
    base = rows[0]["requests_per_s"]
    for row in rows:
        row["vs_first"] = round(row["requests_per_s"] / base, 2)
    run.results["scaling"] = {
        "kind": "engine",
        "does": "single-message appends by gateway workers and session shards, "
        f"{run.profile.connections} connections",
        "rows": rows,
    }


def _summarize(run: Run) -> None:
    profile = run.profile
    rows = measure_summarizer(
        profile.summaries, list(profile.batch_sizes), "cpu", HERE / ".cache",
        path=_summarizer(run), max_new_tokens=profile.summary_tokens,
    )  # fmt: skip
    base = rows[0]["summaries_per_s"]
    for row in rows:
        row["vs_batch_1"] = round(row["summaries_per_s"] / base, 2)
    run.results["summarize"] = {
        "kind": "engine",
        "does": "summaries/s by conversations per generate call",
        "rows": rows,
    }


def _recall(run: Run) -> None:
    personas, sessions = run.profile.recall
    args = argparse.Namespace(
        personas=personas, sessions=sessions, seed=7, summarizer=_summarizer(run), url=run.args.url,
        api_key=run.args.api_key, timeout=3600, corpus="assistant", half=0,
    )  # fmt: skip
    run.results["recall"] = {
        "kind": "engine",
        "does": "session memory: evidence sessions found for paraphrased questions, against baselines",
        **recall.run(args),
    }


def _snapshot(run: Run) -> None:
    rows = [measure_recovery(n, run.work) for n in run.profile.snapshot_sizes]
    run.results["snapshot"] = {
        "kind": "engine",
        "does": "one shard of N sessions (10 messages of ~100 characters): snapshot pause, recovery",
        "rows": rows,
    }


def _resident(run: Run) -> None:
    """Memory per session and restart time: the engine started on N sessions, against an empty one."""
    starts = run.starts
    rows = []
    empty = starts.get("naive")
    sizes = list(run.profile.resident_sizes)
    if "engine" in starts:
        rows.append(starts["engine"])
        sizes = sizes[1:]
    for n in sizes:
        data = run.work / f"resident-{n}"
        scenarios.build_engine_data(data, ORG, n, 2)
        started = time.monotonic()
        process = ServerProcess(data, [], _engine_env(run)).wait_ready(timeout_s=900)
        rows.append(
            {
                "sessions": n,
                "ready_s": round(time.monotonic() - started, 2),
                **scenarios.engine_memory(process.proc.pid),
            }
        )
        process.stop()
        shutil.rmtree(data, ignore_errors=True)
    if empty is None:
        started = time.monotonic()
        process = ServerProcess(run.work / "resident-empty", [], _engine_env(run)).wait_ready()
        empty = {"sessions": 0, "ready_s": round(time.monotonic() - started, 2)}
        empty |= scenarios.engine_memory(process.proc.pid)
        process.stop()
    for row in rows:
        n = row["sessions"]
        row["engine_bytes_per_session"] = round((row["engine_mib"] - empty["engine_mib"]) * 2**20 / n)
        row["shard_bytes_per_session"] = round((row["shards_mib"] - empty["shards_mib"]) * 2**20 / n)
        row["empty_ready_s"] = empty["ready_s"]
    run.results["resident"] = {
        "kind": "engine",
        "does": "engine restarted on N sessions of 10 ~100-character messages: time to ready, memory (USS)",
        "empty": empty,
        "rows": rows,
    }


def _restart(run: Run) -> None:
    """The engine on N sessions, every process of it killed with SIGKILL, and started again: the
    seconds to the first append, to /readyz ready and to the first memory query (benchmarks/restart.py)."""
    row = restart.measure(run.profile.restart_sessions, _summarizer(run), run.work)
    row.pop("server_log")
    run.results["restart"] = {
        "kind": "engine",
        "does": "kill -9 of the engine on N sessions, then a start: seconds to the first append, "
        "to ready and to the first memory query",
        "rows": [row],
    }


def _backup(run: Run) -> None:
    """N messages backed up while appends run, restored against a recovery, and exported
    (benchmarks/backup.py), on an engine of its own."""
    messages, window_s = run.profile.backup
    args = argparse.Namespace(
        messages=messages,
        window=window_s,
        rate=backup.RATE,
        rounds=backup.ROUNDS,
        summarizer=_summarizer(run),
        backup_max_rate=None,
    )
    work = run.work / "backup"
    work.mkdir()
    try:
        result = backup.measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.results["backup"] = {
        "kind": "engine",
        "does": "appends during a backup of N messages against without, restore against recovery, export",
        **result,
    }


if __name__ == "__main__":
    raise SystemExit(main())
