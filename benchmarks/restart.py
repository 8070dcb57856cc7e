"""How long a crash costs: the embedded server on a data directory of N sessions, killed with
SIGKILL (every process of it, Ray's included) and started again, timed from the new start to

    (a) the first acknowledged append to a session that was there before the crash,
    (b) /readyz answering 200 with status "ready",
    (c) the first answered memory query (POST /vectors/query with a text to embed).

    python -m benchmarks.restart [--sessions 10000] [--summarizer DIR] [--out DIR]

The default config (`make run`'s: 2 session shards, 2 memory shards, the default models); the
summarizer is the default model, converted once into benchmarks/.cache as the suite does. Each
probe polls on its own thread every POLL_S from the moment the new process is started, so the
three times are independent of each other. Load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks import scenarios
from benchmarks.server import ServerProcess, default_summarizer
from benchmarks.stamp import describe, machine

KEY = "restart-key"
ORG = "restart"
POLL_S = 0.05
PROBE_TIMEOUT_S = 2.0


def engine_env(summarizer: Path) -> dict[str, str]:
    return {
        "SESSION_ENGINE_API_KEYS": f"{KEY}={ORG}",
        "SESSION_ENGINE_MODELS__SUMMARIZER__PATH": str(summarizer),
    }


class Probe(threading.Thread):
    """Sends one request every POLL_S until `done(response)`; records the seconds since `t0`."""

    def __init__(self, name: str, url: str, t0: float, send: Any, done: Any, give_up_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.t0 = t0
        self.send = send
        self.done = done
        self.give_up_s = give_up_s
        self.seconds: float | None = None
        self.answers: dict[str, int] = {}  # status (or "refused") -> count, on the way there

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=PROBE_TIMEOUT_S) as client:
            while time.monotonic() - self.t0 < self.give_up_s:
                try:
                    response = self.send(client)
                except httpx.HTTPError:
                    self.answers["refused"] = self.answers.get("refused", 0) + 1
                else:
                    self.answers[str(response.status_code)] = (
                        self.answers.get(str(response.status_code), 0) + 1
                    )
                    if self.done(response):
                        self.seconds = round(time.monotonic() - self.t0, 2)
                        return
                time.sleep(POLL_S)


def kill_everything(server: ServerProcess) -> int:
    """SIGKILL every process of the server's session: the gateway, its Ray and the actors'
    workers (Ray puts some in process groups of their own, never in another session)."""
    return server.kill_session()


def measure(sessions: int, summarizer: Path, work: Path, give_up_s: float = 600.0) -> dict[str, Any]:
    """One crash and restart of an engine holding `sessions` sessions; the seconds to each milestone."""
    data = work / f"restart-{sessions}"
    scenarios.build_engine_data(data, ORG, sessions, 2)
    env = engine_env(summarizer)
    first = ServerProcess(data, [], env)
    started = time.monotonic()
    first.wait_ready(timeout_s=give_up_s)
    first_ready_s = time.monotonic() - started
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        session = client.post("/sessions", json={"name": "survivor"}).raise_for_status().json()["id"]
        client.post(
            f"/sessions/{session}/messages", json={"role": "user", "content": "before"}
        ).raise_for_status()
    killed = kill_everything(first)

    second = ServerProcess(data, [], env, port=first.port)
    t0, wall_t0 = time.monotonic(), time.time()
    probes = [
        Probe(
            "append", second.url, t0,
            lambda c: c.post(f"/sessions/{session}/messages", json={"role": "user", "content": "after"}),
            lambda r: r.status_code == 201, give_up_s,
        ),
        Probe(
            "ready", second.url, t0, lambda c: c.get("/readyz"),
            lambda r: r.status_code == 200 and r.json().get("status") == "ready", give_up_s,
        ),
        Probe(
            "memory query", second.url, t0,
            lambda c: c.post("/vectors/query", json={"query_text": "what was said before the crash"}),
            lambda r: r.status_code == 200, give_up_s,
        ),
    ]  # fmt: skip
    for probe in probes:
        probe.start()
    for probe in probes:
        probe.join(give_up_s + 10)
    try:
        with httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            kept = client.get(f"/sessions/{session}").json()["message_count"]
            readyz = client.get("/readyz").json()
    finally:
        second.stop()
    return {
        "sessions": sessions,
        "first_start_s": round(first_ready_s, 2),
        "processes_killed": killed,
        "to_first_append_s": probes[0].seconds,
        "to_ready_s": probes[1].seconds,
        "to_first_memory_query_s": probes[2].seconds,
        "answers_before": {p.name: p.answers for p in probes},
        "messages_kept": kept,
        "recovered_sessions": readyz.get("sessions"),
        "timeline": timeline(second.output(), wall_t0),
        "server_log": second.output(),
    }


# What the server's processes log as they get ready, in the order a start goes through.
MILESTONES = (
    "serving",
    "Application startup complete.",
    "shard recovered",
    "memory shard recovered",
    "embedder loaded",
    "summarizer loaded",
)


def log_entries(log: str) -> Iterator[dict[str, Any]]:
    """Each JSON entry the server's processes logged (Ray prefixes a worker's lines)."""
    for line in log.splitlines():
        start = line.find('{"ts"')
        if start < 0:
            continue
        try:
            yield json.loads(line[start:])
        except ValueError:
            continue


def timeline(log: str, wall_t0: float) -> list[tuple[float, str]]:
    """(seconds since the start, milestone) for each milestone a process logged, in time order:
    where a start's seconds go."""
    found = []
    for entry in log_entries(log):
        if entry.get("msg") in MILESTONES:
            where = entry.get("directory") or ""
            what = entry["msg"] + (f" ({Path(where).name})" if where else "")
            found.append((round(entry["ts"] / 1000 - wall_t0, 2), what))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument(
        "--summarizer", type=Path, help="local summarizer directory (default: the default model)"
    )
    parser.add_argument("--out", type=Path, help="write results.json here")
    args = parser.parse_args(argv)
    if args.summarizer is None:
        args.summarizer = default_summarizer()
    with tempfile.TemporaryDirectory(prefix="session-engine-restart-") as tmp:
        result = measure(args.sessions, args.summarizer, Path(tmp))
    result["machine"] = machine()
    log = result.pop("server_log")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        (args.out / "server.log").write_text(log)
    print(json.dumps(result, indent=2))
    print(f"machine: {describe(result['machine'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
