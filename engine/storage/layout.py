"""Where things live under the data directory, and the facts every start must agree with."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.config import ConfigError

from .codec import FORMAT_VERSION
from .lock import write_atomically

LAYOUT_FILE = "engine.json"


def shard_directory(data_dir: Path, index: int) -> Path:
    return data_dir / "shards" / f"shard-{index:04d}"


def claim_layout(data_dir: Path, shards: int) -> None:
    """Record the shard count on first start; refuse a different one later, since sessions are
    placed by a hash over the shard count and would not be found on another."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / LAYOUT_FILE
    if path.exists():
        recorded = orjson.loads(path.read_bytes())
        if recorded.get("shards") != shards:
            raise ConfigError(
                f"shards is {shards} but {data_dir} holds data for shards={recorded.get('shards')}; "
                "start with that value (changing the shard count of existing data is not supported)"
            )
        if recorded.get("format") != FORMAT_VERSION:
            raise ConfigError(
                f"{data_dir} holds data in format {recorded.get('format')}, not {FORMAT_VERSION}"
            )
        return
    write_atomically(path, orjson.dumps({"format": FORMAT_VERSION, "shards": shards}))
