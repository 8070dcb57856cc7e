"""API keys: each key belongs to one organization. Only SHA-256 hashes of keys are ever stored.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed), and a
lookup by hash leaks nothing useful about the key through timing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from pathlib import Path

import orjson

from engine.config import ConfigError, EngineConfig
from engine.storage.lock import write_atomically

KEY_PREFIX = "sek_"
DEFAULT_ORG = "default"
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
    def __init__(self, orgs_by_hash: dict[str, str]) -> None:
        self._orgs_by_hash = dict(orgs_by_hash)

    def __len__(self) -> int:
        return len(self._orgs_by_hash)

    def organization_for(self, key: str) -> str | None:
        return self._orgs_by_hash.get(hash_key(key))

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
    def from_file(cls, path: Path) -> KeyStore:
        try:
            data = orjson.loads(path.read_bytes())
            entries = data["keys"]
            return cls({e["hash"]: validate_org(e["org"]) for e in entries})
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"keys file {path} is unreadable or malformed: {exc}") from None


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
    entries = orjson.loads(path.read_bytes())["keys"] if path.exists() else []
    key = generate_key()
    entries.append({"hash": hash_key(key), "org": org, "created_at": int(time.time() * 1000)})
    write_atomically(path, orjson.dumps({"version": 1, "keys": entries}, option=orjson.OPT_INDENT_2))
    return key


def ensure_default_key(config: EngineConfig) -> str | None:
    """With no key configured anywhere, create one for organization 'default' and return it."""
    if config.api_keys is not None or config.resolved_keys_file.exists():
        return None
    return add_key(config.resolved_keys_file, DEFAULT_ORG)
