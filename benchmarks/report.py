"""The suite's outputs: results.json, a Markdown table (results.md), and PNG plots of throughput
and latency percentiles per scenario; plus the targets, each met or not with its measured value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import backup
from benchmarks.stamp import describe

SERVERS = ("engine", "ceiling", "naive", "redis")
COLORS = {"engine": "tab:blue", "ceiling": "tab:gray", "naive": "tab:orange", "redis": "tab:red"}
PERCENTILES = ("p50", "p90", "p99", "p999")
GIB = 2**30


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets (benchmarks/README.md#targets) against this run's numbers; a target not measured in
    it says so."""
    s = document["scenarios"]
    out: list[dict[str, Any]] = []

    def add(name: str, wanted: str, measured: float | None, met: bool | None, shown: str) -> None:
        out.append(
            {
                "target": name,
                "wanted": wanted,
                "measured": measured,
                "shown": shown if measured is not None else "not measured in this run",
                "met": met if measured is not None else None,
            }
        )

    def http(name: str, server: str = "engine") -> dict[str, Any] | None:
        found: dict[str, Any] | None = s.get(name, {}).get("servers", {}).get(server)
        return found

    def ratio(name: str, base: str) -> float | None:
        engine, other = http(name), http(name, base)
        return engine["items_per_s"] / other["items_per_s"] if engine and other else None

    # The throughput targets: each scenario's throughput as a share of the ceiling's in the same run.
    for name, label, wanted in (
        ("append", "append, 1 message a request, 64 connections", 0.9),
        ("create", "session creation", 0.9),
        ("list", "list by status, 50 a page", 0.7),
        ("append-batch", "append in batches of 50 (messages/s)", 0.7),
    ):
        share = ratio(name, "ceiling")
        add(label, f"≥ {wanted} x ceiling", share, share is not None and share >= wanted,
            f"{share:.2f} x ceiling" if share else "")  # fmt: skip
    engine = http("append")
    p99 = engine["p99_ms"] if engine else None
    add("append p99, same load", "≤ 50 ms", p99, p99 is not None and p99 <= 50, f"{p99} ms")
    for name, label in (("append", "append"), ("append-batch", "append in batches of 50")):
        share = ratio(name, "redis")
        # Reported, with no target: how far a session store is from Redis on the same disk.
        add(f"{label}: engine ÷ redis-server (messages/s)", "reported", share, None,
            f"{share:.3f} x redis" if share else "")  # fmt: skip

    resident = {r["sessions"]: r for r in s.get("resident", {}).get("rows", [])}
    million = resident.get(1_000_000)
    held = million["engine_bytes_per_session"] * 1_000_000 / GIB if million else None
    add(
        "1M sessions of 10 messages resident",
        "≤ 4 GiB more engine memory than empty",
        held,
        held is not None and held <= 4,
        f"{held:.2f} GiB" if held else "",
    )
    recovery = million["ready_s"] - million["empty_ready_s"] if million else None
    add("restart with 1M sessions (ready minus empty ready)", "≤ 30 s", recovery,
        recovery is not None and recovery <= 30, f"{recovery:.1f} s" if recovery else "")  # fmt: skip
    snaps = {r["sessions"]: r for r in s.get("snapshot", {}).get("rows", [])}
    pause = snaps[100_000]["snapshot_longest_pause_ms"] if 100_000 in snaps else None
    add(
        "snapshot pause at 100k sessions",
        "≤ 100 ms",
        pause,
        pause is not None and pause <= 100,
        f"{pause} ms",
    )
    query = http("query@100000")
    p99 = query["p99_ms"] if query else None
    add("memory query p99 at 100k vectors, HTTP", "≤ 10 ms", p99, p99 is not None and p99 <= 10, f"{p99} ms")
    rows = s.get("summarize", {}).get("rows", [])
    best = max(rows, key=lambda r: r["vs_batch_1"]) if rows else None
    gain = best["vs_batch_1"] if best else None
    add("summaries/s with batching vs without", "≥ 3 x", gain, gain is not None and gain >= 3,
        f"{gain:.2f} x (batch {best['batch_size']})" if best else "")  # fmt: skip
    recall = s.get("recall")
    engine_recall = recall["methods"]["engine (hybrid)"]["recall@5"] if recall else None
    add("session memory recall@5 (benchmarks/recall.py)", "≥ 0.9", engine_recall,
        engine_recall is not None and engine_recall >= 0.9, f"{engine_recall}")  # fmt: skip
    margin = recall["engine_minus_best_baseline_recall@5"] if recall else None
    add("session memory recall@5 over the best baseline", "≥ +0.05", margin,
        margin is not None and margin >= 0.05,
        f"{margin:+.3f} over {recall['best_baseline']}" if recall else "")  # fmt: skip
    # Backup, restore and export are held to their targets at 1M messages only (benchmarks/backup.py).
    backed = s.get("backup")
    held = backed["summary"] if backed and backed["data"]["messages"] >= 1_000_000 else None
    for key, label, wanted, shown in (
        ("p99_ratio", "appends' p99 during a backup of 1M messages ÷ without", "≤ 1.5 x", "{} x"),
        ("restore_ratio", "restore of 1M messages ÷ a recovery of them", "≤ 2 x", "{} x"),
        ("export_messages_per_s", "export of 1M messages (messages/s)", "≥ 50,000", "{:,}"),
    ):
        value = held[key] if held else None
        limit = backup.TARGETS[key]
        met = value is not None and (value >= limit if key == "export_messages_per_s" else value <= limit)
        add(label, wanted, value, met, shown.format(value) if value is not None else "")
    return out


def markdown(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"# Benchmark results ({document['profile']})",
        "",
        f"- when: {document['when']}; command: `{document['command']}`; took {document['elapsed_s']} s",
        f"- machine: {describe(m)}; Python {m['python']}",
        f"- target: {document['target']}; load generator: {document['load_generator']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in document["versions"].items()),
        f"- engine config: {_config_line(document['config'])}",
    ]
    lines += [f"- note: {note}" for note in document["notes"]]
    http = {k: v for k, v in document["scenarios"].items() if v["kind"] == "http"}
    if http:
        lines += [
            "",
            "## Throughput and latency (HTTP)",
            "",
            "Engine ÷ ceiling is the share of what a plain FastAPI app gets on this machine; engine ÷ "
            "naive is what coalescing and the rest of the design buy over one Ray call a request; "
            "engine ÷ redis compares messages/s with redis-server doing RPUSH of the same messages, "
            "its log fsynced on every write (benchmarks/redis_anchor.py).",
            "",
            "| scenario | server | rate | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors "
            "| ÷ ceiling | ÷ naive | ÷ redis | generator |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entry in http.items():
            servers = entry["servers"]
            for server in SERVERS:
                r = servers.get(server)
                if r is None:
                    continue
                ratios = [
                    f"{r['items_per_s'] / servers[base]['items_per_s']:.2f}"
                    if server == "engine" and base in servers
                    else ""
                    for base in ("ceiling", "naive", "redis")
                ]
                ms = [r[f"{p}_ms"] if r.get(f"{p}_ms") is not None else "-" for p in PERCENTILES]
                lines.append(
                    f"| {name} | {server} | {r['items_per_s']:,.0f} {entry['unit']} "
                    f"| {r['requests_per_s']:,.0f} | {' | '.join(map(str, ms))} | {r['errors']} "
                    f"| {' | '.join(ratios)} | {r['generator']} |"
                )
        lines += ["", *(f"- {name}: {entry['does']}, {entry['connections']} connections"
                        for name, entry in http.items())]  # fmt: skip
    scenarios = document["scenarios"]
    fleet = scenarios.get("fleet", {}).get("servers", {}).get("engine", {})
    if fleet.get("summary_lag") or fleet.get("live_lag"):
        lines += ["", "## Summaries and live memory under the fleet (engine)", ""]
        if fleet.get("summary_lag"):
            lines += _lag_lines(fleet["summary_lag"], document["config"])
        if fleet.get("live_lag"):
            lines.append(_live_line(fleet["live_lag"]))
    if "append-live" in scenarios:
        lines += [
            "",
            "## Appends with live memory on and off (engine)",
            "",
            *_live_on_off(scenarios["append-live"]),
        ]
    if "feeds" in scenarios:
        lines += [
            "",
            "## Change feeds and metrics scrapes (engine, single-message appends)",
            "",
            f"{scenarios['feeds']['does']}.",
            "",
            "| run | appends/s | vs plain | p50 ms | p99 ms | max ms | errors | scrape ms (median, max) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in scenarios["feeds"]["rows"]:
            scrape = f"{r['scrape_ms_median']}, {r['scrape_ms_max']}" if "scrape_ms_median" in r else ""
            lines.append(
                f"| {r['run']} | {r['requests_per_s']:,.0f} | {r['vs_plain']:.2f} | {r['p50_ms']} "
                f"| {r['p99_ms']} | {r['max_ms']} | {r['errors']} | {scrape} |"
            )
    if "scaling" in scenarios:
        lines += [
            "",
            f"## Scaling with gateway workers and shards ({scenarios['scaling']['does']})",
            "",
            "Each setting is a fresh engine (`SESSION_ENGINE_WORKERS`, `SESSION_ENGINE_SHARDS`) on this "
            "machine; what more cores give shows only on a machine that has them.",
            "",
            "| gateway workers | shards | appends/s | vs the first | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in scenarios["scaling"]["rows"]:
            lines.append(
                f"| {r['workers']} | {r['shards']} | {r['requests_per_s']:,.0f} | {r['vs_first']:.2f} "
                f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
            )
    if "summarize" in scenarios:
        lines += [
            "",
            "## Summarization (default model unless --summarizer; engine classes, no HTTP)",
            "",
            "| model | device | conversations per generate call | summaries/s | output tokens/s | vs 1 |",
            "|---|---|---|---|---|---|",
        ]
        for r in scenarios["summarize"]["rows"]:
            lines.append(
                f"| {r['model']} | {r['device']} | {r['batch_size']} | {r['summaries_per_s']} "
                f"| {r['output_tokens_per_s']} | {r['vs_batch_1']}x |"
            )
    if "recall" in scenarios:
        r = scenarios["recall"]
        lines += [
            "",
            f"## Session memory recall ({r['sessions']} sessions, {r['questions']} questions, HTTP)",
            "",
            "| method | recall@1 | recall@5 | recall@10 | MRR |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {m['recall@1']} | {m['recall@5']} | {m['recall@10']} | {m['mrr']} |"
                for name, m in r["methods"].items()
            ),
            "",
            f"Searchable after close: p50 {r['searchable_lag_ms']['p50']} ms, p99 "
            f"{r['searchable_lag_ms']['p99']} ms with every session closed at once, "
            f"{r['searchable_lag_idle_ms']} ms for one closed alone; "
            f"{r['indexing_turns_per_s']} turns indexed a second; "
            f"hybrid query p50 {r['query_ms']['p50']} ms, p99 {r['query_ms']['p99']} ms (one connection). "
            f"Summaries: {r['summaries']['model']} by the model, {r['summaries']['extractive']} extractive "
            f"({r['summaries']['fallback_reasons']}).",
        ]
    if "snapshot" in scenarios:
        lines += ["", "## Snapshots and recovery (one shard, sessions of 10 ~100-character messages)", "",
                  "| sessions | log | recovery from log | snapshot | snapshot took | longest pause | "
                  "recovery from snapshot |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in scenarios["snapshot"]["rows"]:
            lines.append(
                f"| {r['sessions']:,} | {r['log_only_bytes'] / 2**20:.0f} MiB | {r['recover_from_log_s']} s "
                f"| {r['snapshot_bytes'] / 2**20:.0f} MiB | {r['snapshot_s']} s "
                f"| {r['snapshot_longest_pause_ms']} ms | {r['recover_from_snapshot_s']} s |"
            )
    if "resident" in scenarios:
        res = scenarios["resident"]
        empty = res["empty"]
        lines += [
            "",
            "## Memory per session and restart time (whole engine, 2 shards)",
            "",
            f"Empty engine: {empty['engine_mib']} MiB in all (USS, models included), shard actors "
            f"{empty['shards_mib']} MiB, ready in {empty['ready_s']} s.",
            "",
            "| sessions | engine MiB | shard actors MiB | bytes a session (engine) | "
            "bytes a session (shards) | ready s | ready s, empty |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['sessions']:,} | {r['engine_mib']} | {r['shards_mib']} "
                f"| {r['engine_bytes_per_session']:,} | {r['shard_bytes_per_session']:,} "
                f"| {r['ready_s']} | {r['empty_ready_s']} |"
            )
    if "restart" in scenarios:
        lines += ["", "## Restart after kill -9 (whole engine, 2 shards)", "",
                  "| sessions | first append | ready | first memory query |",
                  "|---|---|---|---|"]  # fmt: skip
        for r in scenarios["restart"]["rows"]:
            lines.append(
                f"| {r['sessions']:,} | {r['to_first_append_s']} s | {r['to_ready_s']} s "
                f"| {r['to_first_memory_query_s']} s |"
            )
    if "backup" in scenarios:
        lines += [
            "",
            "## Backup, restore and export (whole engine, 2 shards)",
            "",
            *backup.tables(scenarios["backup"]),
        ]
    lines += ["", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in document["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['wanted']} | {t['shown']} | {met} |")
    return "\n".join(lines) + "\n"


def _seconds(got: dict[str, float] | None) -> str:
    """A lag's spread (benchmarks.scenarios._spread, in ms) in seconds; "none" when nothing was timed."""
    if not got:
        return "none"
    return f"p50 {got['p50'] / 1000:.1f} s, p99 {got['p99'] / 1000:.1f} s, max {got['max'] / 1000:.1f} s"


def _lag_lines(lag: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Every field of benchmarks.scenarios.summary_lag; those an older results.json lacks are left out."""
    batch = config.get("models", {}).get("summarizer", {}).get("batch_size")
    lines = [
        f"- The fleet closed {lag['closed']:,} sessions; {lag['summaries_ready']:,} summaries were ready "
        f"{lag['waited_after_fleet_s']} s after it stopped, {lag['summaries_waiting']:,} still waiting "
        f"(the oldest for {lag['oldest_waiting_ms'] / 1000:.0f} s), {lag['summaries_failed']} failed. "
        f"Summarizer batch_size {batch}.",
    ]
    if "close_to_ready_ms" in lag:
        lines.append(f"- Close to summary ready (its extract): {_seconds(lag['close_to_ready_ms'])}.")
    lines.append(f"- Close to the summary it has now: {_seconds(lag['close_to_summary_ms'])}.")
    if "close_to_upgrade_ms" in lag:
        lines.append(
            f"- Close to the model's text, for the {lag['upgraded']:,} upgraded: "
            f"{_seconds(lag['close_to_upgrade_ms'])}; {lag['model_rejected']:,} extracts kept over the "
            f"model's text, {lag['upgrades_pending']:,} upgrades still queued."
        )
    searchable = (
        f"- Close to searchable (turns and summary indexed): {_seconds(lag['close_to_searchable_ms'])}"
    )
    if "indexes_waiting" in lag:
        searchable += (
            f"; {lag['indexes_waiting']:,} not yet indexed (the oldest closed "
            f"{lag['oldest_unindexed_ms'] / 1000:.0f} s before)"
        )
    lines.append(searchable + ".")
    if "model_pass" in lag:
        lines.append(f"- {_model_pass(lag['model_pass'])}")
    return lines


def _model_pass(found: dict[str, Any] | None) -> str:
    """The summarizer pool's model pass as /readyz described it (engine.closing.model_pass)."""
    if not found:
        return "Model pass: not reported by /readyz."
    judged, kept, acceptance = found.get("judged"), found.get("kept"), found.get("acceptance")
    rate = "none judged" if acceptance is None else f"{acceptance:.0%} accepted ({kept} of {judged} judged)"
    return f"Model pass: {found.get('state')} (mode {found.get('mode')}), {rate}."


def _live_line(live: dict[str, Any]) -> str:
    """benchmarks.scenarios.LiveProbe's result: an appended word until memory finds it."""
    return (
        f"- Live memory, append to found in session memory: {_seconds(live['lag_ms'])} over "
        f"{live['probes']} probes, {live['missed']} missed."
    )


def _live_on_off(result: dict[str, Any]) -> list[str]:
    """benchmarks.scenarios.append_live_on_off's runs, and on ÷ off."""
    runs = result["requests_per_s"]

    def row(live: str) -> str:
        rounds = ", ".join(f"{r:,.0f}" for r in runs[live])
        return f"| {live} | {rounds} | {sum(runs[live]) / len(runs[live]):,.0f} |"

    return [
        f"{result['does']}.",
        "",
        "| live memory | requests/s, each round | mean |",
        "|---|---|---|",
        row("on"),
        row("off"),
        "",
        f"On ÷ off: {result['on_vs_off']:.3f}.",
    ]


def _config_line(config: dict[str, Any]) -> str:
    return (
        f"workers {config.get('workers')}, shards {config.get('shards')}, "
        f"fsync {config.get('durability', {}).get('fsync')}, "
        f"outbox.coalesce {config.get('outbox', {}).get('coalesce')}, "
        f"summarizer batch_size {config.get('models', {}).get('summarizer', {}).get('batch_size')}"
    )


def plots(document: dict[str, Any], out: Path) -> list[Path]:
    # matplotlib is slow to import and only the plots need it, not the suite's start or --help
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use(): pyplot settles on a backend when it loads

    http = {k: v for k, v in document["scenarios"].items() if v["kind"] == "http"}
    if not http:
        return []
    names = list(http)
    title = f"{document['profile']} run, {describe(document['machine'])}"
    written = []

    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(names)), 4.5))
    width = 0.8 / len(SERVERS)
    for i, server in enumerate(SERVERS):
        # Only the scenarios this server ran: a missing bar is "not measured", never a zero.
        ran = [(x, http[n]["servers"][server]["requests_per_s"]) for x, n in enumerate(names)
               if server in http[n]["servers"]]  # fmt: skip
        if not ran:
            continue
        bars = ax.bar(
            [x + (i - (len(SERVERS) - 1) / 2) * width for x, _ in ran],
            [value for _, value in ran],
            width,
            label=server,
            color=COLORS[server],
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("requests/s")
    ax.set_title(f"Throughput by scenario\n{title}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    written.append(out / "throughput.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(max(7, 2.4 * len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for server in SERVERS:
            r = http[name]["servers"].get(server)
            if r:
                shown = [p for p in PERCENTILES if r.get(f"{p}_ms") is not None]  # redis: p50, p99
                ax.plot(
                    shown,
                    [max(r[f"{p}_ms"], 0.01) for p in shown],
                    marker="o",
                    label=server,
                    color=COLORS[server],
                )
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("percentile")
    axes[0][0].set_ylabel("latency, ms (log)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Latency percentiles\n{title}", fontsize=9)
    fig.tight_layout()
    written.append(out / "latency.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write(document: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["markdown"].write_text(markdown(document))
    for path in plots(document, out):
        paths[path.stem] = path
    return paths
