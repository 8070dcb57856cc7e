"""The shards of a running cluster as an online backup reaches them (engine.backup.take's
ShardSource): by name, through Ray, from the process running `session-engine backup`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backup.take import ShardSource
from engine.config import EngineConfig
from engine.errors import StartupError
from engine.storage.layout import memory_directory, shard_directory

from .names import memory_names, shard_names
from .ray_actors import lookup


@dataclass(slots=True)
class RayShard:
    kind: str
    index: int
    directory: str
    handle: Any

    async def begin(self, backup_id: str, since_lsn: int | None, since_crc: int | None) -> dict[str, Any]:
        answer: dict[str, Any] = await self.handle.backup_begin.remote(backup_id, since_lsn, since_crc)
        return answer

    async def read(self, backup_id: str, piece: int, offset: int, size: int) -> bytes:
        data: bytes = await self.handle.backup_read.remote(backup_id, piece, offset, size)
        return data

    async def end(self, backup_id: str) -> None:
        await self.handle.backup_end.remote(backup_id)


def shard_sources(config: EngineConfig) -> list[ShardSource]:
    """Every session shard, then every memory shard; StartupError if one is missing from Ray."""
    found: list[ShardSource] = []
    for kind, names, place in (
        ("session", shard_names(config), shard_directory),
        ("memory", memory_names(config), memory_directory),
    ):
        for index, name in enumerate(names):
            handle = lookup(name, config)
            if handle is None:
                raise StartupError(f"{name} is not running: a backup needs every shard")
            found.append(RayShard(kind, index, str(place(Path(), index)), handle))
    return found


def layout(config: EngineConfig) -> dict[str, int]:
    """The shard counts a restore must start with (engine.json's)."""
    return {"shards": config.shards, "memory_shards": config.memory.shards}
