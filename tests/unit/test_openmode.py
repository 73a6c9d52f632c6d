"""How an open is answered: the rule of fs/openmode.py that keeps the kernel's
per-inode I/O modes from ever conflicting."""

from __future__ import annotations

from collections import Counter

import pytest

from cachefs.fs.openmode import PASSTHROUGH_OPS, HandleMode, KernelOps, choose_mode
from cachefs.kernel.wire import OpenFlag

DAEMON, PAGE_CACHE, PASSTHROUGH = HandleMode.DAEMON, HandleMode.PAGE_CACHE, HandleMode.PASSTHROUGH


def handles(**counts: int) -> Counter[HandleMode]:
    return Counter({HandleMode[name.upper()]: n for name, n in counts.items()})


@pytest.mark.parametrize("complete, passthrough", [(False, True), (False, False), (True, False)])
def test_partial_files_and_mounts_without_passthrough_use_the_page_cache(complete: bool, passthrough: bool) -> None:
    for open_now in (handles(), handles(page_cache=2), handles(passthrough=1)):
        assert choose_mode(complete, passthrough, open_now) is PAGE_CACHE


def test_a_complete_file_opens_in_passthrough_beside_passthrough_handles_only() -> None:
    assert choose_mode(True, True, handles()) is PASSTHROUGH
    assert choose_mode(True, True, handles(passthrough=3)) is PASSTHROUGH
    # Any page-cached handle open on the inode: passthrough would fail with EIO.
    assert choose_mode(True, True, handles(page_cache=1)) is PAGE_CACHE
    assert choose_mode(True, True, handles(page_cache=1, passthrough=0)) is PAGE_CACHE


def test_daemon_handles_keep_new_opens_with_the_daemon() -> None:
    # Registering the backing file failed while passthrough handles were
    # open: neither passthrough nor the page cache may join them.
    assert choose_mode(True, True, handles(daemon=1)) is DAEMON
    assert choose_mode(True, True, handles(daemon=1, passthrough=2)) is DAEMON


def test_modes_map_to_the_kernels_open_flags() -> None:
    assert DAEMON.open_flags == OpenFlag.DIRECT_IO
    assert PAGE_CACHE.open_flags == OpenFlag.KEEP_CACHE
    assert PASSTHROUGH.open_flags == OpenFlag.PASSTHROUGH
    # The xattr and the stats show these names.
    assert [m.value for m in HandleMode] == ["daemon", "page-cache", "passthrough"]


def test_kernel_ops_of_a_passthrough_inode() -> None:
    assert not KernelOps.NONE
    assert PASSTHROUGH_OPS == KernelOps.READ | KernelOps.MMAP
