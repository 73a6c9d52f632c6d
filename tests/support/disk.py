"""What a disk's filesystem keeps of files, for tests that look below the cache.

Page-cache residency (util-linux's fincore, or a RWF_NOWAIT read), inode
flags (lsattr's), and cache objects written the way the fetcher writes them.
Tests of the page cache need a real disk: `on_disk` skips them on tmpfs,
which keeps every page whatever it is advised.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from pathlib import Path

import pytest

from cachefs.cache.fanout import FS_IOC_GETFLAGS
from cachefs.cache.objects import CachedObject


def on_disk(path: Path) -> Path:
    """`path`, or skip the test when it is on tmpfs or ramfs."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(path)],
                            check=True, capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip(f"{path} is on {fstype}, which has no page cache to drop")
    return path


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
    """`size` rounded up to whole pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-size // page) * page


def dir_flags(path: Path) -> int | None:
    """The inode flags of `path` (lsattr), or None where there are none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return struct.unpack("=i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("=i", 0)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def written_object(directory: Path, name: str, data: bytes, chunk_size: int) -> CachedObject:
    """A cached object of `data`, its data file written whole (not recorded)."""
    path = directory / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    # In 1 MiB writes, as the fetcher writes: the kernel sizes the page
    # cache's folios after the writes.
    for offset in range(0, len(data), 1 << 20):
        os.pwrite(fd, data[offset:offset + (1 << 20)], offset)
    return CachedObject(key=name, version="v1", size=len(data), mtime=0.0, chunk_size=chunk_size, file=str(path), fd=fd)
