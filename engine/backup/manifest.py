"""A backup's manifest, `backup.json`: what the backup holds and how to check it, written last so that
a folder with a manifest holds a whole backup.

    {"format": "session-engine-backup", "version": 1, "data_format": 1,
     "backup_id": "bk_...", "cluster_id": "cl_...", "started_at": ms, "finished_at": ms,
     "incremental_from": null | {"backup_id": "bk_...", "path": "/abs/path/of/previous"},
     "layout": {"shards": 2, "memory_shards": 1},
     "shards": [{"kind": "session", "index": 0, "directory": "shards/shard-0000",
                 "lsn": 1234, "lsn_crc": 305419896, "cut_at": ms, "snapshot_lsn": 1200 | null,
                 "from_lsn": 1201,
                 "files": [{"name": "snapshot-...snap", "kind": "snapshot", "bytes": n, "sha256": "..."},
                           {"name": "wal-...log", "kind": "log", "bytes": n, "sha256": "...",
                            "first_lsn": 1201, "last_lsn": 1234}]}],
     "keys_file": null | {"name": "keys.json", "bytes": n, "sha256": "..."}}

Each shard's files are under its `directory`, as in a data directory. `lsn` is its watermark: the
last log record the backup holds, `lsn_crc` that record's checksum (an incremental backup checks
that the shard still has it), and `cut_at` when the shard was cut: every record it logged before is
in the backup. `snapshot_lsn` is the snapshot it holds (null: an incremental backup holding only
records `from_lsn`..`lsn`, which continue the previous backup's). A log file holds the whole
records `first_lsn`..`last_lsn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import ConfigError
from engine.storage.layout import FORMAT_VERSION, newer_format

MANIFEST = "backup.json"
FORMAT = "session-engine-backup"
VERSION = 1


class BackupRefused(ConfigError):
    """A backup or restore that cannot be made, in one line; nothing was changed."""


@dataclass(slots=True, frozen=True)
class ShardFile:
    name: str
    kind: str  # "snapshot", "log" or "keys"
    bytes: int
    sha256: str
    first_lsn: int | None = None  # a log file's records
    last_lsn: int | None = None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }
        if self.kind == "log":
            found |= {"first_lsn": self.first_lsn, "last_lsn": self.last_lsn}
        return found


@dataclass(slots=True, frozen=True)
class ShardEntry:
    kind: str  # "session" or "memory"
    index: int
    directory: str
    lsn: int
    lsn_crc: int | None
    cut_at: int
    snapshot_lsn: int | None
    from_lsn: int
    files: tuple[ShardFile, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "directory": self.directory,
            "lsn": self.lsn,
            "lsn_crc": self.lsn_crc,
            "cut_at": self.cut_at,
            "snapshot_lsn": self.snapshot_lsn,
            "from_lsn": self.from_lsn,
            "files": [f.as_dict() for f in self.files],
        }

    @property
    def key(self) -> tuple[str, int]:
        return self.kind, self.index


@dataclass(slots=True, frozen=True)
class Manifest:
    path: Path  # the backup's folder
    backup_id: str
    cluster_id: str
    started_at: int
    finished_at: int
    incremental_from: dict[str, str] | None
    layout: dict[str, int]
    shards: tuple[ShardEntry, ...]
    keys_file: ShardFile | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "data_format": FORMAT_VERSION,
            "backup_id": self.backup_id,
            "cluster_id": self.cluster_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "incremental_from": self.incremental_from,
            "layout": self.layout,
            "shards": [s.as_dict() for s in self.shards],
            "keys_file": None if self.keys_file is None else self.keys_file.as_dict(),
        }

    def shard(self, kind: str, index: int) -> ShardEntry | None:
        return next((s for s in self.shards if s.key == (kind, index)), None)


def is_backup(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_manifest(path: Path) -> Manifest:
    """The manifest of the backup in folder `path`; BackupRefused, in one line, when there is none
    or it does not read as one."""
    try:
        found = orjson.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BackupRefused(f"{path} is not a backup: it has no {MANIFEST}") from None
    except orjson.JSONDecodeError as exc:
        raise BackupRefused(f"{path / MANIFEST} is damaged: {exc}") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise BackupRefused(f"{path / MANIFEST} is not a session-engine backup manifest")
    if (refusal := newer_format(path / MANIFEST, found.get("version"), VERSION)) is not None:
        raise BackupRefused(refusal)
    if (refusal := newer_format(path / MANIFEST, found.get("data_format"), FORMAT_VERSION)) is not None:
        raise BackupRefused(refusal)
    try:
        keys = found["keys_file"]
        return Manifest(
            path=path,
            backup_id=str(found["backup_id"]),
            cluster_id=str(found["cluster_id"]),
            started_at=int(found["started_at"]),
            finished_at=int(found["finished_at"]),
            incremental_from=found["incremental_from"],
            layout={k: int(v) for k, v in found["layout"].items()},
            shards=tuple(
                ShardEntry(
                    kind=str(s["kind"]),
                    index=int(s["index"]),
                    directory=str(s["directory"]),
                    lsn=int(s["lsn"]),
                    lsn_crc=None if s["lsn_crc"] is None else int(s["lsn_crc"]),
                    cut_at=int(s["cut_at"]),
                    snapshot_lsn=None if s["snapshot_lsn"] is None else int(s["snapshot_lsn"]),
                    from_lsn=int(s["from_lsn"]),
                    files=tuple(_file(f) for f in s["files"]),
                )
                for s in found["shards"]
            ),
            keys_file=None if keys is None else _file(keys),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BackupRefused(f"{path / MANIFEST} is damaged: missing or wrong field {exc}") from None


def _file(found: dict[str, Any]) -> ShardFile:
    name = str(found["name"])
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"file name {name!r}")
    kind = str(found["kind"])
    if kind != "log":
        return ShardFile(name, kind, int(found["bytes"]), str(found["sha256"]))
    return ShardFile(
        name, kind, int(found["bytes"]), str(found["sha256"]), int(found["first_lsn"]), int(found["last_lsn"])
    )


def chain(path: Path) -> list[Manifest]:
    """The backup at `path` and the ones it is incremental from, oldest (the full one) first;
    BackupRefused if one is missing, of another cluster, or not the one recorded."""
    found = [read_manifest(path)]
    while (base := found[-1].incremental_from) is not None:
        if len(found) > 10_000:
            raise BackupRefused(f"{path}: the chain of incremental backups loops")
        previous = read_manifest(_base_folder(found[-1].path, base))
        if previous.backup_id != base["backup_id"]:
            raise BackupRefused(
                f"{found[-1].path} continues backup {base['backup_id']}, but {previous.path} holds "
                f"backup {previous.backup_id}"
            )
        if previous.cluster_id != found[-1].cluster_id or previous.layout != found[-1].layout:
            raise BackupRefused(f"{found[-1].path} and {previous.path} are backups of different clusters")
        found.append(previous)
    return found[::-1]


def _base_folder(child: Path, base: dict[str, str]) -> Path:
    """Where the backup `base` names is: the path it recorded, or, when the backups were moved
    together, the folder of that name beside `child`."""
    recorded = Path(base["path"])
    if is_backup(recorded):
        return recorded
    beside = child.parent / recorded.name
    return beside if is_backup(beside) else recorded
