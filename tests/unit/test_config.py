from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import DEFAULT_CONFIG_PATH, EngineConfig, load_config, settings_diff
from engine.errors import ConfigError


def test_default_yaml_states_every_built_in_default() -> None:
    stated = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert stated == EngineConfig().model_dump(mode="json", exclude={"api_keys", "keys_file"})
    assert load_config() == EngineConfig()


def test_file_then_env_then_flags_override_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "c.yaml"
    chosen.write_text("shards: 4\nport: 9000\nlimits:\n  max_batch_messages: 10\n")
    monkeypatch.setenv("SESSION_ENGINE_PORT", "9001")
    monkeypatch.setenv("SESSION_ENGINE_LIMITS__MAX_CONTEXT_BYTES", "1024")
    config = load_config(chosen, workers=3, port=None)
    assert (config.shards, config.port, config.workers) == (4, 9001, 3)
    assert (config.limits.max_batch_messages, config.limits.max_context_bytes) == (10, 1024)
    assert config.limits.max_body_bytes == EngineConfig().limits.max_body_bytes
    assert load_config(chosen, port=9002).port == 9002


def test_nested_flags_reach_nested_settings() -> None:
    assert load_config(ray__address="auto").ray.address == "auto"


def test_a_bad_value_is_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_ENGINE_SHARDS", "0")
    with pytest.raises(ConfigError, match="shards"):
        load_config()


def test_an_unknown_key_in_a_file_is_refused(tmp_path: Path) -> None:
    chosen = tmp_path / "c.yaml"
    chosen.write_text("shard: 4\n")
    with pytest.raises(ConfigError, match="shard"):
        load_config(chosen)


def test_an_older_engines_index_keys_still_start_and_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = tmp_path / "c.yaml"
    chosen.write_text("memory:\n  hnsw_above: 1234\n  hnsw_m: 16\n  hnsw_ef_construction: 100\n")
    with caplog.at_level("WARNING", logger="engine.config"):
        config = load_config(chosen)
    assert config.memory.index.approximate_above == 1234
    said = caplog.text
    assert "memory.hnsw_above is now memory.index.approximate_above" in said
    assert "memory.hnsw_m is no longer used" in said and "memory.hnsw_ef_construction" in said
    # The new key wins over the old one, from any source.
    monkeypatch.setenv("SESSION_ENGINE_MEMORY__INDEX__APPROXIMATE_ABOVE", "99")
    assert load_config(chosen).memory.index.approximate_above == 99
    # Unknown keys are still refused.
    chosen.write_text("memory:\n  hnsw_below: 1\n")
    with pytest.raises(ConfigError, match="hnsw_below"):
        load_config(chosen)


def test_a_missing_or_malformed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ConfigError, match="default_ttl_s"):
        load_config(limits={"default_ttl_s": 100, "max_ttl_s": 10})


def test_the_config_handed_to_workers_keeps_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_ENGINE_API_KEYS", "k=acme")
    config = load_config()
    again = EngineConfig.model_validate_json(config.to_env_json())
    assert again.api_keys is not None and again.api_keys.get_secret_value() == "k=acme"
    assert again == config


def test_gateways_may_differ_only_in_their_own_settings() -> None:
    first = load_config(data_dir="/srv/data", shards=4)
    own = load_config(data_dir="/srv/data", shards=4, port=9000, workers=3, http={"keep_alive_s": 2})
    assert settings_diff(own.cluster_settings(), first.cluster_settings()) == []
    other = load_config(data_dir="/srv/other", shards=6, durability={"fsync": "everysec"})
    assert settings_diff(other.cluster_settings(), first.cluster_settings()) == [
        "data_dir: '/srv/other' here vs '/srv/data' in the running cluster",
        "durability.fsync: 'everysec' here vs 'always' in the running cluster",
        "shards: 6 here vs 4 in the running cluster",
    ]
    assert "api_keys" not in first.cluster_settings()  # never compared, never stored with the cluster


def test_a_gateway_bounds_its_own_feeds_but_shares_what_the_shards_keep() -> None:
    first = load_config()
    own = load_config(events={"max_feeds_per_org": 5, "max_queued": 10, "heartbeat_s": 1})
    assert settings_diff(own.cluster_settings(), first.cluster_settings()) == []
    other = load_config(events={"retention_s": 60})
    assert settings_diff(other.cluster_settings(), first.cluster_settings()) == [
        "events.retention_s: 60.0 here vs 600.0 in the running cluster"
    ]


def test_placement_asks_ray_for_what_the_settings_say() -> None:
    from engine.runtime.ray_actors import MARKER_AMOUNT, placement_options

    config = load_config(
        placement={"shard_cpus": 1, "model_cpus": 2, "data_resource": "data", "model_resource": "gpu_node"},
        models={"num_gpus": 0.5},
    )
    assert placement_options(config, "shard") == {
        "num_cpus": 1,
        "resources": {"data": MARKER_AMOUNT},
        "scheduling_strategy": "SPREAD",
    }
    assert placement_options(config, "model") == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "resources": {"gpu_node": MARKER_AMOUNT},
        "scheduling_strategy": "SPREAD",
    }
    assert placement_options(config, "control") == {"num_cpus": 0}
    pinned = placement_options(config, "shard", node_id="ab" * 28)["scheduling_strategy"]
    assert pinned.node_id == "ab" * 28 and pinned.soft  # a moved shard may still restart elsewhere
