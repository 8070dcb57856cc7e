"""Whose data a shard directory holds, and which incarnation of the shard may write it.

A Ray actor that restarts may come up on another node. If that node does not see the shared data
directory, the path is there but empty (or absent), and a shard that simply started would serve an
empty state in place of the real one. So every shard directory carries an `IDENTITY` file, written
when the cluster's data directory is first claimed (engine.storage.layout), naming the cluster, the
kind of shard and its index; a shard starts only on a directory whose identity is its own.

A shard restarted while its old incarnation still runs (a node cut off from Ray but not from the
disk) must not write beside it, and `flock` is not a reliable fence on every network filesystem.
So each start takes the next `EPOCH` (a file replaced atomically), and a shard checks, after each
log write and before it acknowledges anything, that the epoch file is still the one it wrote. An
incarnation that finds it replaced is fenced: it answers nothing from then on. Its last record may
be in the log (it was never acknowledged); recovery cuts such records off when a newer incarnation's
segment starts at the same position (engine.storage.wal.read_log).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import Unavailable

from .lock import write_atomically

IDENTITY_FILE = "IDENTITY"
EPOCH_FILE = "EPOCH"


@dataclass(frozen=True, slots=True)
class ShardIdentity:
    cluster_id: str
    kind: str  # "session" or "memory"
    index: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotThisShardsData(Unavailable):
    """The shard's directory is missing, lacks an identity, or belongs to another shard or cluster.
    The shard refuses to serve rather than serve an empty state in place of the real one."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(
            f"{Path(directory).name} refuses to serve: {reason}",
            {"shard_directory": Path(directory).name, "reason": reason, "refused": True},
            "The node this shard runs on does not see the cluster's data directory as it was claimed. "
            "Mount the shared data directory at the same path on every node that may host shards "
            "(or restrict shards to such nodes with ray.data_resource); the shard checks again every "
            "few seconds and serves once it finds its data.",
        )
        self.reason = reason


class Fenced(Unavailable):
    """A newer incarnation of this shard took its directory over; this one answers nothing more."""

    def __init__(self, directory: str, epoch: int) -> None:
        super().__init__(
            f"{Path(directory).name}: a newer incarnation of this shard took over its directory, so this "
            f"one (epoch {epoch}) takes no more requests",
            {"shard_directory": Path(directory).name, "epoch": epoch, "fenced": True},
            "Retry: the request reaches the shard's current incarnation once Ray has moved it.",
        )


def write_identity(directory: Path, identity: ShardIdentity) -> None:
    write_atomically(directory / IDENTITY_FILE, orjson.dumps(identity.as_dict()))


def verify_identity(directory: Path, identity: ShardIdentity) -> None:
    """Raise NotThisShardsData unless `directory` exists and names this shard of this cluster.
    Creates nothing: a directory that is not there is a refusal, never an empty start."""
    if not directory.parent.parent.joinpath("engine.json").exists():
        raise NotThisShardsData(
            str(directory),
            f"the data directory {directory.parent.parent} is not there (or holds no engine.json)",
        )
    try:
        found = orjson.loads((directory / IDENTITY_FILE).read_bytes())
    except FileNotFoundError:
        raise NotThisShardsData(str(directory), f"{directory} has no {IDENTITY_FILE} file") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise NotThisShardsData(str(directory), f"cannot read {directory / IDENTITY_FILE}: {exc}") from None
    if found != identity.as_dict():
        raise NotThisShardsData(
            str(directory), f"{directory} belongs to {found}, not to this shard ({identity.as_dict()})"
        )


class Epoch:
    """This incarnation's claim on a directory: the next epoch, taken at start."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / EPOCH_FILE
        self.value = read_epoch(directory) + 1
        write_atomically(self._path, b"%d\n" % self.value)
        self._stamp = _stamp(self._path)

    def held(self) -> bool:
        """Whether the epoch file is still the one this incarnation wrote (a stat, no read)."""
        try:
            return _stamp(self._path) == self._stamp
        except FileNotFoundError:
            return False


def read_epoch(directory: Path) -> int:
    """The directory's current epoch: how many times a shard has started on it (0: never)."""
    try:
        return int((directory / EPOCH_FILE).read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def _stamp(path: Path) -> tuple[int, int, int]:
    # Replaced by rename, the file gets a new inode; with the times, a reused inode number is told apart.
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns
