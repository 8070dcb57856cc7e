from __future__ import annotations

import stat
from pathlib import Path

import pytest

from engine.config import ConfigError, load_config
from engine.keys import KeyStore, add_key, ensure_default_key, hash_key, load_key_store


def test_keys_from_the_environment_map_to_their_organizations() -> None:
    keys = KeyStore.from_spec("alpha-key=acme, beta-key=globex")
    assert keys.organization_for("alpha-key") == "acme"
    assert keys.organization_for("beta-key") == "globex"
    assert keys.organization_for("gamma-key") is None


@pytest.mark.parametrize("spec", ["", "just-a-key", "=acme", "key=", "key=bad org!"])
def test_a_malformed_key_spec_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        KeyStore.from_spec(spec)


def test_a_default_key_is_made_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "data")
    key = ensure_default_key(config)
    assert key is not None and key.startswith("sek_")
    stored = config.resolved_keys_file.read_text()
    assert key not in stored and hash_key(key) in stored
    assert stat.S_IMODE(config.resolved_keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
    assert ensure_default_key(config) is None
    assert load_key_store(config).organization_for(key) == "default"


def test_added_keys_join_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first, second = add_key(path, "acme"), add_key(path, "globex")
    keys = KeyStore.from_file(path)
    assert (keys.organization_for(first), keys.organization_for(second), len(keys)) == ("acme", "globex", 2)


def test_no_keys_anywhere_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SESSION_ENGINE_API_KEYS"):
        load_key_store(load_config(data_dir=tmp_path))


def test_a_corrupt_keys_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(ConfigError, match="keys file"):
        load_key_store(load_config(data_dir=tmp_path))
