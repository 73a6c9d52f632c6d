"""The files a benchmark reads: generated (for the built-in run and the
scripts in bench/), or found in a mount; and the local store serving them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cachefs.localstore.tree import write_seeded_file

from .system import BenchError, KiB, MiB

if TYPE_CHECKING:
    from cachefs.localstore.nginx import NginxStore

BIG_NAME = "big.bin"
SMALL_DIR = "small"
SMALL_PER_DIR = 100
# In a mount, files up to this size count as "small" for the files/s figure.
SMALL_LIMIT = MiB


@dataclass
class FileSet:
    """Files as keys relative to a root: one large file and many small ones."""

    big: str
    big_size: int
    small: list[str] = field(default_factory=list)
    # key -> sha256, when the benchmark made the files and knows their bytes.
    expected: dict[str, str] | None = None

    @property
    def keys(self) -> list[str]:
        return [self.big, *self.small]

    def small_paths(self, root: Path) -> list[Path]:
        """The small files under `root` (the source, or a mount of it)."""
        return [root / key for key in self.small]

    def expected_small(self, resolve: Callable[[str], Path]) -> dict[Path, str] | None:
        """The small files' sha256 by the path `resolve` gives each key (None: unknown)."""
        if self.expected is None:
            return None
        return {resolve(key): self.expected[key] for key in self.small}


def write_random_file(path: Path, size: int, seed: str | None = None) -> str:
    """Fill `path` with `size` pseudo-random bytes fixed by `seed` (by default
    the file's name and size); return their sha256 hex."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_seeded_file(path, seed or f"bench/{path.name}/{size}", size)


def generate(root: Path, big_size: int, small_count: int, small_size: int) -> FileSet:
    """Write big.bin and small/dNN/fNNNNN.bin (SMALL_PER_DIR per directory)."""
    expected = {BIG_NAME: write_random_file(root / BIG_NAME, big_size, f"bench/big/{big_size}")}
    small = []
    for i in range(small_count):
        key = f"{SMALL_DIR}/d{i // SMALL_PER_DIR:02d}/f{i:05d}.bin"
        expected[key] = write_random_file(root / key, small_size, f"bench/small/{i}")
        small.append(key)
    return FileSet(BIG_NAME, big_size, small, expected)


def files_in_mount(mountpoint: Path, key: str, small_count: int) -> FileSet:
    """The files at `key` in a mount: the largest is the large file, non-empty
    files up to SMALL_LIMIT (at most `small_count`, in name order) the small ones."""
    start = mountpoint / key if key else mountpoint
    if start.is_file():
        return FileSet(key, start.stat().st_size)
    sizes: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            sizes[str(path.relative_to(mountpoint))] = path.stat().st_size
    if not sizes:
        raise BenchError(f"no files under {start}")
    big = max(sizes, key=lambda k: (sizes[k], k))
    if sizes[big] < 4 * KiB:
        raise BenchError(f"the largest file under {start} has {sizes[big]} bytes; "
                         "sequential and random figures need at least 4 KiB")
    # Empty files have no data file in the cache, so no native counterpart.
    small = [k for k in sizes if k != big and 0 < sizes[k] <= SMALL_LIMIT][:small_count]
    return FileSet(big, sizes[big], small)


class Store(Protocol):
    """What the benchmark needs of a local HTTP store."""

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...


def data_gets(store: NginxStore, key: str) -> int:
    """GETs of the file `key` nginx logged since its log was last cleared."""
    return sum(1 for e in store.access_log() if e.method == "GET" and e.index == "data" and e.path == key)


def make_store(root: Path, workdir: Path, kind: str) -> tuple[Store, str]:
    """nginx when installed (kind "auto" or "nginx"), else the built-in server."""
    from cachefs.localstore.httpserver import BuiltinStore
    from cachefs.localstore.nginx import NginxError, NginxStore, find_nginx

    if kind == "builtin":
        return BuiltinStore(root), "built-in HTTP server"
    try:
        find_nginx()
    except NginxError:
        if kind == "nginx":
            raise
        return BuiltinStore(root), "built-in HTTP server (nginx not installed)"
    workdir.mkdir(parents=True, exist_ok=True)
    return NginxStore(root, workdir), "nginx"
