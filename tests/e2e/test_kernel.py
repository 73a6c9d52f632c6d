"""The kernel layer's unprivileged mount path: fusermount3 mounts and hands
back the /dev/fuse descriptor (the wire format's tests are in tests/unit)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cachefs.kernel import find_mount, mounting
from cachefs.kernel import wire


@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fusermount3 not installed")
def test_fusermount3_hands_back_the_device_fd(tmp_path: Path) -> None:
    """The path an unprivileged user takes: fusermount3 mounts and passes the fd."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    fd = mounting._mount_with_fusermount(str(mp), mounting.MountOptions(source="http://example.invalid/"))
    try:
        info = find_mount(str(mp))
        assert info is not None and info.fstype == mounting.FSTYPE
        assert info.source == "http://example.invalid/"
        # The fd is a FUSE device: the kernel's INIT request is waiting on it.
        header = wire.InHeader.parse(os.read(fd, 1 << 20))
        assert header.opcode == wire.Opcode.INIT
    finally:
        mounting.unmount(str(mp), lazy=True)
        os.close(fd)
    assert find_mount(str(mp)) is None
