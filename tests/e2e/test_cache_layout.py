"""The data folder's layout: 256 fan-out folders, spread over ext4's block
groups by the top-directory flag (see cachefs/cache/fanout.py for why a
cold read of many small files depends on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from disk import dir_flags
from reliability import checked_read, only_folder
from mounter import Mounter, Tree

from cachefs.cache.fanout import FS_TOPDIR_FL
from cachefs.localstore import NginxStore


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
