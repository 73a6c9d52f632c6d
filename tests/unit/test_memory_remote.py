"""The unit tests' in-memory remote keeps the Remote contract the layers rely on."""

from __future__ import annotations

import pytest
import trio

from cachefs.remote.base import NotFound, Pin, VersionChanged
from memory_remote import PIECE, MemoryRemote


async def read(remote: MemoryRemote, key: str, start: int, end: int, version: str = "",
               pin: Pin | None = None) -> bytes:
    async with remote.read_range(key, start, end, version, pin) as pieces:
        return b"".join([p async for p in pieces])


def test_listing_implies_directories_and_stat_sees_them() -> None:
    remote = MemoryRemote({"a/b/c.txt": b"x", "a/d.bin": b"yy", "top": b""})

    async def main() -> None:
        root = await remote.list_dir("")
        assert [(e.name, e.is_dir) for e in root] == [("a", True), ("top", False)]
        a = await remote.list_dir("a")
        assert [(e.name, e.is_dir, e.size) for e in a] == [("b", True, 0), ("d.bin", False, 2)]
        assert (await remote.stat("a/b")).is_dir
        with pytest.raises(NotFound):
            await remote.list_dir("nope")
        with pytest.raises(NotFound):
            await remote.stat("a/zz")

    trio.run(main)


def test_ranges_are_exact_and_a_new_version_is_refused() -> None:
    data = bytes(range(256)) * 1000
    remote = MemoryRemote({"f": data})

    async def main() -> None:
        entry = await remote.stat("f")
        pin = Pin(len(data))
        assert await read(remote, "f", 10, PIECE * 2 + 5, entry.version, pin) == data[10:PIECE * 2 + 5]
        assert pin.validator is not None
        remote.put("f", data[::-1])
        with pytest.raises(VersionChanged):
            await read(remote, "f", 0, 10, entry.version)
        with pytest.raises(VersionChanged):
            await read(remote, "f", 0, 10, "", pin)
        assert remote.calls["read_range"] == 3

    trio.run(main)
