"""The fleet's summary report (benchmarks.scenarios.summary_lag) over a fake gateway: every ready
summary counts in a lag, those the model upgraded too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from benchmarks import scenarios

ENDED = 1_700_000_000_000


def session(lag_ms: int, method: str) -> dict[str, Any]:
    provenance = {"model": "m", "method": method, "created_at": ENDED + lag_ms}
    return {
        "summary_status": "ready",
        "summary_provenance": provenance,
        "ended_at": ENDED,
        "index_status": "ready",
        "indexed_at": ENDED + 10,
    }


def test_summaries_the_model_upgraded_count_in_a_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = [session(100, "extractive"), session(9_000, "model")]

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sessions":
            return httpx.Response(200, json={"sessions": closed, "next_cursor": None})
        return httpx.Response(200, json={"models": {}})

    real = httpx.Client
    monkeypatch.setattr(
        scenarios.httpx, "Client", lambda **kw: real(**kw, transport=httpx.MockTransport(gateway))
    )
    lag = scenarios.summary_lag("http://engine", "k", wait_s=0)
    assert lag["close_to_ready_ms"] == {"p50": 100.0, "p99": 100.0, "max": 100.0}
    assert lag["close_to_upgrade_ms"] == {"p50": 9000.0, "p99": 9000.0, "max": 9000.0}
    assert lag["upgraded"] == 1 and lag["summaries_ready"] == 2
    assert lag["close_to_searchable_ms"] == {"p50": 10.0, "p99": 10.0, "max": 10.0}
