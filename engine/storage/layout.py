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


def memory_directory(data_dir: Path, index: int) -> Path:
    return data_dir / "memory" / f"memory-{index:04d}"


def claim_layout(data_dir: Path, shards: int, memory_shards: int | None = None) -> None:
    """Record the shard counts on first start; refuse different ones later, since sessions and
    organizations are placed by a hash over the shard count and would not be found on another."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / LAYOUT_FILE
    if path.exists():
        recorded = orjson.loads(path.read_bytes())
        if recorded.get("shards") != shards:
            raise ConfigError(
                f"shards is {shards} but {data_dir} holds data for shards={recorded.get('shards')}; "
                "start with that value (changing the shard count of existing data is not supported)"
            )
        if memory_shards is not None and recorded.get("memory_shards", memory_shards) != memory_shards:
            raise ConfigError(
                f"memory.shards is {memory_shards} but {data_dir} holds vector memory for "
                f"memory.shards={recorded['memory_shards']}; start with that value"
            )
        if memory_shards is not None and "memory_shards" not in recorded:
            write_atomically(path, orjson.dumps({**recorded, "memory_shards": memory_shards}))
        if recorded.get("format") != FORMAT_VERSION:
            raise ConfigError(
                f"{data_dir} holds data in format {recorded.get('format')}, not {FORMAT_VERSION}"
            )
        return
    layout: dict[str, int] = {"format": FORMAT_VERSION, "shards": shards}
    if memory_shards is not None:
        layout["memory_shards"] = memory_shards
    write_atomically(path, orjson.dumps(layout))
