"""The FUSE wire format: struct layouts against the kernel's ABI, and packing."""

from __future__ import annotations

import pytest

from cachefs.kernel import wire


def test_struct_sizes_match_the_kernel_abi() -> None:
    # Sizes from include/uapi/linux/fuse.h (7.45), as measured in design.md.
    assert wire.IN_HEADER.size == 40
    assert wire.OUT_HEADER.size == 16
    assert wire.INIT_OUT.size == 64
    assert wire.OPEN_OUT.size == 16
    assert wire.ATTR.size == 88
    assert wire.ENTRY_OUT.size + wire.ATTR.size == 128
    assert wire.ATTR_OUT.size + wire.ATTR.size == 104
    assert wire.READ_IN.size == 40
    assert wire.KSTATFS.size == 80
    assert wire.BACKING_MAP.size == 16
    assert wire.FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501
    assert wire.FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502
    assert wire.InitFlag.PASSTHROUGH >> 32 == 0x20
    assert wire.InitFlag.INIT_EXT == 1 << 30
    assert (wire.OpenFlag.DIRECT_IO, wire.OpenFlag.KEEP_CACHE, wire.OpenFlag.PASSTHROUGH) == (1, 2, 0x80)


@pytest.mark.parametrize("name", [b"a", b"seven77", b"eight888", b"x" * 255])
def test_dirents_are_padded_to_eight_bytes(name: bytes) -> None:
    packed = wire.pack_dirent(42, 7, wire.DirentType.REG, name)
    assert len(packed) % 8 == 0
    ino, off, namelen, dtype = wire.DIRENT.unpack_from(packed)
    assert (ino, off, namelen, dtype) == (42, 7, len(name), wire.DirentType.REG)
    assert packed[wire.DIRENT.size : wire.DIRENT.size + namelen] == name
    assert set(packed[wire.DIRENT.size + namelen :]) <= {0}


def test_attr_carries_nanoseconds() -> None:
    packed = wire.Attr(ino=5, size=10, mode=0o100444, nlink=1, mtime=1700000000.25).pack()
    fields = wire.ATTR.unpack(packed)
    assert fields[0] == 5 and fields[1] == 10
    assert fields[4] == 1700000000  # mtime seconds
    assert abs(fields[7] - 250_000_000) < 1000  # mtime nanoseconds


def test_reply_header_counts_itself() -> None:
    length, error, unique = wire.OUT_HEADER.unpack(wire.reply_header(9, -2, 100))
    assert (length, error, unique) == (116, -2, 9)
