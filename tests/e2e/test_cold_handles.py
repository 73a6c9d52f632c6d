"""Handles opened while their file is cold: page-cache mode and page pushes (issue 15).

A handle opened on a partial file is answered KEEP_CACHE: only the kernel's
page-cache misses reach the daemon, and after a random reader's miss the
daemon pushes the 1 MiB window around it into the page cache. So a database
opened cold stops asking the daemon once its pages are in, for the life of
the handle. Real mounts against a real nginx; bytes compared with the source.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import sqlite3
from pathlib import Path

import pytest

from cachefs.localstore import NginxStore

from mounter import Mounter, wait_until

MiB = 1024 * 1024
BIG = "big.bin"
BIG_SIZE = 40 * MiB + 1234
DB = "data.sqlite"
WINDOW = MiB
SETTLE_S = 20.0  # a bound for hangs, not a timing assertion


@pytest.fixture(scope="module")
def cold_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cold-tree")
    rng = random.Random(15)
    (root / BIG).write_bytes(rng.randbytes(BIG_SIZE))
    # A database of a few thousand 4 KiB pages, rows in random key order so
    # that an integrity check reads its pages out of order.
    db = sqlite3.connect(root / DB)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t VALUES (?, ?)",
                   ((f"{rng.getrandbits(64):x}", rng.randbytes(rng.randrange(50, 600))) for _ in range(40_000)))
    db.commit()
    db.close()
    return root


@pytest.fixture(scope="module")
def cold_store(cold_tree: Path, tmp_path_factory: pytest.TempPathFactory):
    with NginxStore(cold_tree, tmp_path_factory.mktemp("cold-nginx")) as nginx:
        yield nginx


def stats(mp: Path) -> dict:
    return json.loads(os.getxattr(mp, "user.cachefs.stats"))


def state(path: Path) -> str:
    return os.getxattr(path, "user.cachefs.state").decode()


def test_random_reader_opened_cold_stops_asking_the_daemon(mount: Mounter, cold_store: NginxStore,
                                                           cold_tree: Path) -> None:
    source = (cold_tree / BIG).read_bytes()
    mp = mount(cold_store.url)
    before = stats(mp)
    fd = os.open(mp / BIG, os.O_RDONLY)
    try:
        assert stats(mp)["opens"]["page-cache"] == before["opens"]["page-cache"] + 1
        assert state(mp / BIG) in ("absent",) or state(mp / BIG).startswith("partial "), state(mp / BIG)
        # One random 4 KiB read in every 1 MiB window, in random order: the
        # file is partial all along the first of them.
        rng = random.Random(1)
        windows = list(range(-(-BIG_SIZE // WINDOW)))
        rng.shuffle(windows)
        for w in windows:
            off = min(BIG_SIZE - 4096, w * WINDOW + rng.randrange(WINDOW // 4096) * 4096)
            assert os.pread(fd, 4096, off) == source[off:off + 4096], off
        assert wait_until(lambda: state(mp / BIG) == "complete", SETTLE_S), state(mp / BIG)
        # Every window is pushed (the last one is short).
        assert wait_until(lambda: stats(mp)["bytes_pushed"] - before["bytes_pushed"] >= BIG_SIZE - WINDOW,
                          SETTLE_S), stats(mp)
        # The same handle now reads without the daemon, reads and mappings alike.
        reads = stats(mp)["fuse_reads"]
        for _ in range(3000):
            off = rng.randrange(BIG_SIZE - 4096)
            assert os.pread(fd, 4096, off) == source[off:off + 4096], off
        with mmap.mmap(fd, BIG_SIZE, prot=mmap.PROT_READ) as m:
            for _ in range(300):
                off = rng.randrange(BIG_SIZE - 100)
                assert m[off:off + 100] == source[off:off + 100], off
        assert stats(mp)["fuse_reads"] == reads, "a handle opened cold still asks the daemon once warm"
    finally:
        os.close(fd)


def test_sqlite_integrity_check_on_a_database_opened_cold(mount: Mounter, cold_store: NginxStore,
                                                          cold_tree: Path) -> None:
    mp = mount(cold_store.url)
    pages = (cold_tree / DB).stat().st_size // 4096
    before = stats(mp)
    db = sqlite3.connect(f"file:{mp / DB}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (40_000,)
    finally:
        db.close()
    reads = stats(mp)["fuse_reads"] - before["fuse_reads"]
    # Without pushes each page is a round trip (one read per page); with
    # them, a round trip per window at most, plus misses racing their push.
    assert reads < pages / 4, f"{reads} daemon reads for {pages} pages"


def test_no_pushes_without_a_page_cache_miss(mount: Mounter, cold_store: NginxStore, cold_tree: Path) -> None:
    """Files opened in passthrough (complete) are read by the kernel: nothing to push."""
    mp = mount(cold_store.url)
    path = mp / BIG
    with open(path, "rb") as f:
        assert f.read() == (cold_tree / BIG).read_bytes()
    assert wait_until(lambda: state(path) == "complete", SETTLE_S)
    before = stats(mp)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert state(path) == "passthrough opens=1"
        rng = random.Random(2)
        for _ in range(200):
            off = rng.randrange(BIG_SIZE - 4096)
            os.pread(fd, 4096, off)
    finally:
        os.close(fd)
    after = stats(mp)
    assert (after["fuse_reads"], after["bytes_pushed"]) == (before["fuse_reads"], before["bytes_pushed"])


def test_evict_drops_the_kernels_page_cache_too(mount: Mounter, cold_store: NginxStore, cold_tree: Path) -> None:
    """After `cachefs evict`, a file read again comes from the remote, not from
    pages the kernel kept of an earlier page-cache handle."""
    from mounter import run, CACHEFS

    mp = mount(cold_store.url)
    path = mp / BIG
    source = (cold_tree / BIG).read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        # Random reads while partial: a page-cache handle, pages pushed.
        rng = random.Random(3)
        for _ in range(200):
            off = rng.randrange(BIG_SIZE - 4096)
            assert os.pread(fd, 4096, off) == source[off:off + 4096]
    finally:
        os.close(fd)
    assert wait_until(lambda: stats(mp)["bytes_pushed"] > 0, SETTLE_S)
    wait_until(lambda: not state(path).startswith("passthrough"), SETTLE_S)
    done = run([CACHEFS, "evict", path], timeout=60)
    assert done.returncode == 0, done.stderr
    assert state(path) == "absent"
    reads = stats(mp)["fuse_reads"]
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 5 * MiB + 12_345
        assert os.pread(fd, 4096, off) == source[off:off + 4096]
    finally:
        os.close(fd)
    assert stats(mp)["fuse_reads"] > reads, "read from pages the kernel kept after the evict"
    # The read's chunk was fetched again.
    assert wait_until(lambda: state(path) != "absent", SETTLE_S), state(path)
