"""Scale-out on a simulated multi-node cluster: append throughput with 1, 2 and 4 gateways and 2
and 4 session shards, as ratios to one embedded server measured in the same run.

    python -m benchmarks.scaleout [--shards 2 4] [--gateways 1 2 4] [--seconds 10] [--connections 64]

For each shard count it starts a Ray cluster of two nodes on this machine
(ray.cluster_utils.Cluster: a head and a worker, each its own raylet; both carry the data
resource, so shards spread over them), then gateways that join it one after another (the first
creates the cluster's actors). After each step it runs the `append` scenario (one ~100-byte
message a request, 64 sessions) against every gateway at once, the connections split evenly
among them, and adds up the rates. Every process runs on this machine's cores, so on a small
machine the numbers show what contends for them, not what more machines would give; see the
docs/operations.md's "Scaling out". The embedded server comes first: `make run`'s setup, one gateway and its
own Ray, the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from ray.cluster_utils import Cluster

from benchmarks import load
from benchmarks.scenarios import setup_append
from benchmarks.server import ServerProcess
from benchmarks.stamp import describe, machine

KEY = "scaleout-key"
DATA_RESOURCE = "session_engine_data"


def measure_embedded(seconds: float, connections: int, work: Path) -> dict[str, Any]:
    """The same load against one embedded server (its own one-node Ray): the baseline that shows
    what the cluster machinery costs a request."""
    env = {"SESSION_ENGINE_API_KEYS": f"{KEY}=bench", "RAY_ADDRESS": ""}
    server = ServerProcess(work / "data-embedded", [], env).wait_ready(timeout_s=300)
    try:
        result = _append(server.url, [server], seconds, connections, work)
    finally:
        server.stop()
    return {"setup": "embedded", "shards": 2, "gateways": 1, **result}


def _append(
    url: str, gateways: list[ServerProcess], seconds: float, connections: int, work: Path
) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        plan = setup_append(client, 0)
    generator = "wrk" if load.ensure_wrk() else "python"
    each = max(1, connections // len(gateways))
    shape = load.Load(each, seconds)
    with ThreadPoolExecutor(len(gateways)) as pool:
        futures = [pool.submit(load.run, generator, g.url, KEY, plan, shape, work) for g in gateways]
        results = [f.result() for f in futures]
    return {
        "connections": each * len(gateways),
        "requests_per_s": round(sum(r["requests_per_s"] for r in results), 1),
        "errors": sum(r["errors"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "generator": results[0]["generator"],
    }


def measure(
    shards: int, gateway_counts: list[int], seconds: float, connections: int, work: Path
) -> list[dict[str, Any]]:
    node = {
        "num_cpus": os.cpu_count() or 2,
        "resources": {DATA_RESOURCE: 1},
        "object_store_memory": 100 * 2**20,
    }
    cluster = Cluster(
        initialize_head=True, connect=False, head_node_args={**node, "include_dashboard": False}
    )
    cluster.add_node(**node)
    env = {
        "SESSION_ENGINE_API_KEYS": f"{KEY}=bench",
        "SESSION_ENGINE_RAY__NAMESPACE": f"scaleout-{uuid.uuid4().hex[:8]}",
        "SESSION_ENGINE_PLACEMENT__DATA_RESOURCE": DATA_RESOURCE,
        "SESSION_ENGINE_SHARDS": str(shards),
        "RAY_ADDRESS": "",
    }
    data_dir = work / f"data-{shards}"
    gateways: list[ServerProcess] = []
    rows = []
    try:
        for count in gateway_counts:
            while len(gateways) < count:
                server = ServerProcess(data_dir, ["--ray-address", str(cluster.address)], env)
                gateways.append(server.wait_ready(timeout_s=300))
            result = _append(gateways[0].url, gateways[:count], seconds, connections, work)
            rows.append({"setup": "two-node cluster", "shards": shards, "gateways": count, **result})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for server in gateways:
            server.stop()
        cluster.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--gateways", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scaleout.json"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scaleout-"))
    started = time.monotonic()
    try:
        rows = [measure_embedded(args.seconds, args.connections, work)]
        print(json.dumps(rows[-1]), flush=True)
        for shards in args.shards:
            rows += measure(shards, sorted(args.gateways), args.seconds, args.connections, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["requests_per_s"] or 1.0
    for row in rows:
        row["vs_embedded"] = round(row["requests_per_s"] / base, 2)
    report = {
        "machine": describe(machine()),
        "when": time.strftime("%Y-%m-%d"),
        "command": f"python -m benchmarks.scaleout --shards {' '.join(map(str, args.shards))} --gateways "
        f"{' '.join(map(str, args.gateways))} --seconds {args.seconds} --connections {args.connections}",
        "seconds": round(time.monotonic() - started),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| setup | shards | gateways | appends/s | vs embedded | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = (row["setup"], row["shards"], row["gateways"], f"{row['requests_per_s']:,.0f}")
        cells += (f"{row['vs_embedded']:.2f}",)
        print("| " + " | ".join(map(str, (*cells, row["p99_ms"], row["errors"]))) + " |")


if __name__ == "__main__":
    main()
