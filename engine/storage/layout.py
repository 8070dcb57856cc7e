"""Where things live under the data directory, and the facts every start must agree with."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from engine.errors import ConfigError

from .identity import IDENTITY_FILE, ShardIdentity, write_identity
from .lock import fsync_directory, write_atomically
from .private import make_directory

# The shape of the data directory's files (engine.json, snapshots, log records). A change that an
# older reader would misread bumps it; an addition that older data still decodes under (a new op,
# a field appended with a default) does not (engine.sessions.codec). A release reads data of its
# own format, the fixtures of which it is tested on (tests/fixtures/data-format-*), and refuses a
# newer one in one line (newer_format) rather than guess at it.
FORMAT_VERSION = 1
log = logging.getLogger(__name__)

LAYOUT_FILE = "engine.json"


def shard_directory(data_dir: Path, index: int) -> Path:
    return data_dir / "shards" / f"shard-{index:04d}"


def memory_directory(data_dir: Path, index: int) -> Path:
    return data_dir / "memory" / f"memory-{index:04d}"


def claim_layout(
    data_dir: Path, shards: int, memory_shards: int | None = None, settings: dict[str, Any] | None = None
) -> str:
    """Claim `data_dir` for a cluster starting on it; returns the cluster's id.

    The first start records the shard counts and a new cluster id in engine.json, and gives every
    shard directory its identity (engine.storage.identity), so that a shard never serves a
    directory that is not its own. Later starts must give the same shard counts: sessions and
    organizations are placed by a hash over them. `settings` (the cluster's effective settings)
    are recorded for operators; a start with other ones replaces them."""
    make_directory(data_dir)
    path = data_dir / LAYOUT_FILE
    recorded = read_layout(data_dir)
    if recorded is None:
        layout: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "cluster_id": f"cl_{uuid.uuid4().hex}",
            "created_at": int(time.time() * 1000),
            "shards": shards,
        }
        if memory_shards is not None:
            layout["memory_shards"] = memory_shards
        if not _create_exclusively(path, orjson.dumps({**layout, "settings": settings})):
            recorded = read_layout(data_dir)  # another gateway claimed it first: theirs is the claim
    if recorded is not None:
        layout = _checked(data_dir, recorded, shards, memory_shards)
        if layout != recorded:
            write_atomically(path, orjson.dumps(layout))  # what an older version left incomplete
        if settings is not None and recorded.get("settings") != settings:
            try:
                write_atomically(path, orjson.dumps({**layout, "settings": settings}))
            except OSError as exc:  # for operators only: a full or read-only disk must not stop a start
                log.warning(
                    "cannot record the cluster's settings", extra={"path": str(path), "error": str(exc)}
                )
    cluster_id = str(layout["cluster_id"])
    counts = (("session", shard_directory, shards), ("memory", memory_directory, memory_shards or 0))
    for kind, place, count in counts:
        for index in range(count):
            directory = place(data_dir, index)
            if not (directory / IDENTITY_FILE).exists():
                make_directory(directory)  # and shards/ or memory/ above it
                write_identity(directory, ShardIdentity(cluster_id, kind, index))
    return cluster_id


def read_layout(data_dir: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = orjson.loads((data_dir / LAYOUT_FILE).read_bytes())
    except FileNotFoundError:
        return None
    return found


def newer_format(path: Path, found: Any, reads: int) -> str | None:
    """The one line that refuses a file a newer release wrote (its format above `reads`, the one
    this release writes), or None: such a file is never read as damage or as an older format."""
    if isinstance(found, int) and not isinstance(found, bool) and found > reads:
        return f"{path} was written by a newer release (format {found}); this release reads format {reads}"
    return None


def _checked(
    data_dir: Path, recorded: dict[str, Any], shards: int, memory_shards: int | None
) -> dict[str, Any]:
    """The recorded layout, refused if this start's counts differ; what an older version wrote
    (no memory shard count, no cluster id) is completed. The format comes first: a newer release
    may have changed what every other fact means."""
    found = recorded.get("format")
    if (refusal := newer_format(data_dir / LAYOUT_FILE, found, FORMAT_VERSION)) is not None:
        raise ConfigError(refusal)
    if found != FORMAT_VERSION:
        raise ConfigError(f"{data_dir} holds data in format {found}, not {FORMAT_VERSION}")
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
    layout = dict(recorded)
    if memory_shards is not None:
        layout.setdefault("memory_shards", memory_shards)
    layout.setdefault("cluster_id", f"cl_{uuid.uuid4().hex}")  # data from before cluster ids
    return layout


def _create_exclusively(path: Path, content: bytes) -> bool:
    """Write `path` whole unless it exists; False if another process created it first."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    write_atomically(tmp, content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    fsync_directory(path.parent)
    return True
