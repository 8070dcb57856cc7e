"""What a shard actor reports to a gateway's /metrics scrape (api/metrics.py relays it, adding
the `shard` label): its own counters and histograms, kept in a registry of its own, and gauges read
off its state when asked. Plain prometheus-client families, so they pickle across Ray as they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.memory import vectors as memory_vectors
from engine.sessions.events import Event
from engine.sessions.session import SessionStatus

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside each counter: they only double the count

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LAG = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
SHARD_STATES = ("serving", "draining", "read-only", "fenced", "refused")


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


class ShardMetrics:
    """The series both kinds of shard keep: log writes and snapshots."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_seconds = Histogram(
            "session_engine_log_commit_seconds",
            "Time to write one log record (and to sync it, under fsync=always).",
            buckets=_FAST,
            registry=self.registry,
        )
        self.written = Counter(
            "session_engine_log_written_bytes", "Bytes written to the log.", registry=self.registry
        )
        self.snapshot_seconds = Histogram(
            "session_engine_snapshot_duration_seconds",
            "Time to write one snapshot.",
            buckets=_SLOW,
            registry=self.registry,
        )

    def observe_commit(self, seconds: float, size: int) -> None:
        self.commit_seconds.observe(seconds)
        self.written.inc(size)

    def families(self, disk: dict[str, Any] | None, recovery_s: float | None) -> list[Metric]:
        """Every series, with the gauges of `disk` (LoggedStore.disk_status; None: refused)."""
        state = "refused" if disk is None else disk["state"]
        out = list(self.registry.collect())
        out.append(_one_of("session_engine_shard_state", "The shard's state (1 for the current one).", state))
        if disk is not None:
            out += [
                gauge(
                    "session_engine_shard_log_bytes", "Bytes in the shard's log segments.", disk["log_bytes"]
                ),
                gauge("session_engine_shard_lsn", "The shard's last log record.", disk["lsn"]),
                gauge(
                    "session_engine_shard_epoch",
                    "The shard's incarnation; it goes up by one at each start (restarts).",
                    disk["epoch"] or 0,
                ),
            ]
            if disk.get("unarchived_segments") is not None:
                out.append(
                    gauge(
                        "session_engine_unarchived_segments",
                        "Sealed log segments not yet copied to durability.archive_dir (kept meanwhile).",
                        disk["unarchived_segments"],
                    )
                )
            if disk["snapshot_age_s"] is not None:
                out.append(
                    gauge(
                        "session_engine_snapshot_age_seconds",
                        "Seconds since the shard's newest snapshot was written.",
                        disk["snapshot_age_s"],
                    )
                )
        if recovery_s is not None:
            out.append(
                gauge(
                    "session_engine_recovery_seconds",
                    "Time the shard's last start took to recover.",
                    recovery_s,
                )
            )
        return out


def _one_of(name: str, documentation: str, current: str) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in SHARD_STATES:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


class SessionShardMetrics(ShardMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.events = Counter(
            "session_engine_events",
            "Change-feed events published, by type (message.appended counts messages).",
            ["type"],
            registry=self.registry,
        )
        self.summary_jobs = Counter(
            "session_engine_summary_attempts",
            "Summary attempts by how they ended (ready, retried, failed), failed attempts to index a "
            "ready summary's session (index_retried: always retried), and the model's upgrades of "
            "ready summaries (upgrade_kept, upgrade_rejected, upgrade_skipped, upgrade_failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.summary_lag = Histogram(
            "session_engine_summary_lag_seconds",
            "From a session's end to its (extractive) summary being ready.",
            buckets=_LAG,
            registry=self.registry,
        )

        self.live_lag = Histogram(
            "session_engine_live_index_lag_seconds",
            "From a message's append to its turn being in session memory (live memory's MarkLive).",
            buckets=_LAG,
            registry=self.registry,
        )

    def published(self, events: list[Event]) -> None:
        for event in events:
            self.events.labels(event.type).inc()

    def summary_outcome(self, outcome: str, lag_s: float | None) -> None:
        self.summary_jobs.labels(outcome).inc()
        if lag_s is not None:
            self.summary_lag.observe(lag_s)

    def session_families(
        self, by_status: dict[SessionStatus, int], summary_jobs: int, retained_events: int
    ) -> list[Metric]:
        sessions = GaugeMetricFamily("session_engine_sessions", "Sessions by status.", labels=["status"])
        for status in SessionStatus:
            sessions.add_metric([status.value], by_status.get(status, 0))
        return [
            sessions,
            gauge(
                "session_engine_summary_queue",
                "Closing jobs in flight on the shard: making a summary, or with a ready summary "
                "waiting for an indexing slot, being indexed or between index retries.",
                summary_jobs,
            ),
            gauge(
                "session_engine_feed_events_retained",
                "Change-feed events the shard keeps for consumers to resume from.",
                retained_events,
            ),
        ]


class MemoryShardMetrics(ShardMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.apply_seconds = Histogram(
            "session_engine_memory_batch_seconds",
            "Time a memory shard took to apply one batch, by whether it held a query.",
            ["query"],
            buckets=_FAST,
            registry=self.registry,
        )

    def timer(self, query: bool) -> Callable[[float], None]:
        return self.apply_seconds.labels("true" if query else "false").observe

    @staticmethod
    def memory_families(namespaces: list[tuple[str, str, int]]) -> list[Metric]:
        """(index kind, namespace kind, vectors) per namespace, summed: organizations are not labels."""
        vectors = GaugeMetricFamily(
            "session_engine_memory_vectors",
            "Vectors held, by index kind (flat, ivf; hnsw from older snapshots until rebuilt).",
            labels=["index"],
        )
        count = GaugeMetricFamily(
            "session_engine_memory_namespaces", "Namespaces held, by index kind.", labels=["index"]
        )
        for kind in ("flat", "ivf", "hnsw"):
            held = [n for k, _, n in namespaces if k == kind]
            vectors.add_metric([kind], sum(held))
            count.add_metric([kind], len(held))
        failures = CounterMetricFamily(
            "session_engine_memory_index_build_failures",
            "Background index builds that failed (the index before kept answering; retried later).",
            value=memory_vectors.build_failures,
        )
        return [vectors, count, failures]


class ModelPassMetrics:
    """The summarizer pool's series (engine.closing.model_pass): every verdict of the cluster is
    made there, so its count is the cluster's; relayed by a gateway as a shard's are."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.verdicts = Counter(
            "session_engine_summary_verdicts",
            "The model pass's verdicts on its summaries: kept (it replaced the extract), rejected.",
            ["outcome"],
            registry=self.registry,
        )

    def families(self, active: bool) -> list[Metric]:
        return [
            *self.registry.collect(),
            gauge(
                "session_engine_summary_model_pass_active",
                "1 while the model's pass over extractive summaries runs; 0 paused or off.",
                1.0 if active else 0.0,
            ),
        ]
