"""The data folder's layout: 256 fan-out folders, spread over ext4's block
groups by the top-directory flag (see cachefs/cache/fanout.py for why a
cold read of many small files depends on it)."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

import pytest
from reliability import checked_read, only_folder
from mounter import Mounter, Tree

from cachefs.cache.fanout import FS_IOC_GETFLAGS, FS_TOPDIR_FL, mark_top_directory
from cachefs.localstore import NginxStore


def dir_flags(path: Path) -> int | None:
    """The inode flags of `path` (lsattr), or None where there are none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return struct.unpack("=i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("=i", 0)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def test_data_folder_spreads_its_subfolders(
    tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    flags = dir_flags(tmp_path)
    if flags is None:
        pytest.skip(f"{tmp_path}'s filesystem has no inode flags (not ext2/3/4)")
    mp = mount(store.url, cache)
    rels = [r for r in tree.files if tree.size(r) <= 65536][:40]
    for rel in rels:
        assert checked_read(mp, tree, rel).ok == [rel]
    data = only_folder(cache) / "data"
    assert sorted(p.name for p in data.iterdir()) == [f"{i:02x}" for i in range(256)]
    data_flags = dir_flags(data)
    assert data_flags is not None and data_flags & FS_TOPDIR_FL, f"flags {data_flags!r}"
    # The fan-out folders themselves are ordinary: only their parent is a top.
    assert not (dir_flags(data / "00") or 0) & FS_TOPDIR_FL
    files = [p for p in data.rglob("*") if p.is_file() and p.stat().st_size]
    assert len(files) >= len(rels) - 1  # an empty file gets no data


def test_top_directory_flag_is_a_no_op_where_unsupported(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) to try")
    target = Path(os.path.realpath(shm)) / f"cachefs-test-{os.getpid()}"
    target.mkdir()
    try:
        # tmpfs has no FS_TOPDIR_FL: the answer is False, not an exception.
        assert mark_top_directory(target) is False
    finally:
        target.rmdir()
    assert mark_top_directory(tmp_path) is (dir_flags(tmp_path) is not None)
