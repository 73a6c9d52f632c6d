"""Fixtures of the unit tier: a real cache and filesystem over an in-memory remote, no mount.

This is the one place a unit test opens a cache (`open_cache`) or wires a
filesystem over one (`open_stack`, what cachefs/daemon/serve.py wires, minus
the mount): when the cache's or the filesystem's constructor changes, only
this file changes. Tests use what these yield through its public methods.

Tests run their own `trio.run`; both fixtures return async context managers
to enter inside it:

    async with open_stack(MemoryRemote({"a.txt": b"hi"})) as stack:
        entry = await stack.fs.lookup(ROOT_ID, b"a.txt")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from cachefs.cache import Cache, CacheConfig
from cachefs.cache import open_cache as open_running_cache
from cachefs.cache.db import CacheDB
from cachefs.control import server as control_server
from cachefs.control.commands import Commands
from cachefs.fs import Filesystem
from cachefs.fs.listings import Listings
from cachefs.fs.prefetch import Prefetcher
from cachefs.kernel import Connection
from cachefs.kernel.passthrough import BackingFiles
from cachefs.kernel.wire import KERNEL_MINOR_VERSION, KERNEL_VERSION
from cachefs.remote import Remote

# Small chunks: a file of a few hundred KiB spans several, as a large one
# does with the daemon's 8 MiB.
CHUNK = 64 * 1024


OpenCache = Callable[..., AbstractAsyncContextManager[Cache]]
SHARED_MEMORY = Path("/dev/shm")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """The cache directory of one test: in memory (/dev/shm) where there is
    one. A cache makes 256 data folders; removing them from a busy disk at
    every test's end took up to a second a test."""
    if not (SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK)):
        yield tmp_path / "cache"
        return
    path = Path(tempfile.mkdtemp(prefix="cachefs-unit-", dir=SHARED_MEMORY))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_cache(cache_dir: Path) -> OpenCache:
    """`async with open_cache(remote, chunk_size=CHUNK, cap_bytes=None) as cache:`
    a running cache of `remote` in `cache_dir`, closed on exit. Opened
    again in the same test, it finds what the last one cached."""

    def open_(remote: Remote, *, chunk_size: int = CHUNK, cap_bytes: int | None = None):
        # No floor of free space: the machine's disk must not decide what is evicted.
        config = CacheConfig(cache_dir, cap_bytes=cap_bytes, min_free_bytes=0, chunk_size=chunk_size)
        return open_running_cache(config, remote)

    return open_


@dataclass
class Notified:
    """The kernel notifications a filesystem sent, in order."""

    inval_entry: list[tuple[int, bytes]] = field(default_factory=list)
    inval_inode: list[int] = field(default_factory=list)
    store: list[tuple[int, int, bytes]] = field(default_factory=list)


@dataclass
class Stack:
    """What a mount's daemon runs, minus the kernel: see `open_stack`."""

    remote: Remote
    cache: Cache
    fs: Filesystem
    prefetcher: Prefetcher
    notified: Notified
    control: Path | None  # the control socket, when asked for
    nursery: trio.Nursery


OpenStack = Callable[..., AbstractAsyncContextManager[Stack]]


@pytest.fixture
def open_stack(open_cache: OpenCache, tmp_path: Path) -> OpenStack:
    """`async with open_stack(remote, metadata_ttl=60, passthrough=None, control=False, ...) as stack:`

    A running cache and a Filesystem over it, initialised as INIT would:
    `passthrough` is None for a kernel that granted none, or the
    BackingFiles the kernel's connection registers files with. With
    `control`, the daemon's control socket serves at `stack.control`.
    Other keywords go to `open_cache`.
    """

    @asynccontextmanager
    async def open_(remote: Remote, *, metadata_ttl: float = 60.0, passthrough: BackingFiles | None = None,
                    control: bool = False, **cache_options) -> AsyncIterator[Stack]:
        async with open_cache(remote, **cache_options) as cache:
            fs = Filesystem(cache, remote, metadata_ttl, passthrough=passthrough is not None)
            notified = Notified()

            async def inval_entry(parent: int, name: bytes) -> None:
                notified.inval_entry.append((parent, name))

            async def inval_inode(ino: int) -> None:
                notified.inval_inode.append(ino)

            async def store(ino: int, offset: int, data: bytes | memoryview) -> None:
                notified.store.append((ino, offset, bytes(data)))

            async with trio.open_nursery() as nursery:
                await nursery.start(fs.run)
                fs.init(Connection(
                    major=KERNEL_VERSION, minor=KERNEL_MINOR_VERSION, flags=0, max_readahead=128 * 1024,
                    max_pages=256, passthrough=passthrough is not None, backing=passthrough,
                    notify_inval_entry=inval_entry, notify_store=store, notify_inval_inode=inval_inode,
                ))
                prefetcher = Prefetcher(cache, fs.listings, nursery)
                socket_path = None
                if control:
                    socket_path = tmp_path / "control.sock"
                    await nursery.start(control_server.serve, socket_path, Commands(fs, prefetcher).handlers())
                yield Stack(remote, cache, fs, prefetcher, notified, socket_path, nursery)
                nursery.cancel_scope.cancel()

    return open_


@pytest.fixture
def new_listings(tmp_path: Path) -> Callable[..., Listings]:
    """`new_listings(remote, ttl)`: directory listings kept in a database in
    tmp_path; each call is a new process's view of the same database."""
    dbs: list[CacheDB] = []

    def new(remote: Remote, ttl: float) -> Listings:
        db = CacheDB(tmp_path / "listings.db")
        dbs.append(db)
        return Listings(remote, db, ttl)

    yield new
    for db in dbs:
        db.close()
