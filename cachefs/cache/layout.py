"""Where a cache keeps its files, and the lock that says who uses them.

One folder per remote source, so that several mounts can share a cache
directory without sharing state:

    <cache-dir>/<host-path>-<hash>/
        lock          held (flock) by the one process using this folder
        state.db      SQLite: objects, chunks, listings (see `db`)
        data/ab/ab12… one sparse file per object version (see `fanout`)

A running daemon holds an exclusive flock on `<folder>/lock` for as long as
it uses the folder. Offline tools (fsck, cache clear) take the same lock
without waiting: holding it, they know no daemon uses the folder, and no
daemon can start on it until they let go.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import fanout

# The unit of fetching and of recording: a chunk of an object is cached
# whole or not at all.
CHUNK_SIZE = 8 * 1024 * 1024
# Free space kept on the cache's disk unless --min-free says otherwise.
DEFAULT_MIN_FREE = 1 << 30

LOCK_NAME = "lock"
DB_NAME = "state.db"
DATA_NAME = "data"
DIR_MODE = 0o700
FILE_MODE = 0o600


class FolderBusy(Exception):
    """A running daemon holds the folder's lock."""


class CacheDirError(Exception):
    """The cache directory cannot be created or written."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cachefs"


def source_digest(source: str) -> str:
    """The hash part of a source folder's name."""
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def source_folder(cache_dir: Path, source: str) -> Path:
    """The folder of `source` inside `cache_dir`: readable, and unique by hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", source.split("://", 1)[-1]).strip("_")[:48]
    return cache_dir / f"{readable}-{source_digest(source)}"


def prepare_dir(path: Path) -> None:
    """Create `path` (mode 0700) and check that we can write in it."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CacheDirError(f"cache dir {path} is not writable: {e.strerror or e}") from e


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


def take_lock(folder: Path) -> int:
    """Take the folder's lock and return its descriptor (closing it lets go);
    raise FolderBusy at once if another process has it."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(str(folder)) from None
    return fd


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; raise FolderBusy at once if a daemon has it."""
    fd = take_lock(folder)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the flock


def remove_folder(folder: Path) -> None:
    """Delete a source folder; call while holding its lock.

    It is renamed away first, so a daemon starting meanwhile makes a fresh
    folder under the old name instead of finding a half-deleted one.
    """
    doomed = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    folder.rename(doomed)
    shutil.rmtree(doomed)


def data_file(folder: Path, name: str) -> Path:
    """Where a source folder keeps the data file called `name`."""
    return fanout.data_path(folder / DATA_NAME, name)


def open_data_file(path: str | Path, size: int) -> tuple[int, int]:
    """Open (or create) a data file and make it `size` bytes long (sparse);
    return its descriptor and the size it had."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    found = os.fstat(fd).st_size
    if found != size:
        os.ftruncate(fd, size)
    return fd, found
