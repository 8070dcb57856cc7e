"""Everything the engine writes under its data directory is its user's alone: files 0600,
directories 0700, whatever the process's umask.

The data holds every session's messages, the memory's texts and the hashes of the API keys, so no
file of it may be readable by another user of the machine. A mode given to `open` or `mkdir` only
has bits taken away by the umask, so a umask like 0o022 leaves 0600 as it is, but one that takes
the owner's bits away (0o277) would leave a file the engine cannot write back; so each file and
directory made here is set to its mode exactly once it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def make_directory(path: Path) -> None:
    """Create `path` and whichever of its parents are missing, each 0700. Directories that exist
    keep their mode: the data directory itself may be a mount point an operator set up."""
    missing = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it first, the same way
        directory.chmod(DIRECTORY_MODE)


def open_file(path: Path, flags: int) -> int:
    """`os.open(path, flags)` for a data file: created 0600, and set to 0600 if it is not."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private(root: Path) -> None:
    """Set every file under `root` to 0600 and every directory (`root` too) to 0700: for what a
    library wrote with the umask's modes (a converted model's files) before it is put in place.
    Symbolic links are left alone (a mode on one would land on what it points to)."""
    root.chmod(DIRECTORY_MODE)
    for directory, subdirectories, files in os.walk(root):  # never into a linked directory
        for names, mode in ((subdirectories, DIRECTORY_MODE), (files, FILE_MODE)):
            for name in names:
                path = Path(directory, name)
                if not path.is_symlink():
                    path.chmod(mode)
