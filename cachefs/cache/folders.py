"""Source folders of a cache directory, seen from outside the daemon.

A running daemon holds an exclusive flock on `<folder>/lock` for as long as
it uses the folder (see `store.Cache`). Offline tools (fsck, cache clear)
take the same lock without waiting: holding it, they know no daemon uses
the folder, and no daemon can start on it until they let go.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "lock"
DB_NAME = "state.db"
DATA_NAME = "data"
FILE_MODE = 0o600


class FolderBusy(Exception):
    """A running daemon holds the folder's lock."""


def source_folders(cache_dir: Path) -> list[Path]:
    """The source folders in `cache_dir`: directories that hold a cache's
    lock, database or data. Anything else there is not ours to touch."""
    try:
        entries = sorted(cache_dir.iterdir())
    except FileNotFoundError:
        return []
    return [
        p for p in entries
        if p.is_dir() and not p.name.startswith(".")
        and any((p / n).exists() for n in (LOCK_NAME, DB_NAME, DATA_NAME))
    ]


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; raise FolderBusy at once if a daemon has it."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(str(folder)) from None
        yield
    finally:
        os.close(fd)  # closing drops the flock


def is_locked(folder: Path) -> bool:
    try:
        with folder_lock(folder):
            return False
    except FolderBusy:
        return True


def remove_folder(folder: Path) -> None:
    """Delete a source folder; call while holding its lock.

    It is renamed away first, so a daemon starting meanwhile makes a fresh
    folder under the old name instead of finding a half-deleted one.
    """
    doomed = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    folder.rename(doomed)
    shutil.rmtree(doomed)
