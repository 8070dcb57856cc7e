"""API keys: each key belongs to one organization. Only SHA-256 hashes of keys are ever stored.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed), and a
lookup by hash leaks nothing useful about the key through timing.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

import orjson

from engine.config import EngineConfig
from engine.errors import ConfigError
from engine.storage.lock import write_atomically

KEY_PREFIX = "sek_"
DEFAULT_ORG = "default"
log = logging.getLogger(__name__)
_ORG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def validate_org(org: str) -> str:
    if not _ORG_PATTERN.match(org):
        raise ConfigError(f"organization {org!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return org


class KeyStore:
    """Organizations by key hash. One read from a keys file follows that file: it is read again
    when it changes (checked at most every `reload_s`), so keys created or revoked with
    `session-engine keys` take effect in a running server without a restart."""

    def __init__(self, orgs_by_hash: dict[str, str], path: Path | None = None, reload_s: float = 1.0) -> None:
        self._orgs_by_hash = dict(orgs_by_hash)
        self._path = path
        self._reload_s = reload_s
        self._checked = time.monotonic()
        self._version = _file_version(path) if path is not None else None

    def __len__(self) -> int:
        return len(self._orgs_by_hash)

    def organization_for(self, key: str) -> str | None:
        if self._path is not None and time.monotonic() - self._checked >= self._reload_s:
            self._follow_file(self._path)
        return self._orgs_by_hash.get(hash_key(key))

    def _follow_file(self, path: Path) -> None:
        self._checked = time.monotonic()
        version = _file_version(path)
        if version == self._version:
            return
        try:
            self._orgs_by_hash = _read_entries(path)
        except ConfigError as exc:
            # Written atomically by this package, so this is a hand edit gone wrong: keep serving.
            log.warning("keys file not reloaded, the keys read before stay in force: %s", exc)
        else:
            log.info("keys file reloaded", extra={"keys": len(self._orgs_by_hash)})
        self._version = version

    @classmethod
    def from_spec(cls, spec: str) -> KeyStore:
        """`"key1=org1,key2=org2"`, as in SESSION_ENGINE_API_KEYS."""
        orgs: dict[str, str] = {}
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            key, sep, org = entry.partition("=")
            if not sep or not key.strip() or not org.strip():
                raise ConfigError("api_keys entries must look like 'key=organization', separated by commas")
            orgs[hash_key(key.strip())] = validate_org(org.strip())
        if not orgs:
            raise ConfigError("api_keys is set but holds no 'key=organization' entry")
        return cls(orgs)

    @classmethod
    def from_file(cls, path: Path, reload_s: float = 1.0) -> KeyStore:
        return cls(_read_entries(path), path, reload_s)


def _file_version(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _entries(path: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The file's entries, each with a hash and a valid organization; ConfigError if it has not."""
    if missing_ok and not path.exists():
        return []
    try:
        entries = orjson.loads(path.read_bytes())["keys"]
        for entry in entries:
            if not isinstance(entry["hash"], str):
                raise TypeError(f"key hash {entry['hash']!r} is not a string")
            validate_org(entry["org"])
        return list(entries)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"keys file {path} is unreadable or malformed: {exc}") from None


def _read_entries(path: Path) -> dict[str, str]:
    return {e["hash"]: e["org"] for e in _entries(path)}


def key_id(key_hash: str) -> str:
    """How `keys list` and `keys revoke` name a key: the start of its hash (which reveals nothing
    of the key itself)."""
    return key_hash.removeprefix("sha256:")[:12]


def load_key_store(config: EngineConfig) -> KeyStore:
    if config.api_keys is not None:
        return KeyStore.from_spec(config.api_keys.get_secret_value())
    path = config.resolved_keys_file
    if not path.exists():
        raise ConfigError(
            f"no API keys: set SESSION_ENGINE_API_KEYS='key=org,...' or create keys with "
            f"'session-engine keys create --org NAME' (keys file {path})"
        )
    return KeyStore.from_file(path)


def add_key(path: Path, org: str) -> str:
    """Create a key for `org`, store its hash in the keys file, and return the key (shown once)."""
    validate_org(org)
    entries = _entries(path, missing_ok=True)
    key = generate_key()
    entries.append({"hash": hash_key(key), "org": org, "created_at": int(time.time() * 1000)})
    _write(path, entries)
    return key


def list_keys(path: Path) -> list[dict[str, Any]]:
    """Every key in the file: its id, organization and creation time, never its hash."""
    entries = _entries(path, missing_ok=True)
    return [{"id": key_id(e["hash"]), "org": e["org"], "created_at": e.get("created_at")} for e in entries]


def revoke_key(path: Path, id_prefix: str) -> dict[str, Any]:
    """Remove the one key whose id starts with `id_prefix` (at least 6 characters); returns it."""
    if len(id_prefix) < 6:
        raise ConfigError("give at least the first 6 characters of the key id ('keys list' shows them)")
    entries = _entries(path, missing_ok=True)
    matching = [e for e in entries if key_id(e["hash"]).startswith(id_prefix)]
    if len(matching) != 1:
        found = "no key" if not matching else f"{len(matching)} keys"
        raise ConfigError(f"{found} in {path} with an id starting {id_prefix!r}; 'keys list' shows the ids")
    _write(path, [e for e in entries if e is not matching[0]])
    return {"id": key_id(matching[0]["hash"]), "org": matching[0]["org"]}


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    write_atomically(path, orjson.dumps({"version": 1, "keys": entries}, option=orjson.OPT_INDENT_2))


def ensure_default_key(config: EngineConfig) -> str | None:
    """With no key configured anywhere, create one for organization 'default' and return it."""
    if config.api_keys is not None or config.resolved_keys_file.exists():
        return None
    return add_key(config.resolved_keys_file, DEFAULT_ORG)
