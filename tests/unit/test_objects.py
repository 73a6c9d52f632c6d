"""Reads of a cached object's data file: what the page cache holds comes
inline, the rest from disk in a worker thread, and either way every byte
comes back as written, whatever flags the file system refuses."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
import trio

from cachefs.cache import objects
from disk import in_pages, on_disk, resident_bytes, written_object

CHUNK = 256 * 1024


@pytest.fixture(autouse=True)
def flags_untried(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read flags as a new daemon has them: a cache on tmpfs (other unit
    tests') has turned them off for the rest of the process."""
    monkeypatch.setattr(objects, "_nowait_reads", True)
    monkeypatch.setattr(objects, "_uncached_reads", True)


def make_object(directory: Path, name: str, data: bytes):
    return written_object(directory, name, data, CHUNK)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("dropped", ["none", "all", "second-half"])
def test_reads_are_exact_whatever_the_page_cache_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dropped: str, streamed: bool
) -> None:
    disk = on_disk(tmp_path)
    data = random.Random(3).randbytes(4 * CHUNK + 123)
    obj = make_object(disk, "obj", data)
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: int
) -> None:
    disk = on_disk(tmp_path)
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
    obj = make_object(disk, "obj", data)
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
