"""What the cache leaves in the page cache, and reads of what it dropped.

Once durable, streamed chunks (of big objects, fetched ahead of their
reader) leave the page cache; journal.py says why. Chunks readers asked for
and small objects stay. Reads take what the page cache holds inline and the
rest from disk in a worker thread; either way every byte must come back as
written.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path

import pytest
import trio

from cachefs.cache import objects
from cachefs.cache.db import CacheDB
from cachefs.cache.journal import Journal
from cachefs.cache.objects import CachedObject
from cachefs.localstore import NginxStore
from cachefs.localstore.tree import CHUNK as DAEMON_CHUNK

from mounter import Mounter, Tree, wait_until

CHUNK = 256 * 1024
BIG_CHUNK = 2 << 20


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache, as util-linux's fincore counts them."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.strip())


def in_page_cache(fd: int, offset: int) -> bool:
    """Whether the page at `offset` can be read without waiting for the disk."""
    try:
        return os.preadv(fd, [bytearray(4096)], offset, os.RWF_NOWAIT) == 4096
    except BlockingIOError:
        return False


def in_pages(size: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-size // page) * page


def make_object(tmp_path: Path, name: str, data: bytes, chunk_size: int = CHUNK) -> CachedObject:
    path = tmp_path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    # In 1 MiB writes, as the fetcher writes: the kernel sizes the page
    # cache's folios after the writes.
    for offset in range(0, len(data), 1 << 20):
        os.pwrite(fd, data[offset:offset + (1 << 20)], offset)
    return CachedObject(key=name, version="v1", size=len(data), mtime=0.0, chunk_size=chunk_size, path=path, fd=fd)


@pytest.fixture
def page_cache_fs(tmp_path: Path) -> Path:
    # tmpfs keeps every page whatever we advise; these tests need a disk.
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)],
                            check=True, capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fstype}, which has no page cache to drop")
    return tmp_path


def test_journal_drops_streamed_chunks_once_durable(page_cache_fs: Path) -> None:
    rng = random.Random(1)
    # 2 MiB chunks: the largest folio fits one, as with the daemon's 8 MiB.
    big_data = rng.randbytes(5 * BIG_CHUNK + 1000)
    big = make_object(page_cache_fs, "big", big_data, chunk_size=BIG_CHUNK)
    small = make_object(page_cache_fs, "small", rng.randbytes(CHUNK - 1))
    db = CacheDB(page_cache_fs / "cache.db")
    released: list[CachedObject] = []
    journal = Journal(db, released.append)
    try:
        assert resident_bytes(big.path) == in_pages(big.size)  # just written
        journal.add(big, 0)  # a reader asked for these two
        journal.add(big, 3)
        for idx in (1, 2, 4, 5):  # fetched ahead of the reader
            journal.add(big, idx, uncache=True)
        journal.add(small, 0)
        trio.run(journal.flush)

        assert resident_bytes(big.path) == 2 * BIG_CHUNK
        assert resident_bytes(small.path) == in_pages(small.size)
        # Dropped, not lost: recorded, and on disk byte for byte.
        assert db.find_object("big", "v1").complete
        assert db.find_object("small", "v1").complete
        assert big.path.read_bytes() == big_data
        assert len(released) == big.nchunks + 1
    finally:
        db.close()
        big.close()
        small.close()


def test_chunks_flushed_apart_are_dropped_too(page_cache_fs: Path) -> None:
    # The daemon's chunks (8 MiB) are a multiple of the largest folio, so a
    # chunk can be dropped alone; 2 MiB chunks are the tightest such case.
    data = random.Random(4).randbytes(4 * BIG_CHUNK + 5000)
    obj = make_object(page_cache_fs, "big", data, chunk_size=BIG_CHUNK)
    db = CacheDB(page_cache_fs / "cache.db")
    journal = Journal(db, lambda obj: None)
    try:
        for batch in ([0, 2], [4], [1, 3]):
            for idx in batch:
                journal.add(obj, idx, uncache=True)
            trio.run(journal.flush)
        assert resident_bytes(obj.path) == 0
        assert obj.path.read_bytes() == data
    finally:
        db.close()
        obj.close()


def test_journal_keeps_pages_it_could_not_make_durable(page_cache_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = make_object(page_cache_fs, "big", random.Random(2).randbytes(3 * CHUNK))
    db = CacheDB(page_cache_fs / "cache.db")

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    journal = Journal(db, lambda obj: None)
    try:
        for idx in range(big.nchunks):
            journal.add(big, idx, uncache=True)
        big.present.update(range(big.nchunks))
        trio.run(journal.flush)
        # Not durable: not recorded, to be fetched again, and not dropped.
        assert db.find_object("big", "v1") is None
        assert big.present == set()
        assert resident_bytes(big.path) == in_pages(big.size)
    finally:
        db.close()
        big.close()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("dropped", ["none", "all", "second-half"])
def test_reads_are_exact_whatever_the_page_cache_holds(
    page_cache_fs: Path, monkeypatch: pytest.MonkeyPatch, dropped: str, streamed: bool
) -> None:
    data = random.Random(3).randbytes(4 * CHUNK + 123)
    obj = make_object(page_cache_fs, "obj", data)
    if streamed:
        obj.streamed.update(range(obj.nchunks))
    from_disk: list[int] = []
    real_read_into = objects._read_into

    def counting_read_into(fd: int, buf: memoryview, offset: int, uncached: bool = False) -> int:
        from_disk.append(len(buf))
        return real_read_into(fd, buf, offset, uncached)

    monkeypatch.setattr(objects, "_read_into", counting_read_into)
    try:
        os.fdatasync(obj.fd)  # DONTNEED drops clean pages only
        half = obj.size // 2 // 4096 * 4096
        if dropped == "all":
            os.posix_fadvise(obj.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        elif dropped == "second-half":
            os.posix_fadvise(obj.fd, half, 0, os.POSIX_FADV_DONTNEED)

        async def read(offset: int, length: int) -> bytes:
            return bytes(await obj.pread(offset, length))

        whole = trio.run(read, 0, obj.size + 5000)  # asks past the end
        assert whole == data
        if dropped == "all" and not streamed:
            assert resident_bytes(obj.path) == in_pages(obj.size)  # as any read would
        if dropped == "all" and streamed and objects._uncached_reads:
            # Streamed chunks that came from disk were not put back.
            assert resident_bytes(obj.path) == 0
        if dropped == "none":
            assert from_disk == []
        else:
            assert from_disk and sum(from_disk) <= obj.size
            if dropped == "second-half":
                assert sum(from_disk) <= obj.size - half  # the first half came inline
        for offset, length in [(1, 4095), (CHUNK - 7, 20_000), (obj.size - 10, 100), (obj.size, 10)]:
            assert trio.run(read, offset, length) == data[offset:offset + length]
    finally:
        obj.close()


@pytest.mark.parametrize("refused", [objects.RWF_DONTCACHE, os.RWF_NOWAIT])
def test_reads_fall_back_when_the_file_system_refuses_a_flag(
    page_cache_fs: Path, monkeypatch: pytest.MonkeyPatch, refused: int
) -> None:
    # As tmpfs or a kernel before 6.14 answers: EOPNOTSUPP for the flag.
    monkeypatch.setattr(objects, "_nowait_reads", True)
    monkeypatch.setattr(objects, "_uncached_reads", True)
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list, offset: int, flags: int = 0) -> int:
        if flags & refused:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(objects.os, "preadv", preadv)
    data = random.Random(5).randbytes(3 * CHUNK + 77)
    obj = make_object(page_cache_fs, "obj", data)
    obj.streamed.update(range(obj.nchunks))
    try:
        os.fdatasync(obj.fd)
        os.posix_fadvise(obj.fd, CHUNK, 0, os.POSIX_FADV_DONTNEED)

        async def read(offset: int, length: int) -> bytes:
            return bytes(await obj.pread(offset, length))

        for offset, length in [(0, obj.size), (5, 4096), (CHUNK, 2 * CHUNK)]:
            assert trio.run(read, offset, length) == data[offset:offset + length]
        # Only the refused flag is given up.
        assert objects._uncached_reads is (refused != objects.RWF_DONTCACHE)
        assert objects._nowait_reads is (refused != os.RWF_NOWAIT)
    finally:
        obj.close()


def test_a_mount_keeps_what_readers_asked_for_and_drops_what_it_streamed(
    mount: Mounter, store: NginxStore, tree: Tree, page_cache_fs: Path
) -> None:
    mp = mount(store.url, page_cache_fs / "cache")
    big = mp / "big.bin"
    asked = [5, 9]  # chunks a reader waits for, with no read-ahead
    with open(big, "rb", buffering=0) as f:
        for idx in asked:
            offset = idx * DAEMON_CHUNK + 4096
            assert os.pread(f.fileno(), 4096, offset) == tree.read("big.bin", offset, 4096)
    assert Tree.sha256_of(big) == tree.hashes["big.bin"]  # sequential: read-ahead streams the rest

    data = max((p for p in (page_cache_fs / "cache").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert data.stat().st_size == tree.size("big.bin")
    nchunks = -(-data.stat().st_size // DAEMON_CHUNK)
    # Chunk 0 (the sequential read's first) and the asked ones stay; a
    # chunk or two more may have been asked for before read-ahead got to it.
    bound = (len(asked) + 3) * DAEMON_CHUNK
    assert wait_until(lambda: resident_bytes(data) <= bound, 10), \
        f"{resident_bytes(data)} bytes of {nchunks} chunks still in the page cache"
    fd = os.open(data, os.O_RDONLY)
    try:
        assert [idx for idx in asked if not in_page_cache(fd, idx * DAEMON_CHUNK + 4096)] == []
    finally:
        os.close(fd)
