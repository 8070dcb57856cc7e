"""A real Prometheus (Debian's package, started here on loopback) scrapes a real gateway under load;
the series, the shipped alert rules and every panel of the shipped Grafana dashboard are checked
through Prometheus' own HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.load import ensure_package
from benchmarks.server import ServerProcess, free_port
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def prometheus(ray_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = ensure_package("prometheus", "prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed and cannot be installed here (apt-get install prometheus)")
    home = tmp_path_factory.mktemp("prometheus")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", home / "alerts.yml")
    port = free_port()
    (home / "prometheus.yml").write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {
                        "job_name": "session-engine",
                        "static_configs": [{"targets": [ray_server.url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, "prometheus ready")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_prometheus_scrapes_the_engine_under_load(ray_server: ServerProcess, prometheus: str) -> None:
    stop = time.monotonic() + 8
    with httpx.Client(base_url=ray_server.url, timeout=30) as http:
        api = Api(http, "org199")
        sessions = [api.new_session()["id"] for _ in range(4)]

        def load(sid: str) -> None:
            with httpx.Client(base_url=ray_server.url, timeout=30) as own:
                writer = Api(own, "org199")
                for i in range(2000):  # bounded in count and in time
                    if time.monotonic() > stop:
                        return
                    writer.post(f"/sessions/{sid}/messages", json={"role": "user", "content": f"m{i}"})

        threads = [threading.Thread(target=load, args=(sid,)) for sid in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        api.post(f"/sessions/{sessions[0]}/close")

    def appends() -> float:
        found = query(
            prometheus, 'sum(session_engine_http_requests_total{route="/sessions/{session_id}/messages"})'
        )
        return float(found[0]["value"][1]) if found else 0.0

    _wait(lambda: appends() >= 100, "appends counted by prometheus")
    up = query(prometheus, 'up{job="session-engine"}')
    assert [float(s["value"][1]) for s in up] == [1.0]
    shards = {s["metric"]["shard"] for s in query(prometheus, "session_engine_shard_state")}
    assert shards == {"session-0", "session-1", "memory-0", "memory-1"}
    active = query(prometheus, 'sum(session_engine_sessions{status="active"})')
    assert float(active[0]["value"][1]) >= 3
    _wait(
        lambda: query(
            prometheus,
            "histogram_quantile(0.99, sum by (le) (rate(session_engine_log_commit_seconds_bucket[1m])))",
        ),
        "a log write latency",
    )
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [rule for group in rules for rule in group["rules"]]
    assert len(loaded) >= 8 and all(rule["health"] == "ok" for rule in loaded), loaded
    # Every panel of the shipped dashboard is a query Prometheus accepts.
    dashboard = json.loads((DEPLOY / "grafana" / "session-engine.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query(prometheus, target["expr"].replace("$job", "session-engine"))
