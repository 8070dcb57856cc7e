from __future__ import annotations

import stat
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.keys import (
    KeyStore,
    add_key,
    ensure_default_key,
    hash_key,
    key_id,
    list_keys,
    load_key_store,
    revoke_key,
)


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


def test_keys_are_listed_by_id_and_organization_never_by_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "acme")
    add_key(path, "globex")
    listed = list_keys(path)
    assert [entry["org"] for entry in listed] == ["acme", "globex"]
    assert listed[0]["id"] == key_id(hash_key(key)) and len(listed[0]["id"]) == 12
    assert all(hash_key(key) not in str(entry) and key not in str(entry) for entry in listed)


def test_a_revoked_key_leaves_the_file_and_a_short_or_unknown_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    kept, gone = add_key(path, "acme"), add_key(path, "acme")
    with pytest.raises(ConfigError, match="at least the first 6"):
        revoke_key(path, key_id(hash_key(gone))[:5])
    with pytest.raises(ConfigError, match="no key"):
        revoke_key(path, "zzzzzzzz")
    assert revoke_key(path, key_id(hash_key(gone))[:8]) == {"id": key_id(hash_key(gone)), "org": "acme"}
    keys = KeyStore.from_file(path)
    assert (keys.organization_for(kept), keys.organization_for(gone)) == ("acme", None)


def test_a_store_read_from_a_file_follows_keys_created_and_revoked_after_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = add_key(path, "acme")
    keys = KeyStore.from_file(path, reload_s=0)  # checks the file on every lookup
    later = add_key(path, "globex")
    assert keys.organization_for(later) == "globex"
    revoke_key(path, key_id(hash_key(first)))
    assert keys.organization_for(first) is None
    path.write_text("{broken")  # a bad hand edit: the keys read before stay in force
    assert keys.organization_for(later) == "globex"


def test_a_store_checks_its_file_at_most_once_a_reload_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "acme")
    keys = KeyStore.from_file(path, reload_s=3600)
    later = add_key(path, "globex")
    assert keys.organization_for(later) is None, "not read again before the interval has passed"
