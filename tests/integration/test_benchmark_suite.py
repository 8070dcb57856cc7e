"""The benchmark suite itself, at its tiny size: it starts what it measures, measures every scenario,
and writes valid results. No timing is asserted: numbers from a test machine mean nothing.

The suite starts its own embedded engines (each with its own Ray), as a user's run does; this is
the one test that does, and it runs once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import suite
from benchmarks.server import free_port

# The suite at its tiny size starts a dozen engines (kills and restarts one, backs one up and
# restores it): more than the project's 300 s a test.
pytestmark = pytest.mark.timeout(1200)
GENERATOR = "wrk" if shutil.which("wrk") else "python"
REDIS = shutil.which("redis-server") is not None and shutil.which("redis-benchmark") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_t5: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    argv = ["--profile", "tiny", "--generator", GENERATOR, "--summarizer", str(tiny_t5), "--out", str(out)]
    assert suite.main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_scenario_is_measured_against_its_servers(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, document = tiny_run
    scenarios = document["scenarios"]
    expected_http = {"append", "append-batch", "create", "list", "query@300", "fleet"}
    engine_only = {
        "feeds", "append-live", "scaling", "summarize", "snapshot", "resident", "restart", "backup", "recall",
    }  # fmt: skip
    assert expected_http | engine_only == set(scenarios)
    for name in expected_http:
        servers = scenarios[name]["servers"]
        wanted = {"engine", "naive"} if name in ("query@300", "fleet") else {"engine", "ceiling", "naive"}
        if name in ("append", "append-batch") and REDIS:
            wanted.add("redis")  # the same appends as RPUSH to a redis-server the suite started
        assert set(servers) == wanted, name
        for server, result in servers.items():
            assert result["requests"] > 0 and result["errors"] == 0, (name, server, result)
            assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"], (name, server, result)
            generator = "redis-benchmark" if server == "redis" else "locust" if name == "fleet" else GENERATOR
            assert result["generator"].startswith(generator)
    # The fleet closed sessions and queried memory: every step of the locustfile ran.
    steps = scenarios["fleet"]["servers"]["engine"]["by_request"]
    assert {"create session", "append message", "read session", "close session", "query memory"} <= set(steps)


def test_engine_scenarios_report_what_they_measured(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, document = tiny_run
    summaries = document["scenarios"]["summarize"]["rows"]
    assert [r["batch_size"] for r in summaries] == [1, 2] and all(r["summaries_per_s"] > 0 for r in summaries)
    live = document["scenarios"]["append-live"]
    assert [len(live["requests_per_s"][k]) for k in ("on", "off")] == [1, 1] and live["on_vs_off"] > 0, live
    scaling = document["scenarios"]["scaling"]["rows"]
    assert [(r["workers"], r["shards"]) for r in scaling] == [(1, 2), (2, 2)]
    assert all(r["requests_per_s"] > 0 and r["errors"] == 0 for r in scaling), scaling
    lag = document["scenarios"]["fleet"]["servers"]["engine"]["summary_lag"]
    assert lag["closed"] > 0 and lag["close_to_searchable_ms"] is not None, lag
    assert lag["summaries_ready"] + lag["summaries_failed"] + lag["summaries_waiting"] == lag["closed"]
    (snapshot,) = document["scenarios"]["snapshot"]["rows"]
    assert snapshot["sessions"] == 300 and snapshot["snapshot_bytes"] > 0
    resident = document["scenarios"]["resident"]
    (row,) = resident["rows"]
    assert row["sessions"] == 300 and row["shards_mib"] > 0 and resident["empty"]["shard_processes"] == 2
    (restarted,) = document["scenarios"]["restart"]["rows"]
    assert restarted["sessions"] == 300 and restarted["recovered_sessions"] == 301, restarted
    assert restarted["messages_kept"] == 2  # the one written before the kill and the one after
    assert all(restarted[f"to_{m}_s"] > 0 for m in ("first_append", "ready", "first_memory_query"))
    backed_up = document["scenarios"]["backup"]
    appends = backed_up["appends"]
    windows = appends["windows"]
    assert [w["backup"] for w in windows] == [False, True, False, True, False]
    assert all(w["requests"] > 0 and w["errors"] == 0 for w in [appends["warm_up"], *windows]), windows
    assert all(w["backups"] and all(b["bytes"] > 0 for b in w["backups"]) for w in windows if w["backup"])
    # The export holds the data written before the server started and every acknowledged append.
    appended = sum(w["requests"] for w in [appends["warm_up"], *windows])
    assert backed_up["export"]["messages"] == backed_up["data"]["messages"] + appended == 2_000 + appended
    assert backed_up["export"]["sessions"] == backed_up["data"]["sessions"]
    assert set(backed_up["export"]["rss_mib"]) == {
        "gateway", "SessionShard-1", "SessionShard-2", "MemoryShard-1", "MemoryShard-2",
    }  # fmt: skip
    # The restored directory and the original both start and take an append to a session they hold.
    for start in (backed_up["recovery"], backed_up["restored_start"]):
        assert start["to_first_append_s"] > 0 and start["sessions_recovered"] == backed_up["data"]["sessions"]
    feeds = document["scenarios"]["feeds"]["rows"]
    assert [r["run"] for r in feeds] == ["plain", "scraped every 1 s", "10 idle feeds", "plain again"]
    assert feeds[2]["feeds_open"] == 10 and feeds[1]["scrape_bytes"] > 0
    assert all(r["requests_per_s"] > 0 and r["errors"] == 0 for r in feeds), feeds
    recall = document["scenarios"]["recall"]
    assert recall["sessions"] == 6 and recall["questions"] > 0
    assert set(recall["methods"]) >= {
        "engine (hybrid)",
        "bm25 transcripts",
        "dense turns",
        "dense summary",
        "random",
    }
    assert recall["summaries"]["ready"] + recall["summaries"]["failed"] == 6


def test_results_are_stamped_and_written_as_json_markdown_and_plots(
    tiny_run: tuple[Path, dict[str, Any]],
) -> None:
    out, document = tiny_run
    assert document["machine"]["cores"] >= 1 and document["machine"]["cpu"]
    assert document["versions"]["session-engine"] and document["config"]["durability"]["fsync"] == "always"
    assert len(document["targets"]) == 17
    # Sizes a tiny run does not reach say so instead of passing or failing.
    unmeasured = [t for t in document["targets"] if t["measured"] is None]
    assert unmeasured and all(t["shown"] == "not measured in this run" for t in unmeasured)
    assert all(t["met"] is None for t in unmeasured)
    # engine ÷ Redis is reported, never passed or failed.
    reported = [t for t in document["targets"] if t["wanted"] == "reported"]
    assert len(reported) == 2 and all(t["met"] is None for t in reported)
    assert all(t["measured"] is not None for t in reported) == REDIS
    table = (out / "results.md").read_text()
    assert "| append | engine |" in table and "## Targets" in table
    for plot in ("throughput.png", "latency.png"):
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)


def test_a_running_deployment_is_loaded_through_url(tmp_path: Path) -> None:
    # The ceiling app stands in for a deployment: the suite loads what --url names and starts no
    # engine of its own; the naive baseline needs a local engine, so it is skipped with a note.
    port = free_port()
    deployment = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ceiling", "--port", str(port), "--api-key", "deploy-key"],
        start_new_session=True,
    )
    try:
        suite._wait_up(f"http://127.0.0.1:{port}", deployment)
        url = f"http://127.0.0.1:{port}"
        argv = ["--profile", "tiny", "--generator", "python", "--scenarios", "append", "create",
                "--url", url, "--api-key", "deploy-key", "--out", str(tmp_path)]  # fmt: skip
        assert suite.main(argv) == 0
    finally:
        deployment.terminate()
        deployment.wait(20)
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["target"] == f"http://127.0.0.1:{port}"
    assert set(document["scenarios"]["append"]["servers"]) == {"engine", "ceiling"}
    assert document["scenarios"]["append"]["servers"]["engine"]["errors"] == 0
    assert any("naive" in note for note in document["notes"])


def test_the_misbehaving_fleet_gets_exactly_once_412s_and_429s(tmp_path: Path) -> None:
    """benchmarks/hardening.py at a tiny size on its own server: its correctness checks hold
    (benchmarks/README.md quotes numbers from a real run; none is asserted here)."""
    from benchmarks import hardening

    argv = [
        "--seconds",
        "2",
        "--calm-rate",
        "20",
        "--flood-rate",
        "5",
        "--clients",
        "3",
        "--out",
        str(tmp_path),
    ]
    assert hardening.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["calm_alone"]["statuses"]) == set(result["calm_beside_fleet"]["statuses"]) == {"201"}
    retry = result["retry"]
    assert retry["writes_acknowledged"] > 0 and retry["replayed"] > 0
    assert retry["messages_stored"] == retry["writes_acknowledged"] and retry["stored_twice"] == 0
    assert retry["answers_disagreed"] == 0 and retry["errors"] == 0
    race = result["race"]
    assert race["updated"] > 0 and race["lost_updates"] == 0
    assert race["final_version"] == race["final_counter"] + 1
    assert set(race) <= {"updated", "precondition_failed", "final_counter", "final_version", "lost_updates"}
    flood = result["flood"]
    assert set(flood["statuses"]) <= {"201", "429"} and flood["statuses"].get("429", 0) > 0
    assert (tmp_path / "results.md").read_text().startswith("# Misbehaving fleet")
