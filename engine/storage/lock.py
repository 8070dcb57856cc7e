"""Files that must survive crashes: the shard directory lock, atomic replacement, directory fsync.
Each file and directory made here is private (engine.storage.private)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from engine.errors import DirectoryLocked

from .private import make_directory, open_file


class DirectoryLock:
    """flock on `<dir>/LOCK`. The kernel drops it when the holder dies, so a crash never leaves it held."""

    def __init__(self, directory: Path, wait_s: float = 10.0) -> None:
        make_directory(directory)
        self.path = directory / "LOCK"
        try:
            self._fd = open_file(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # A read-only file system: the shard starts read-only, and flock needs no write access.
            self._fd = os.open(self.path if self.path.exists() else directory, os.O_RDONLY)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A shard restarted by Ray may start while its dead predecessor is still being reaped.
                if time.monotonic() > deadline:
                    holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
                    os.close(self._fd)
                    raise DirectoryLocked(directory, holder) from None
                time.sleep(0.1)
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"pid {os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the holder's pid is for people; a full or read-only disk keeps the old text

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def lock_holder(directory: Path) -> str | None:
    """Who holds the directory's lock ("pid N"), or None if no one does; takes it for a moment
    and changes nothing (for `session-engine check`)."""
    try:
        fd = os.open(directory / "LOCK", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
    finally:
        os.close(fd)  # closing releases the lock, if it was taken
    return None


def write_atomically(path: Path, content: bytes) -> None:
    """Replace `path` with `content` so a crash leaves the old file or the new one, never half of
    one: write a private temporary file, fsync it, rename it over, fsync the directory."""
    make_directory(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
