"""The folder a backup or a restore writes into: new or empty, and left as it was when it fails."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from engine.storage.private import make_directory

from .manifest import BackupRefused


def prepare_empty(folder: Path, what: str) -> bool:
    """Refuse a folder that holds anything or cannot be written; True when it is made here.
    `what` names the operation in the refusal ("a backup", "a restore")."""
    if folder.exists():
        if not folder.is_dir():
            raise BackupRefused(f"{folder} is not a folder")
        if any(folder.iterdir()):
            raise BackupRefused(f"{folder} is not empty: {what} goes into a new or empty folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BackupRefused(f"cannot write {folder}: permission denied")
        return False
    try:
        make_directory(folder)
    except OSError as exc:
        raise BackupRefused(f"cannot make {folder}: {exc.strerror or exc}") from None
    return True


def undo(folder: Path, made: bool) -> None:
    """Remove what was written into `folder` (the folder too when `prepare_empty` made it)."""
    if made:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
