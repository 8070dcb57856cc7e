"""Prometheus metrics, served by every gateway worker at `metrics.path` (default /metrics, no auth).

Two sources, one scrape:
- this gateway's own series (HTTP, outboxes, rate limits and quotas, feeds), kept with
  prometheus-client. With several worker processes `serve` sets PROMETHEUS_MULTIPROC_DIR, and each
  scrape sums every worker's files, so any worker answers for the whole gateway;
- the shards' series (sessions, log, snapshots, summaries, vectors), asked of every shard actor at
  scrape time wherever it runs (engine.runtime.shard_metrics) and labelled `shard`. Every gateway of
  a cluster reports them, so scrape one gateway per cluster for them, or sum with `max by`.

Organization labels are bounded (`metrics.max_org_labels` per worker): the organizations named in
`limits.orgs`, then the first ones seen; the rest are counted as org="other".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.responses import Response

from engine.config import EngineConfig

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_TIMEOUT_S = 5.0
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "session_engine_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "session_engine_http_request_duration_seconds",
    "Time to answer an HTTP request (feeds: to open the stream).",
    ["method", "route"],
    buckets=_LATENCY,
)
OUTBOX_BATCH = Histogram(
    "session_engine_outbox_batch_ops",
    "Ops one call to a shard carried (the outbox coalesces what waits).",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
OUTBOX_QUEUED = Gauge(
    "session_engine_outbox_queued_ops",
    "Ops waiting in the outboxes for a call to their shard.",
    ["kind"],
    multiprocess_mode="livesum",
)
OUTBOX_CALL = Histogram(
    "session_engine_outbox_call_seconds", "Time one call to a shard took.", ["kind"], buckets=_LATENCY
)
RATE_LIMITED = Counter(
    "session_engine_rate_limited", "Requests refused with 429 (limits.requests_per_second).", ["org"]
)
QUOTA_REFUSED = Counter(
    "session_engine_quota_refusals", "Writes refused by an organization's quota.", ["org", "quota"]
)
FEEDS_OPEN = Gauge(
    "session_engine_feeds_open", "Change feeds (SSE streams) open.", multiprocess_mode="livesum"
)
WORKERS = Gauge(
    "session_engine_gateway_workers",
    "1 for each live gateway worker process (its pid is a label when there are several).",
    multiprocess_mode="liveall",
)
CONNECTIONS_REFUSED = Counter(
    "session_engine_http_connections_refused",
    "Connections the HTTP edge answered itself and closed, by why (api/edge.py).",
    ["reason"],
)
CONNECTIONS_EVICTED = Counter(
    "session_engine_http_connections_evicted",
    "Connections closed to make room for a new one at http.max_connections: idle ones first, then "
    "those whose request had not arrived whole.",
    ["state"],
)
FEED_DROPPED = Counter(
    "session_engine_feed_consumers_dropped", "Feed consumers dropped for falling too far behind."
)
FEEDS_REFUSED = Counter(
    "session_engine_feeds_refused",
    "Change feeds refused when opened (429), by why: max_feeds_per_org, an organization already "
    "holds events.max_feeds_per_org feeds open on this worker.",
    ["reason", "org"],
)


class OrgLabels:
    """The org label for an organization: its name for at most `limit` of them, else 'other'."""

    def __init__(self, limit: int, named: Iterable[str] = ()) -> None:
        self._limit = limit
        self._named = set(named)
        self._seen: set[str] = set()

    def __call__(self, org: str) -> str:
        if org in self._named or org in self._seen:
            return org
        if len(self._seen) < self._limit:
            self._seen.add(org)
            return org
        return "other"


class HttpMetrics:
    """Counts and times each request by its route template (never the raw path, whose ids would
    make a series per session); a feed counts once, when its stream opens."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, scope: MutableMapping[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        key = (scope["method"], template, status)
        children = self._children.get(key)
        if children is None:
            children = (
                HTTP_REQUESTS.labels(key[0], template, str(status)),
                HTTP_SECONDS.labels(key[0], template),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def worker_started() -> None:
    WORKERS.set(1)


def worker_stopped() -> None:
    """Its live series (open feeds, queued ops, itself) leave the sum."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def gateway_registry() -> CollectorRegistry:
    """This worker's own series, or every worker's when they share PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


class _Relayed(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def relay(shards: Sequence[tuple[str, Sequence[Metric] | BaseException]]) -> list[Metric]:
    """The shards' families as one family per name, each sample labelled with its shard; a shard
    that did not answer counts in session_engine_shard_scrape_errors."""
    merged: dict[str, Metric] = {}
    failed = Metric("session_engine_shard_scrape_errors", "Shards that did not answer this scrape.", "gauge")
    for shard, families in shards:
        if isinstance(families, BaseException):
            failed.add_sample("session_engine_shard_scrape_errors", {"shard": shard}, 1.0)
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                into.add_sample(sample.name, {"shard": shard, **sample.labels}, sample.value)
    return [*merged.values(), failed]


async def scrape(state: Any) -> Response:
    """The exposition: this gateway's series, then every shard's."""
    config: EngineConfig = state.config
    started = time.perf_counter()
    pool = getattr(state.memory.transport, "pool_metrics", None)  # the in-process doubles have none
    answers = await asyncio.gather(
        *(_shard_families(state.router.transport, i, "session") for i in range(config.shards)),
        *(_shard_families(state.memory.transport, i, "memory") for i in range(state.memory.shards)),
        *([_pool_families(pool)] if pool is not None else []),
        return_exceptions=True,
    )
    names = [f"session-{i}" for i in range(config.shards)] + [
        f"memory-{i}" for i in range(state.memory.shards)
    ]
    names += ["summarizer-pool"] if pool is not None else []
    shards = Metric(
        "session_engine_scrape_seconds", "Time this gateway took to gather the shards' series.", "gauge"
    )
    shards.add_sample("session_engine_scrape_seconds", {}, time.perf_counter() - started)
    relayed = CollectorRegistry(auto_describe=False)
    relayed.register(_Relayed([*relay(list(zip(names, answers, strict=True))), shards]))
    body = generate_latest(gateway_registry()) + generate_latest(relayed)
    return Response(body, media_type=CONTENT_TYPE)


async def _pool_families(pool_metrics: Any) -> list[Metric]:
    async with asyncio.timeout(SCRAPE_TIMEOUT_S):
        families: list[Metric] = await pool_metrics()
        return families


async def _shard_families(transport: Any, shard: int, kind: str) -> list[Metric]:
    async with asyncio.timeout(SCRAPE_TIMEOUT_S):
        families: list[Metric] = await transport.metrics(shard)
        return families
