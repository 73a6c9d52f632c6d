"""Kept backing ids: the id of a closed complete small file serves its next
open, even from a new inode, and is closed when it must be: over its
bounds, when its version is superseded, when its path is evicted, and when
the cache needs the room it holds."""

from __future__ import annotations

import errno
import functools
import os

import pytest
import trio

from cachefs.cache import CachedObject
from cachefs.fs.filesystem import STATE_XATTR
from cachefs.fs.kept import KeptBacking, KeptBackings
from cachefs.kernel import FuseError
from cachefs.kernel.wire import ROOT_ID, OpenFlag
from fake_kernel import FakeBackingFiles
from memory_remote import MemoryRemote

CHUNK = 64 * 1024
SMALL = b"small file\n" * 100
TIMEOUT_S = 20


@pytest.fixture
def stack(open_stack):
    return functools.partial(open_stack, chunk_size=CHUNK)


def run(main) -> None:
    async def bounded() -> None:
        with trio.fail_after(TIMEOUT_S):
            await main()

    trio.run(bounded)


async def ino_of(fs, path: str) -> int:
    parent = ROOT_ID
    for name in path.split("/"):
        parent = (await fs.lookup(parent, name.encode())).attr.ino
    return parent


async def open_and_close(fs, path: str) -> int:
    """Open `path`, check it is passed through, close it; returns its backing id."""
    ino = await ino_of(fs, path)
    opened = fs.open_now(ino, os.O_RDONLY) or await fs.open(ino, os.O_RDONLY)
    assert opened.flags == OpenFlag.PASSTHROUGH
    fs.release(ino, opened.fh)
    return opened.backing_id


def fake_object(key: str, size: int) -> CachedObject:
    return CachedObject(key=key, version="v1", size=size, mtime=0.0, chunk_size=CHUNK,
                        file="/nonexistent", fd=-1)


def test_the_kept_set_lets_go_of_the_oldest_over_its_count_or_bytes() -> None:
    kept = KeptBackings(max_count=2, max_bytes=100)
    a, b, c = (KeptBacking(fake_object(k, 40), i) for i, k in enumerate("abc", 1))
    assert kept.keep(a) == [] and kept.keep(b) == []
    assert kept.keep(c) == [a]  # a third is one too many
    assert len(kept) == 2 and kept.bytes == 80
    big = KeptBacking(fake_object("d", 70), 4)
    assert kept.keep(big) == [b, c]  # 150 bytes: both older ones go
    assert kept.take("d", "v1") is big and kept.bytes == 0
    assert kept.keep(KeptBacking(fake_object("e", 101), 5))[0].backing_id == 5  # never fits
    # A second id for a version already kept is handed back, not kept.
    kept.keep(a)
    twin = KeptBacking(fake_object("a", 40), 6)
    assert kept.keep(twin) == [twin]
    # A new version of a key replaces the old one.
    newer = fake_object("a", 40)
    newer.version = "v2"
    assert kept.keep(KeptBacking(newer, 7)) == [a]
    assert kept.take("a", "v1") is None and kept.take("a", "v2").backing_id == 7


def test_a_reopen_uses_the_kept_id_with_no_new_registration_even_from_a_new_inode(stack) -> None:
    backing = FakeBackingFiles()
    remote = MemoryRemote({"small.txt": SMALL})

    async def main() -> None:
        async with stack(remote, passthrough=backing) as daemon:
            fs = daemon.fs
            ino = await ino_of(fs, "small.txt")
            assert await open_and_close(fs, "small.txt") == 1
            assert backing.open_ids == {1}
            assert (fs.stats.backing_ids_open, fs.stats.backing_ids_kept) == (0, 1)
            assert fs.getxattr(ino, STATE_XATTR) == b"complete"

            again = fs.open_now(ino, os.O_RDONLY)
            assert again.flags == OpenFlag.PASSTHROUGH and again.backing_id == 1
            assert (fs.stats.backing_ids_open, fs.stats.backing_ids_kept, fs.stats.kept_reopens) == (1, 0, 1)
            assert fs.getxattr(ino, STATE_XATTR) == b"passthrough opens=1"
            assert await fs.read(ino, again.fh, 0, len(SMALL)) == SMALL
            fs.release(ino, again.fh)

            # The kernel forgets the inode (drop_caches); a new one gets the same id.
            fs.forget(ino, 2)
            assert fs.inodes.get(ino) is None
            new = await ino_of(fs, "small.txt")
            assert new != ino
            assert await open_and_close(fs, "small.txt") == 1
            assert backing.open_ids == {1} and fs.stats.kept_reopens == 2
            assert remote.calls["read_range"] == 1

    run(main)


def test_a_superseded_version_closes_its_kept_id_and_the_new_one_reads_its_own_bytes(stack) -> None:
    backing = FakeBackingFiles()
    remote = MemoryRemote({"small.txt": SMALL})

    async def main() -> None:
        async with stack(remote, passthrough=backing, metadata_ttl=0) as daemon:
            fs = daemon.fs
            old = await ino_of(fs, "small.txt")
            assert await open_and_close(fs, "small.txt") == 1
            remote.put("small.txt", b"version two")
            with pytest.raises(FuseError) as e:
                await fs.open(old, os.O_RDONLY)
            assert e.value.errno == errno.ESTALE
            assert backing.open_ids == set() and fs.stats.backing_ids_kept == 0
            new = await ino_of(fs, "small.txt")
            opened = await fs.open(new, os.O_RDONLY)
            assert opened.flags == OpenFlag.PASSTHROUGH and opened.backing_id == 2
            assert await fs.read(new, opened.fh, 0, 100) == b"version two"
            fs.release(new, opened.fh)
            assert backing.open_ids == {2}

    run(main)


def test_kept_ids_are_bounded_in_number(stack) -> None:
    backing = FakeBackingFiles()
    remote = MemoryRemote({"a/x": b"a" * 100, "b/x": b"b" * 100, "c/x": b"c" * 100})

    async def main() -> None:
        async with stack(remote, passthrough=backing) as daemon:
            fs = daemon.fs
            fs.kept.max_count = 2
            ids = [await open_and_close(fs, path) for path in ("a/x", "b/x", "c/x")]
            assert ids == [1, 2, 3]
            assert backing.open_ids == {2, 3} and fs.stats.backing_ids_kept == 2

    run(main)


def test_evicting_a_path_closes_its_kept_id_and_removes_its_file(stack) -> None:
    backing = FakeBackingFiles()
    remote = MemoryRemote({"small.txt": SMALL, "other.txt": b"other"})

    async def main() -> None:
        async with stack(remote, passthrough=backing) as daemon:
            fs = daemon.fs
            await open_and_close(fs, "small.txt")
            await open_and_close(fs, "other.txt")
            assert backing.open_ids == {1, 2}
            # Only what is recorded can be evicted: the journal batches records.
            while (result := await fs.evict(["small.txt"])).files == 0:
                await trio.sleep(0.02)
            assert result.files == 1 and result.skipped == []
            assert backing.open_ids == {2}  # the other file's id stays kept
            assert fs.getxattr(await ino_of(fs, "small.txt"), STATE_XATTR) == b"absent"
            assert await open_and_close(fs, "small.txt") == 3
            assert remote.calls["read_range"] == 3

    run(main)


def test_the_cache_closes_kept_ids_when_it_needs_their_room(stack) -> None:
    backing = FakeBackingFiles()
    size = 40 * 1024
    remote = MemoryRemote({f"{d}/x": d.encode() * size for d in "abc"})

    async def main() -> None:
        async with stack(remote, passthrough=backing, cap_bytes=100 * 1024) as daemon:
            fs = daemon.fs
            await open_and_close(fs, "a/x")
            await open_and_close(fs, "b/x")
            while daemon.cache.usage().objects_complete < 2:
                await trio.sleep(0.02)
            assert backing.open_ids == {1, 2}
            # 120 KiB would be over the cap, and both others are kept open.
            ino = await ino_of(fs, "c/x")
            opened = await fs.open(ino, os.O_RDONLY)
            assert opened.flags == OpenFlag.PASSTHROUGH
            assert await fs.read(ino, opened.fh, 0, size) == b"c" * size
            assert backing.open_ids == {opened.backing_id} and fs.stats.backing_ids_kept == 0
            assert daemon.cache.usage().bytes_cached <= 100 * 1024
            fs.release(ino, opened.fh)

    run(main)
