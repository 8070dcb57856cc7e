"""The misbehaving fleet: one organization retries every write blindly, one races
conditional context updates, one floods past its rate limit, while a calm organization sends a
steady load. Measured three times with the same generator, in the same run: the calm organization
alone, beside a polite fleet (the same clients sending each write once, the flooder keeping to its
limit), and beside the misbehaving fleet. What it shows:

- exactly once: every acknowledged retried write is stored once (checked by reading back);
- the racers get 412 PRECONDITION_FAILED and lose no update (the counter equals the successes);
- the flooder gets 429 RATE_LIMITED beyond its rate, and about its rate of 2xx;
- the calm organization's latency in each phase (p50, p99), at the same offered rate: what the
  misbehaviour costs others beyond what the same clients cost when they behave.

    python -m benchmarks.hardening [--seconds 15] [--calm-rate 200] [--flood-rate 20] [--out DIR]

Traffic goes only to the 127.0.0.1 server it starts (or --url); every loop stops by time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks import stamp
from benchmarks.server import ServerProcess

ORGS = ("calm", "retry", "race", "flood")
KEYS = {org: f"{org}-key" for org in ORGS}
MESSAGE = "an agent turn of about one hundred characters, the size the targets assume for each message."


def server_env(flood_rate: float, fsync: str = "always") -> dict[str, str]:
    return {
        "SESSION_ENGINE_DURABILITY__FSYNC": fsync,
        "SESSION_ENGINE_API_KEYS": ",".join(f"{key}={org}" for org, key in KEYS.items()),
        "SESSION_ENGINE_LIMITS__ORGS": orjson.dumps({"flood": {"requests_per_second": flood_rate}}).decode(),
        "RAY_ADDRESS": "",
    }


def _auth(org: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[org]}"}


async def _new_session(client: httpx.AsyncClient, org: str) -> str:
    for _ in range(20):  # the flooding organization's bucket may be empty after a phase: wait as told
        response = await client.post("/sessions", json={"name": org, "context": {"n": 0}}, headers=_auth(org))
        if response.status_code != 429:
            break
        await asyncio.sleep(float(response.headers["Retry-After"]))
    response.raise_for_status()
    return str(response.json()["id"])


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    values = np.asarray(latencies_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


async def calm(client: httpx.AsyncClient, sessions: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: appends sent at a fixed rate whatever the answers take, so both phases offer the
    same load and the latency shows any slowdown (a closed loop would hide it in a lower rate)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def one(sid: str) -> None:
        started = time.perf_counter()
        response = await client.post(
            f"/sessions/{sid}/messages", json={"role": "user", "content": MESSAGE}, headers=_auth("calm")
        )
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status_code] += 1

    tasks = []
    start = time.perf_counter()
    for i in itertools.count():
        due = start + i / rate
        if due - start >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(sessions[i % len(sessions)])))
    await asyncio.gather(*tasks)
    return {
        "offered_per_s": rate,
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        **_percentiles(latencies),
    }


async def retrier(
    client: httpx.AsyncClient, sid: str, until: float, rng: random.Random, polite: bool
) -> dict[str, Any]:
    """Every append carries a new key and is sent two or three times, sometimes two at once (a
    retry racing a slow first try), as a client does that never trusts a reply to arrive. Polite:
    each is sent once."""
    counts: Counter[str] = Counter()
    acknowledged: list[str] = []
    while time.perf_counter() < until:
        key = str(uuid.uuid4())
        body = {"role": "user", "content": key}
        headers = {**_auth("retry"), "Idempotency-Key": key}
        sends = 1 if polite else rng.choice((2, 3))
        together = 2 if rng.random() < 0.3 and not polite else 1
        answers: list[httpx.Response] = []
        for attempt in range(sends):
            burst = together if attempt == 0 else 1
            answers += await asyncio.gather(
                *(client.post(f"/sessions/{sid}/messages", json=body, headers=headers) for _ in range(burst))
            )
        seqs = {a.json()["seq"] for a in answers if a.status_code == 201}
        counts["sent"] += len(answers)
        counts["replayed"] += sum(a.headers.get("idempotent-replayed") == "true" for a in answers)
        counts["errors"] += sum(a.status_code != 201 for a in answers)
        counts["answers_disagreed"] += len(seqs) > 1
        if seqs:
            acknowledged.append(key)
    return {"counts": counts, "acknowledged": acknowledged}


async def racer(client: httpx.AsyncClient, sid: str, until: float) -> Counter[str]:
    """Read-modify-write of a shared counter with If-Match; on 412 read again and retry."""
    counts: Counter[str] = Counter()
    while time.perf_counter() < until:
        current = (await client.get(f"/sessions/{sid}", params={"limit": 1}, headers=_auth("race"))).json()
        response = await client.put(
            f"/sessions/{sid}/context",
            json={"n": current["context"]["n"] + 1},
            headers={**_auth("race"), "If-Match": f'"{current["version"]}"'},
        )
        counts[
            {200: "updated", 412: "precondition_failed"}.get(response.status_code, str(response.status_code))
        ] += 1
    return counts


async def flooder(client: httpx.AsyncClient, sid: str, until: float, pace_s: float | None) -> Counter[int]:
    """As fast as one connection goes, ignoring Retry-After; or polite, one request every `pace_s`
    (the organization's limit shared by its connections)."""
    statuses: Counter[int] = Counter()
    due = time.perf_counter()
    while time.perf_counter() < until:
        if pace_s is not None:
            due += pace_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        response = await client.post(
            f"/sessions/{sid}/messages", json={"role": "user", "content": MESSAGE}, headers=_auth("flood")
        )
        statuses[response.status_code] += 1
    return statuses


async def fleet(
    url: str, sessions: dict[str, Any], seconds: float, clients: int, flood_rate: float, polite: bool
) -> dict[str, Any]:
    """The three misbehaving organizations for `seconds`, then everything read back. Polite: the
    same clients, but no retries and the flooder keeps to its limit: the same kind of load, minus
    the misbehaviour."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        until = time.perf_counter() + seconds
        rng = random.Random(6)
        flooders = clients * 2
        pace = flooders / flood_rate if polite else None
        started = time.perf_counter()
        retried, raced, flooded = await asyncio.gather(
            asyncio.gather(*(retrier(client, sid, until, rng, polite) for sid in sessions["retry"])),
            asyncio.gather(*(racer(client, sessions["race"], until) for _ in range(clients))),
            asyncio.gather(*(flooder(client, sessions["flood"], until, pace) for _ in range(flooders))),
        )
        elapsed = time.perf_counter() - started

        # Read everything back: each acknowledged key stored exactly once, the counter exact.
        stored: Counter[str] = Counter()
        gap_free = True
        for sid in sessions["retry"]:
            messages = (await client.get(f"/sessions/{sid}", headers=_auth("retry"))).json()["messages"]
            stored.update(m["content"] for m in messages)
            gap_free &= [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        race_final = (
            await client.get(f"/sessions/{sessions['race']}", params={"limit": 1}, headers=_auth("race"))
        ).json()

    def total(counters: list[Counter[Any]]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for counter in counters:
            for name, n in counter.items():
                out[name] = out.get(name, 0) + n
        return out

    retry = {
        "sent": 0,
        "replayed": 0,
        "errors": 0,
        "answers_disagreed": 0,
        **total([r["counts"] for r in retried]),
    }
    race = {"updated": 0, "precondition_failed": 0, **total(raced)}
    flood = total(flooded)
    return {
        "retry": {
            **retry,
            "writes_acknowledged": sum(len(r["acknowledged"]) for r in retried),
            "messages_stored": sum(stored.values()),
            "stored_twice": sum(1 for n in stored.values() if n > 1),
            "seqs_gap_free": gap_free,
        },
        "race": {
            **race,
            "final_counter": race_final["context"]["n"],
            "final_version": race_final["version"],
            "lost_updates": race["updated"] - race_final["context"]["n"],
        },
        "flood": {
            "statuses": {str(k): v for k, v in sorted(flood.items())},
            "admitted_per_s": round(sum(n for status, n in flood.items() if status < 300) / elapsed, 1),
            "refused_per_s": round(flood.get(429, 0) / elapsed, 1),
        },
    }


def _fleet_process(url: str, sessions: dict[str, Any], args: tuple[Any, ...], out: Any) -> None:
    # At a lower CPU priority, standing in for clients on machines of their own: on a small box the
    # fleet's closed-loop Python clients would otherwise take the cores the server needs, and the
    # calm organization's latency would measure the load generator, not the engine.
    os.nice(10)
    out.send("started")
    out.send(asyncio.run(fleet(url, sessions, *args)))


async def _calm_phase(url: str, sessions: list[str], rate: float, seconds: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await calm(client, sessions, rate, seconds)


async def _sessions(url: str, clients: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return {
            "calm": [await _new_session(client, "calm") for _ in range(8)],
            "retry": [await _new_session(client, "retry") for _ in range(clients)],
            "race": await _new_session(client, "race"),
            "flood": await _new_session(client, "flood"),
        }


def _beside_fleet(
    url: str, sessions: dict[str, Any], calm_rate: float, seconds: float, fleet_args: tuple[Any, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calm organization's phase with a fleet running beside it in a process of its own, so the
    calm client's latencies are not its own event loop waiting behind the fleet's."""
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    # The fleet runs a little longer than the calm phase beside it, so it is there throughout.
    process = multiprocessing.get_context("spawn").Process(
        target=_fleet_process, args=(url, sessions, (seconds + 1.5, *fleet_args), send)
    )
    process.start()
    try:
        if not receive.poll(120) or receive.recv() != "started":
            raise RuntimeError("the fleet process did not start")
        time.sleep(0.5)
        beside = asyncio.run(_calm_phase(url, sessions["calm"], calm_rate, seconds))
        if not receive.poll(seconds + 120):
            raise RuntimeError("the fleet process did not report")
        return beside, receive.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()


def measure(url: str, seconds: float, calm_rate: float, flood_rate: float, clients: int) -> dict[str, Any]:
    """The calm organization alone, beside a polite fleet, and beside the misbehaving one (each on
    sessions of its own), at the same offered rate."""
    alone = asyncio.run(_calm_phase(url, asyncio.run(_sessions(url, clients))["calm"], calm_rate, seconds))
    phases = {}
    for name, polite in (("polite", True), ("misbehaving", False)):
        sessions = asyncio.run(_sessions(url, clients))
        phases[name] = _beside_fleet(url, sessions, calm_rate, seconds, (clients, flood_rate, polite))
        phases[name][1]["flood"]["limit_per_s"] = flood_rate
    (polite_calm, polite_fleet), (beside, misbehaving) = phases["polite"], phases["misbehaving"]
    return {
        "seconds": seconds,
        "clients_per_misbehaving_org": clients,
        "calm_alone": alone,
        "calm_beside_polite_fleet": polite_calm,
        "calm_beside_fleet": beside,
        "polite_fleet": polite_fleet,
        **misbehaving,
    }


def markdown(result: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    retry, race, flood, polite = result["retry"], result["race"], result["flood"], result["polite_fleet"]
    rows = [
        f"| {label} | {r['offered_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
        f"{r['statuses']} |"
        for label, r in (
            ("alone", result["calm_alone"]),
            ("beside the polite fleet", result["calm_beside_polite_fleet"]),
            ("beside the misbehaving fleet", result["calm_beside_fleet"]),
        )
    ]
    return "\n".join(
        [
            "# Misbehaving fleet",
            "",
            f"`{command}` on {stamp.describe(machine)}.",
            "",
            "| calm organization, appends | offered/s | p50 ms | p99 ms | max ms | statuses |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"- the polite fleet beside the calm organization: {polite['retry']['sent']} appends sent once, "
            f"{polite['race'].get('updated', 0)} context updates and "
            f"{polite['race'].get('precondition_failed', 0)} 412s, {polite['flood']['admitted_per_s']}/s "
            "appends from the flooding organization at its limit.",
            "- the misbehaving fleet:",
            f"- retrying clients: {retry.get('sent', 0)} requests for {retry['writes_acknowledged']} "
            f"writes, {retry.get('replayed', 0)} answered from the first run; "
            f"{retry['messages_stored']} messages stored, {retry['stored_twice']} of them twice; "
            f"answers that disagreed: {retry.get('answers_disagreed', 0)}.",
            f"- racing context updates: {race.get('updated', 0)} applied, "
            f"{race.get('precondition_failed', 0)} got 412; counter {race['final_counter']} at version "
            f"{race['final_version']} (lost updates: {race['lost_updates']}).",
            f"- flooding organization (limit {flood['limit_per_s']}/s): {flood['admitted_per_s']}/s "
            f"admitted, {flood['refused_per_s']}/s refused with 429; statuses {flood['statuses']}.",
            "",
        ]
    )


@contextlib.contextmanager
def _server(url: str | None, flood_rate: float, fsync: str, work: Path) -> Iterator[str]:
    if url is not None:
        yield url
        return
    server = ServerProcess(work / "data", [], server_env(flood_rate, fsync)).wait_ready(timeout_s=300)
    try:
        yield server.url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hardening", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="of each phase")
    parser.add_argument("--calm-rate", type=float, default=200.0, help="appends a second the calm org sends")
    parser.add_argument("--flood-rate", type=float, default=20.0, help="the flooding org's rate limit")
    parser.add_argument("--clients", type=int, default=4, help="connections of each misbehaving org")
    parser.add_argument("--fsync", choices=("always", "everysec", "never"), default="always")
    parser.add_argument("--url", help="a running engine started with server_env()'s keys and limits")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hardening")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.hardening " + " ".join(argv if argv is not None else [])
    with (
        tempfile.TemporaryDirectory(prefix="session-engine-hardening-") as tmp,
        _server(args.url, args.flood_rate, args.fsync, Path(tmp)) as url,
    ):
        result = measure(url, args.seconds, args.calm_rate, args.flood_rate, args.clients)
    machine = stamp.machine()
    document = {"command": command.strip(), "machine": machine, "versions": stamp.versions(None), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    text = markdown(result, machine, command.strip())
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
