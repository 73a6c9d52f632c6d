"""The data folder's fan-out: the top-directory flag where the file system has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachefs.cache.fanout import FANOUT, FS_TOPDIR_FL, make_data_dir, mark_top_directory
from disk import dir_flags


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


def test_the_data_folder_has_its_subfolders(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data_dir(data)
    make_data_dir(data)  # again: nothing to do, no error
    assert sorted(p.name for p in data.iterdir()) == [f"{i:02x}" for i in range(FANOUT)]
    flags = dir_flags(data)
    if flags is not None:  # ext4 and friends: only the top is marked
        assert flags & FS_TOPDIR_FL and not (dir_flags(data / "00") or 0) & FS_TOPDIR_FL
