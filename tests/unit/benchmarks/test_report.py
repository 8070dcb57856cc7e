"""The suite's Markdown report (benchmarks.report) over a recorded results document: every field the
fleet's summary and live-memory lags report, and the append-live step's runs and ratio, are shown."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from benchmarks import report

RECORDED = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "full" / "results.json"

# A fleet's summary_lag and live_lag (benchmarks.scenarios.summary_lag, LiveProbe.result) as a quick
# run on the 2-core machine wrote them, and an append-live step's result.
SUMMARY_LAG: dict[str, Any] = {
    "close_to_ready_ms": {"p50": 41.0, "p99": 388.0, "max": 412.0},
    "close_to_upgrade_ms": {"p50": 9_300.0, "p99": 17_700.0, "max": 18_100.0},
    "upgraded": 7,
    "model_rejected": 23,
    "upgrades_pending": 11,
    "model_pass": {
        "mode": "auto",
        "state": "active",
        "model": "t5-small",
        "window": 32,
        "judged": 30,
        "kept": 7,
        "acceptance": 0.233,
    },
    "closed": 41,
    "summaries_ready": 41,
    "summaries_failed": 0,
    "summaries_waiting": 0,
    "indexes_waiting": 3,
    "waited_after_fleet_s": 20.4,
    "oldest_waiting_ms": 0,
    "oldest_unindexed_ms": 26_000,
    "close_to_summary_ms": {"p50": 2_100.0, "p99": 17_700.0, "max": 18_100.0},
    "close_to_searchable_ms": {"p50": 14_300.0, "p99": 22_600.0, "max": 23_000.0},
}
LIVE_LAG = {"probes": 12, "missed": 1, "lag_ms": {"p50": 700.0, "p99": 2_900.0, "max": 3_100.0}}
APPEND_LIVE = {
    "kind": "engine",
    "does": "single-message appends with live memory on, then off, on fresh engines, 1 round(s) of 2 s, "
    "64 connections",
    "requests_per_s": {"on": [2387.4], "off": [2772.0]},
    "on_vs_off": 0.861,
}


def document() -> dict[str, Any]:
    recorded = json.loads(RECORDED.read_text())
    doc = copy.deepcopy(recorded)
    engine = doc["scenarios"]["fleet"]["servers"]["engine"]
    engine["summary_lag"], engine["live_lag"] = SUMMARY_LAG, LIVE_LAG
    doc["scenarios"]["append-live"] = APPEND_LIVE
    return dict(doc)


def test_every_summary_and_live_lag_field_is_in_the_report() -> None:
    text = report.markdown(document())
    for shown in (
        "Close to summary ready (its extract): p50 0.0 s, p99 0.4 s, max 0.4 s",
        "Close to the model's text, for the 7 upgraded: p50 9.3 s, p99 17.7 s, max 18.1 s",
        "23 extracts kept over the model's text, 11 upgrades still queued",
        "Close to the summary it has now: p50 2.1 s, p99 17.7 s",
        "Close to searchable (turns and summary indexed): p50 14.3 s, p99 22.6 s, max 23.0 s",
        "3 not yet indexed (the oldest closed 26 s before)",
        "The fleet closed 41 sessions; 41 summaries were ready 20.4 s after it stopped, 0 still waiting",
        "0 failed",
        "Model pass: active (mode auto), 23% accepted (7 of 30 judged)",
        "Live memory, append to found in session memory: p50 0.7 s, p99 2.9 s, max 3.1 s over 12 probes, "
        "1 missed",
    ):
        assert shown in text, shown


def test_the_append_live_step_shows_its_rounds_and_its_ratio() -> None:
    text = report.markdown(document())
    assert "## Appends with live memory on and off (engine)" in text
    assert "| on | 2,387 | 2,387 |" in text and "| off | 2,772 | 2,772 |" in text
    assert "On ÷ off: 0.861." in text


def test_an_older_document_without_the_new_fields_still_reports() -> None:
    text = report.markdown(json.loads(RECORDED.read_text()))  # summary_lag before the extracts' lag
    assert "Close to searchable (turns and summary indexed): p50 32.8 s" in text
    assert "Close to summary ready (its extract)" not in text and "Live memory" not in text


def test_a_model_pass_with_nothing_judged_says_so() -> None:
    doc = document()
    lag = doc["scenarios"]["fleet"]["servers"]["engine"]["summary_lag"]
    lag["model_pass"] = {"mode": "off", "state": "off", "judged": 0, "kept": 0, "acceptance": None}
    assert "Model pass: off (mode off), none judged." in report.markdown(doc)
    lag["model_pass"] = None
    assert "Model pass: not reported by /readyz." in report.markdown(doc)
