"""The suite's scenarios.

HTTP scenarios build a plan of requests (after setting up what it needs through the API) and are
replayed by the load generator against each server: the engine, the ceiling baseline and the
naive baseline. Engine scenarios measure one part of the engine in this process or a whole local
engine: summarizer batching, snapshots and recovery, and memory held per session.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

from benchmarks import load
from benchmarks.load import HERE, Request
from benchmarks.server import ServerProcess
from engine.config import DurabilityConfig
from engine.routing import shard_for
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage, new_session_id
from engine.storage.layout import claim_layout, shard_directory

MESSAGE = "an agent turn of about one hundred characters, the size the targets assume for each message."
BATCH = 50
DIMENSION = 384


@dataclass(frozen=True, slots=True)
class HttpScenario:
    name: str
    does: str
    unit: str  # what one request carries, counted per second
    per_request: int
    setup: Callable[[httpx.Client, int], list[Request]]
    servers: tuple[str, ...] = ("engine", "ceiling", "naive")
    latency_bound: bool = False  # measured with few connections: its latency is the point


def _sessions(client: httpx.Client, n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/sessions", json={"name": f"{prefix}-{i}"})
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def _body(value: Any) -> bytes:
    return orjson.dumps(value)


def setup_append(client: httpx.Client, _: int) -> list[Request]:
    body = _body({"role": "user", "content": MESSAGE})
    return [Request("POST", f"/sessions/{sid}/messages", body) for sid in _sessions(client, 64, "append")]


def setup_append_batch(client: httpx.Client, _: int) -> list[Request]:
    body = _body({"messages": [{"role": "user", "content": MESSAGE}] * BATCH})
    return [Request("POST", f"/sessions/{sid}/messages", body) for sid in _sessions(client, 64, "batch")]


def setup_create(client: httpx.Client, _: int) -> list[Request]:
    return [Request("POST", "/sessions", _body({"name": "a fleet agent's session"}))]


def setup_list(client: httpx.Client, _: int) -> list[Request]:
    # Completed (not closed: that would start summaries) so the status filter has two kinds to sort.
    ids = _sessions(client, 200, "list")
    for sid in ids[::4]:
        client.post(f"/sessions/{sid}/complete").raise_for_status()
    return [
        Request("GET", "/sessions?status=active&limit=50"),
        Request("GET", "/sessions?status=completed&limit=50"),
    ]


def clustered(n: int, rng: np.random.Generator, centres: int = 2000) -> np.ndarray:
    """Unit vectors near one of `centres` directions: closer to real embeddings than uniform noise."""
    middle = rng.standard_normal((centres, DIMENSION)).astype(np.float32)
    out = middle[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, DIMENSION)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def setup_query(size: int) -> Callable[[httpx.Client, int], list[Request]]:
    def setup(client: httpx.Client, _: int) -> list[Request]:
        rng = np.random.default_rng(size)
        namespace = f"bench-{size}"
        data = clustered(size, rng)
        for start in range(0, size, 100):
            chunk = data[start : start + 100]
            body = {
                "namespace": namespace,
                "vectors": [
                    {"id": f"v{start + i}", "values": v.round(5).tolist(), "metadata": {"n": start + i}}
                    for i, v in enumerate(chunk)
                ],
            }
            _post_patiently(client, "/vectors/upsert", _body(body))
        queries = clustered(64, np.random.default_rng(size + 1))
        return [
            Request("POST", "/vectors/query", _body({"namespace": namespace, "vector": q.round(5).tolist()}))
            for q in queries
        ]

    return setup


def _post_patiently(client: httpx.Client, path: str, body: bytes, tries: int = 10) -> None:
    """An upsert that crosses memory.hnsw_above waits for the HNSW build; retry through its 503s."""
    for attempt in range(tries):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"}, timeout=120)
        if r.status_code != 503 or attempt == tries - 1:
            r.raise_for_status()
            return
        time.sleep(5)


HTTP_SCENARIOS = {
    s.name: s
    for s in (
        HttpScenario("append", "one message a request, to 64 sessions", "messages/s", 1, setup_append),
        HttpScenario(
            "append-batch",
            f"{BATCH} messages a request, to 64 sessions",
            "messages/s",
            BATCH,
            setup_append_batch,
        ),
        HttpScenario("create", "POST /sessions", "sessions/s", 1, setup_create),
        HttpScenario(
            "list",
            "GET /sessions?status=…&limit=50 over 200 sessions, 1/4 completed",
            "lists/s",
            1,
            setup_list,
        ),
    )
}


def query_scenario(size: int) -> HttpScenario:
    return HttpScenario(
        f"query@{size}",
        f"POST /vectors/query, top 10 of {size:,} clustered 384-d vectors in one namespace",
        "queries/s",
        1,
        setup_query(size),
        servers=("engine", "naive"),
        latency_bound=True,
    )


def run_fleet(url: str, key: str, users: int, duration_s: float, work: Path) -> dict[str, Any]:
    """The locustfile's fleet, headless; Locust's aggregated stats and finished sessions per second."""
    prefix = work / f"locust-{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{max(1, round(duration_s))}s", "--host", url,
        "--csv", str(prefix), "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_API_KEY": key}
    probe = LiveProbe(url, key)
    probe.start()
    try:
        subprocess.run(command, env=env, capture_output=True, timeout=duration_s + 120, check=False)
    finally:
        probe.stop.set()
        probe.join(LIVE_PROBE_WAIT_S + 30)
    rows = {row["Name"]: row for row in csv.DictReader((prefix.parent / f"{prefix.name}_stats.csv").open())}
    total = rows["Aggregated"]
    closed = rows.get("close session", {}).get("Request Count", "0")
    seconds = duration_s
    return {
        "generator": f"locust (FastHttpUser), {users} users",
        "requests": int(total["Request Count"]),
        "seconds": seconds,
        "requests_per_s": round(float(total["Requests/s"]), 1),
        "errors": int(total["Failure Count"]),
        "sessions_finished_per_s": round(int(closed) / seconds, 2),
        "mean_ms": round(float(total["Average Response Time"]), 2),
        **{
            f"p{k}_ms": _locust_ms(total[f"{v}%"])
            for k, v in (("50", "50"), ("90", "90"), ("99", "99"), ("999", "99.9"))
        },
        "max_ms": _locust_ms(total["100%"]),
        "live_lag": probe.result(),
        "by_request": {
            name: {
                "count": int(r["Request Count"]),
                "p50_ms": _locust_ms(r["50%"]),
                "p99_ms": _locust_ms(r["99%"]),
            }
            for name, r in rows.items()
            if name != "Aggregated"
        },
    }


LIVE_PROBES = 60  # a fleet run's probes of live memory, at most
LIVE_PROBE_WAIT_S = 15.0  # a probe whose word is not found by then counts as missed


class LiveProbe(threading.Thread):
    """Live memory's lag under the fleet, end to end: a session of the probe's own gets a message
    with a word said nowhere else, then a session-memory query for the word, filtered to that
    session, is sent every 50 ms until one of the match's highlights shows it; the lag runs from
    the append's answer. One probe at a time, up to LIVE_PROBES, while the fleet runs. (Hybrid,
    the default mode: a lexical query ranks sessions by their whole-session entries, which an
    open session has none of yet; its turn's words show in the highlights.)"""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self._url, self._key = url, key
        self.stop = threading.Event()
        self.lags_ms: list[int] = []
        self.missed = 0

    def run(self) -> None:
        with httpx.Client(
            base_url=self._url, headers={"Authorization": f"Bearer {self._key}"}, timeout=30
        ) as client:
            sid = client.post("/sessions", json={"name": "live probe"}).raise_for_status().json()["id"]
            while not self.stop.is_set() and len(self.lags_ms) + self.missed < LIVE_PROBES:
                self._probe(client, sid, f"zq{uuid.uuid4().hex[:12]}")

    def _probe(self, client: httpx.Client, sid: str, word: str) -> None:
        body = {"role": "user", "content": f"the probe's word is {word}"}
        client.post(f"/sessions/{sid}/messages", json=body).raise_for_status()
        said = time.monotonic()
        query = {"namespace": "session-memory", "query_text": word, "filter": {"session_id": sid}}
        while time.monotonic() - said < LIVE_PROBE_WAIT_S:
            matches = client.post("/vectors/query", json=query).raise_for_status().json()["matches"]
            if any(word in h["content"] for m in matches for h in m["metadata"]["highlights"]):
                self.lags_ms.append(round((time.monotonic() - said) * 1000))
                return
            time.sleep(0.05)
        self.missed += 1

    def result(self) -> dict[str, Any]:
        return {
            "probes": len(self.lags_ms) + self.missed,
            "missed": self.missed,
            "lag_ms": _spread(self.lags_ms),
        }


def append_live_on_off(
    generator: str,
    env: dict[str, str],
    key: str,
    work: Path,
    connections: int,
    duration_s: float,
    rounds: int = 2,
) -> dict[str, Any]:
    """The `append` scenario on a fresh engine with live memory on, then off, `rounds` times in
    turn (so drift on a shared machine falls on both): requests a second of each, and on ÷ off.
    `env`: the engine's (its API key `key` among it), as the suite starts it."""
    scenario = HTTP_SCENARIOS["append"]
    runs: dict[str, list[float]] = {"on": [], "off": []}
    for round_ in range(rounds):
        for live in ("on", "off"):
            data = work / f"append-live-{live}-{round_}"
            switch = {"SESSION_ENGINE_MEMORY__LIVE__ENABLED": "true" if live == "on" else "false"}
            process = ServerProcess(data, [], {**env, **switch}).wait_ready(timeout_s=600)
            try:
                with httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {key}"}) as client:
                    plan = scenario.setup(client, connections)
                load.run(generator, process.url, key, plan, load.Load(connections, 1), work)
                result = load.run(generator, process.url, key, plan, load.Load(connections, duration_s), work)
            finally:
                process.stop()
            runs[live].append(float(result["requests_per_s"]))
    on, off = float(np.mean(runs["on"])), float(np.mean(runs["off"]))
    return {"requests_per_s": runs, "on_vs_off": round(on / off, 3)}


def summary_lag(url: str, key: str, wait_s: float) -> dict[str, Any]:
    """How long the sessions a fleet closed waited, from their close, to have their summary and to
    be searchable (their turns and summary in session memory, `index_status: ready`); waits up to
    `wait_s` for summaries still being made and sessions still being indexed, and counts those left
    (with how long the oldest has waited, so an unfinished backlog shows).

    A summary is ready with its extract, before the session is indexed (engine.closing.job);
    `close_to_ready_ms` is that lag, over the summaries still extractive, and
    `close_to_searchable_ms` the lag to `indexed_at`. A kept model upgrade moves its `created_at` to the
    upgrade and keeps no time of its extract: those summaries are counted in
    `close_to_upgrade_ms`, their lag to the model's text, which bounds their first ready time from
    above, so no summary drops out of the lags. `model_pass` is the summarizer pool's state and
    acceptance rate as /readyz says it, read once the wait is over."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while True:
            closed = _all_sessions(client, "closed")
            waiting = [s for s in closed if s["summary_status"] in ("pending", "running")]
            unindexed = [s for s in closed if s["index_status"] == "pending"]
            if not (waiting or unindexed) or time.monotonic() - started >= wait_s:
                break
            time.sleep(1)
        models = client.get("/readyz").json().get("models", {})
    now_ms = int(time.time() * 1000)
    ready = [s for s in closed if s["summary_status"] == "ready"]
    summarized = [s["summary_provenance"]["created_at"] - s["ended_at"] for s in ready]
    extracts = [s for s in ready if s["summary_provenance"]["method"] == "extractive"]
    extracted = [s["summary_provenance"]["created_at"] - s["ended_at"] for s in extracts]
    upgraded = [
        s["summary_provenance"]["created_at"] - s["ended_at"]
        for s in ready
        if s["summary_provenance"]["method"] != "extractive"
    ]
    searchable = [s["indexed_at"] - s["ended_at"] for s in closed if s["indexed_at"]]
    return {
        "close_to_ready_ms": _spread(extracted),
        "close_to_upgrade_ms": _spread(upgraded),
        "upgraded": len(ready) - len(extracts),
        "model_rejected": sum("model_rejected" in s["summary_provenance"] for s in extracts),
        "upgrades_pending": sum("upgrade" in s["summary_provenance"] for s in extracts),
        "model_pass": (models.get("summarizer") or {}).get("model_pass"),
        "closed": len(closed),
        "summaries_ready": len(ready),
        "summaries_failed": sum(s["summary_status"] == "failed" for s in closed),
        "summaries_waiting": len(waiting),
        "indexes_waiting": len(unindexed),
        "waited_after_fleet_s": round(time.monotonic() - started, 1),
        "oldest_waiting_ms": max((now_ms - s["ended_at"] for s in waiting), default=0),
        "oldest_unindexed_ms": max((now_ms - s["ended_at"] for s in unindexed), default=0),
        "close_to_summary_ms": _spread(summarized),
        "close_to_searchable_ms": _spread(searchable),
    }


def _all_sessions(client: httpx.Client, status: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"status": status, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get("/sessions", params=params).raise_for_status().json()
        found += page["sessions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def _spread(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ms = np.array(values, dtype=float)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def _locust_ms(value: str) -> float:
    return float(value) if value not in ("", "N/A") else 0.0


# ---- the engine's memory and restart time, from outside its processes ----


def engine_memory(server_pid: int) -> dict[str, float]:
    """Unique memory (USS) of every process of a running engine, and of its session shard actors."""
    total = shards = 0.0
    shard_count = 0
    root = psutil.Process(server_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            uss = proc.memory_full_info().uss
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += uss
        if "SessionShard" in cmdline:
            shards += uss
            shard_count += 1
    return {
        "engine_mib": round(total / 2**20, 1),
        "shards_mib": round(shards / 2**20, 1),
        "shard_processes": shard_count,
    }


def build_engine_data(
    data_dir: Path,
    org: str,
    sessions: int,
    shards: int,
    *,
    messages: int = 10,
    context: dict[str, Any] | None = None,
) -> list[str]:
    """Write N sessions of `messages` ~100-character messages (and `context`, with the session's
    number in it) into an engine data directory, each in the shard the gateway would route it to,
    then snapshot: what a server holding them leaves behind. Returns the sessions' ids."""
    claim_layout(data_dir, shards)
    ids_by_shard: list[list[str]] = [[] for _ in range(shards)]
    for _ in range(sessions):
        sid = new_session_id()
        ids_by_shard[shard_for(org, sid, shards)].append(sid)
    turns = tuple(NewMessage("user", MESSAGE) for _ in range(messages))
    per_commit = max(1, 5000 // max(1, messages))
    for index, ids in enumerate(ids_by_shard):
        shard = DurableSessions(shard_directory(data_dir, index), DurabilityConfig(fsync="never"))
        for start in range(0, len(ids), per_commit):
            batch: list[Any] = []
            for n, sid in enumerate(ids[start : start + per_commit], start):
                batch.append(CreateSession(org, sid, f"s{n}", 86_400, {**(context or {}), "n": n}))
                batch.append(AppendMessages(org, sid, turns))
            shard.commit(batch)
        shard.close(snapshot=True)
        del shard
    return [sid for ids in ids_by_shard for sid in ids]
