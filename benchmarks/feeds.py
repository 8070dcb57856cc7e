"""What change feeds and metrics scrapes cost appends: append throughput with 0 and with N idle
feeds open, and with /metrics scraped every second, as ratios to the plain run in the same run.

    python -m benchmarks.feeds [--feeds 500] [--seconds 10] [--connections 64]

One embedded server (`make run`'s setup). The plain run goes first and last (the last after the
feeds have closed and SETTLE_S more), and the ratios are to their mean, so drift over the run
shows as their spread. The idle feeds are session feeds of
sessions that nothing writes to, held open by this process on one event loop; the appends go to
other sessions, so the feeds receive nothing but keep-alives. The scrape run fetches /metrics once
a second (Prometheus scrapes every 15 s by default) from a thread, and reports its own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import load
from benchmarks.scenarios import setup_append
from benchmarks.server import ServerProcess
from benchmarks.stamp import describe, machine

KEY = "feeds-key"
# After hundreds of feeds close, the next seconds' p99 was seen to jump (once to ~0.5 s) with the
# throughput unchanged; the last plain run waits this long so that it measures the steady state.
SETTLE_S = 20.0


class IdleFeeds:
    """`count` session feeds held open on a loop of their own until `close()`."""

    def __init__(self, url: str, key: str, count: int) -> None:
        self._url = url
        self._key = key
        self._count = count
        self.opened = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._hold(),), daemon=True
        )

    def __enter__(self) -> IdleFeeds:
        self._thread.start()
        if not self._ready.wait(300):
            raise RuntimeError(f"only {self.opened} of {self._count} feeds opened")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    async def _hold(self) -> None:
        self._stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {self._key}"}
        limits = httpx.Limits(max_connections=self._count + 10)
        async with httpx.AsyncClient(
            base_url=self._url, headers=headers, limits=limits, timeout=None
        ) as http:
            sessions = []
            for i in range(self._count):
                made = await http.post("/sessions", json={"name": f"watched-{i}"})
                sessions.append(made.json()["id"])
            tasks = [asyncio.create_task(self._follow(http, sid)) for sid in sessions]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, http: httpx.AsyncClient, session_id: str) -> None:
        async with http.stream("GET", f"/sessions/{session_id}/events") as response:
            async for line in response.aiter_lines():
                if line.startswith("event: feed.ready"):
                    self.opened += 1
                    if self.opened == self._count:
                        self._ready.set()


class Scraper:
    """GET /metrics at once and then every `every_s` from a thread; keeps each scrape's latency."""

    def __init__(self, url: str, every_s: float = 1.0) -> None:
        self._url = url
        self._every_s = every_s
        self.latencies_ms: list[float] = []
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scrape, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _scrape(self) -> None:
        # The first scrape goes at once, so a run shorter than `every_s` still has one.
        with httpx.Client(base_url=self._url, timeout=30) as http:
            while True:
                started = time.perf_counter()
                response = http.get("/metrics")
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.bytes = len(response.content)
                if self._stop.wait(self._every_s):
                    return


def _until_feeds_closed(url: str, timeout_s: float = 60.0) -> None:
    """Until the server has closed every feed of the previous run (so it costs the next run nothing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        open_now = [line for line in text.splitlines() if line.startswith("session_engine_feeds_open ")]
        if open_now and float(open_now[0].split()[1]) == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("the server still holds feeds of the previous run")


def measure(
    url: str, key: str, feeds: int, shape: load.Load, generator: str, work: Path, settle_s: float = SETTLE_S
) -> list[dict[str, Any]]:
    """The four runs against a running engine, each with its ratio to the plain runs' mean."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        plan = setup_append(client, 0)
    rows: list[dict[str, Any]] = []

    def appends(label: str, **extra: Any) -> None:
        result = load.run(generator, url, key, plan, shape, work)
        kept = ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors")
        rows.append({"run": label, **{k: result[k] for k in kept}, **extra})

    appends("plain")
    with Scraper(url) as scraper:
        appends("scraped every 1 s")
    rows[-1]["scrape_ms_median"] = round(statistics.median(scraper.latencies_ms or [0.0]), 1)
    rows[-1]["scrape_ms_max"] = round(max(scraper.latencies_ms or [0.0]), 1)
    rows[-1]["scrape_bytes"] = scraper.bytes
    with IdleFeeds(url, key, feeds) as held:
        appends(f"{feeds} idle feeds", feeds_open=held.opened)
    _until_feeds_closed(url)
    time.sleep(settle_s)
    appends("plain again")
    plain = statistics.mean(r["requests_per_s"] for r in rows if r["run"].startswith("plain")) or 1.0
    for row in rows:
        row["vs_plain"] = round(row["requests_per_s"] / plain, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "feeds.json"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feeds-bench-"))
    started = time.monotonic()
    env = {
        "SESSION_ENGINE_API_KEYS": f"{KEY}=bench",
        "RAY_ADDRESS": "",
        # All the idle feeds are one organization's: lift its cap (events.max_feeds_per_org) above them.
        "SESSION_ENGINE_EVENTS__MAX_FEEDS_PER_ORG": str(args.feeds + 1),
    }
    server = ServerProcess(work / "data", [], env)
    generator = "wrk" if load.ensure_wrk() else "python"
    try:
        server.wait_ready(timeout_s=300)
        rows = measure(
            server.url, KEY, args.feeds, load.Load(args.connections, args.seconds), generator, work
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "machine": describe(machine()),
        "when": time.strftime("%Y-%m-%d"),
        "command": f"python -m benchmarks.feeds --feeds {args.feeds} --seconds {args.seconds} "
        f"--connections {args.connections}",
        "generator": generator,
        "seconds": round(time.monotonic() - started),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| run | appends/s | vs plain | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = (
            row["run"],
            f"{row['requests_per_s']:,.0f}",
            f"{row['vs_plain']:.2f}",
            row["p99_ms"],
            row["errors"],
        )
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
