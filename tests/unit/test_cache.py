"""The cache through its front door, against the in-memory remote: what it
fetches, keeps, evicts and forgets, and what it finds again after a restart.

Small chunks (64 KiB, the unit tier's CHUNK) keep every object a few chunks
long and the tests fast; `open_cache` is the unit tier's fixture (conftest).
"""

from __future__ import annotations

import ast
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import cachefs
from cachefs.cache import Cache, CacheBusy, CachedObject, CacheState, Usage
from cachefs.remote import RemoteError, VersionChanged
from memory_remote import MemoryRemote

CH = 64 * 1024


def data(n: int, seed: int = 0) -> bytes:
    """`n` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


def run(open_cache, remote: MemoryRemote, body: Callable[[Cache], Awaitable[None]],
        **options: object) -> None:
    async def main() -> None:
        with trio.fail_after(20):
            async with open_cache(remote, chunk_size=CH, **options) as cache:
                await body(cache)

    trio.run(main)


async def acquire(cache: Cache, remote: MemoryRemote, key: str) -> CachedObject:
    """The object of the version the remote has now."""
    stored = remote.objects[key]
    return await cache.acquire(key, stored.version, len(stored.data), stored.mtime)


async def read_whole(cache: Cache, remote: MemoryRemote, key: str) -> bytes:
    obj = await acquire(cache, remote, key)
    try:
        return bytes(await cache.read(obj, 0, obj.size))
    finally:
        cache.release(obj)


def state(cache: Cache, remote: MemoryRemote, key: str) -> tuple[CacheState, int]:
    return cache.state(key, remote.objects[key].version)


async def until(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds: the journal records in the background."""
    while not check():
        await trio.sleep(0.01)


async def recorded(cache: Cache, remote: MemoryRemote, key: str) -> None:
    """Wait until the object is closed and all of it recorded."""
    version = remote.objects[key].version
    await until(lambda: cache.peek(key, version) is None
                and cache.state(key, version)[0] is CacheState.COMPLETE)


def test_acquire_read_release(open_cache) -> None:
    body = data(3 * CH + 100)
    remote = MemoryRemote({"dir/file.bin": body})

    async def scenario(cache: Cache) -> None:
        obj = await acquire(cache, remote, "dir/file.bin")
        assert obj.state is CacheState.ABSENT
        # A read in the middle fetches only the chunks it covers.
        assert bytes(await cache.read(obj, CH + 10, 100)) == body[CH + 10:CH + 110]
        assert obj.present == {1} and obj.state is CacheState.PARTIAL
        assert bytes(await cache.read(obj, 0, obj.size)) == body
        assert obj.complete
        # A second user shares the one object.
        again = await acquire(cache, remote, "dir/file.bin")
        assert again is obj
        cache.release(again)
        cache.release(obj)
        await recorded(cache, remote, "dir/file.bin")
        assert state(cache, remote, "dir/file.bin") == (CacheState.COMPLETE, len(body))
        assert remote.calls["read_range"] == 4  # each chunk once
        # Complete now: opened without a wait, and read without the remote.
        obj = cache.acquire_complete("dir/file.bin", remote.objects["dir/file.bin"].version, len(body), 0.0)
        assert obj is not None
        assert bytes(await cache.read(obj, 0, obj.size)) == body
        cache.release(obj)
        assert remote.calls["read_range"] == 4
        assert cache.stats().bytes_fetched == len(body)

    run(open_cache, remote, scenario)


def test_acquire_complete_refuses_what_is_not_complete(open_cache) -> None:
    remote = MemoryRemote({"f": data(2 * CH)})

    async def scenario(cache: Cache) -> None:
        version = remote.objects["f"].version
        assert cache.acquire_complete("f", version, 2 * CH, 0.0) is None  # nothing cached
        obj = await acquire(cache, remote, "f")
        await cache.read(obj, 0, 10)
        cache.release(obj)
        await until(lambda: cache.peek("f", version) is None)
        assert cache.state("f", version) == (CacheState.PARTIAL, CH)
        assert cache.acquire_complete("f", version, 2 * CH, 0.0) is None  # part of it

    run(open_cache, remote, scenario)


def test_a_version_change_mid_file_discards_the_cached_part(open_cache, cache_dir: Path) -> None:
    old, new = data(3 * CH, seed=1), data(3 * CH, seed=2)
    remote = MemoryRemote({"f": old})
    old_version = remote.objects["f"].version
    discarded: list[tuple[str, str]] = []

    async def scenario(cache: Cache) -> None:
        cache.on_discard.append(lambda key, version: discarded.append((key, version)))
        obj = await acquire(cache, remote, "f")
        assert bytes(await cache.read(obj, 0, CH)) == old[:CH]
        await until(lambda: cache.state("f", old_version)[1] == CH)  # chunk 0 recorded
        new_version = remote.put("f", new)

        with pytest.raises(VersionChanged):
            await cache.read(obj, CH, CH)
        assert discarded == [("f", old_version)]
        # The open handle still reads what it has, all of the old version,
        # and never a byte of the new one.
        assert bytes(await cache.read(obj, 0, CH)) == old[:CH]
        with pytest.raises(VersionChanged):
            await cache.read(obj, 2 * CH, 10)
        cache.release(obj)

        # Its record and data file are gone: opening the old version again
        # starts from nothing.
        await until(lambda: cache.state("f", old_version) == (CacheState.ABSENT, 0))
        again = await cache.acquire("f", old_version, len(old), 0.0)
        assert again is not obj and again.present == set()
        cache.release(again)
        # The new version comes whole from the remote.
        assert await read_whole(cache, remote, "f") == new
        await recorded(cache, remote, "f")
        assert cache.state("f", new_version) == (CacheState.COMPLETE, len(new))

    run(open_cache, remote, scenario)
    data_files = [p for p in cache_dir.rglob("data/*/*") if p.stat().st_size]
    assert len(data_files) == 1  # the new version's only


def test_eviction_keeps_the_cache_under_its_cap(open_cache) -> None:
    files = {f"f{i}": data(CH, seed=i) for i in range(6)}
    remote = MemoryRemote(files)

    async def scenario(cache: Cache) -> None:
        for key, body in files.items():
            assert await read_whole(cache, remote, key) == body
            assert cache.usage().bytes_cached <= 2 * CH
        await recorded(cache, remote, "f5")
        # The least recently opened went first.
        assert [state(cache, remote, k)[0] for k in files] == [CacheState.ABSENT] * 4 + [CacheState.COMPLETE] * 2
        assert cache.stats().cap_bytes == 2 * CH

    run(open_cache, remote, scenario, cap_bytes=2 * CH)


def test_an_open_object_is_not_evicted(open_cache) -> None:
    files = {f"f{i}": data(CH, seed=i) for i in range(3)}
    remote = MemoryRemote(files)

    async def scenario(cache: Cache) -> None:
        held = await acquire(cache, remote, "f0")
        await cache.read(held, 0, CH)
        for key in ("f1", "f2"):
            assert await read_whole(cache, remote, key) == files[key]
        assert held.complete and state(cache, remote, "f0")[0] is not CacheState.ABSENT
        result = await cache.evict([""])
        assert result.skipped == ["f0"]
        cache.release(held)

    run(open_cache, remote, scenario, cap_bytes=CH)


def test_pin_keeps_a_file_from_eviction_until_unpinned(open_cache) -> None:
    files = {"keep/a": data(CH, 1), "keep/b": data(CH, 2), "other": data(CH, 3)}
    remote = MemoryRemote(files)

    async def scenario(cache: Cache) -> None:
        for key in files:
            await read_whole(cache, remote, key)
        for key in files:
            await recorded(cache, remote, key)
        await cache.pin(["keep/a", "keep/b"])
        assert cache.usage().pinned == 2

        result = await cache.evict([""])
        assert (result.files, result.bytes) == (1, CH)
        assert sorted(result.skipped) == ["keep/a", "keep/b"]
        assert state(cache, remote, "other")[0] is CacheState.ABSENT
        assert state(cache, remote, "keep/a")[0] is CacheState.COMPLETE

        assert await cache.unpin("keep") == 2  # a directory unpins what is under it
        assert cache.usage().pinned == 0
        result = await cache.evict(["keep"])
        assert (result.files, result.skipped) == (2, [])
        assert cache.usage() == Usage(0, 0, 0, 0)

    run(open_cache, remote, scenario)


def test_usage_counts_recorded_bytes_complete_and_partial_objects(open_cache) -> None:
    remote = MemoryRemote({"whole": data(CH + 5), "part": data(3 * CH), "empty": b""})

    async def scenario(cache: Cache) -> None:
        assert cache.usage() == Usage(0, 0, 0, 0)
        assert await read_whole(cache, remote, "whole") == remote.objects["whole"].data
        obj = await acquire(cache, remote, "part")
        await cache.read(obj, 2 * CH, 1)
        cache.release(obj)
        assert await read_whole(cache, remote, "empty") == b""
        await cache.pin(["whole"])
        await recorded(cache, remote, "whole")
        await until(lambda: cache.usage().objects_partial == 1)
        assert cache.usage() == Usage(bytes_cached=2 * CH + 5, objects_complete=1, objects_partial=1, pinned=1)
        assert cache.usage().as_dict() == {"bytes_cached": 2 * CH + 5, "objects_complete": 1,
                                           "objects_partial": 1, "pinned": 1}

    run(open_cache, remote, scenario)


def test_a_reopened_cache_finds_its_complete_files(open_cache) -> None:
    body = data(2 * CH + 7)
    remote = MemoryRemote({"a/f": body, "a/g": data(3 * CH)})

    async def fill(cache: Cache) -> None:
        assert await read_whole(cache, remote, "a/f") == body
        obj = await acquire(cache, remote, "a/g")
        await cache.read(obj, 0, 1)
        cache.release(obj)
        # No waiting: the block's end records what was fetched.

    run(open_cache, remote, fill)
    fetched = remote.calls["read_range"]

    async def reopened(cache: Cache) -> None:
        version = remote.objects["a/f"].version
        obj = cache.acquire_complete("a/f", version, len(body), 0.0)
        assert obj is not None and obj.complete
        assert bytes(await cache.read(obj, 0, obj.size)) == body
        cache.release(obj)
        assert cache.state("a/g", remote.objects["a/g"].version) == (CacheState.PARTIAL, CH)
        assert cache.usage().objects_complete == 1

    run(open_cache, remote, reopened)
    assert remote.calls["read_range"] == fetched  # nothing fetched again


def test_a_failed_remote_read_does_not_poison_the_object(open_cache) -> None:
    body = data(2 * CH)
    remote = MemoryRemote({"f": body})

    async def scenario(cache: Cache) -> None:
        obj = await acquire(cache, remote, "f")
        remote.fail_next("read_range", RemoteError("the remote hiccupped"))
        with pytest.raises(RemoteError, match="hiccupped"):
            await cache.read(obj, 0, 10)
        assert obj.present == set() and not obj.inflight and not obj.stale
        # The same handle reads again, and gets the bytes.
        assert bytes(await cache.read(obj, 0, obj.size)) == body
        cache.release(obj)
        await recorded(cache, remote, "f")

    run(open_cache, remote, scenario)


def test_an_error_in_the_block_comes_out_as_itself(open_cache) -> None:
    remote = MemoryRemote({"f": data(CH)})

    async def scenario(cache: Cache) -> None:
        await read_whole(cache, remote, "f")
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        run(open_cache, remote, scenario)
    # What was fetched before the error was still recorded.
    run(open_cache, remote, lambda cache: _assert_complete(cache, remote, "f"))


async def _assert_complete(cache: Cache, remote: MemoryRemote, key: str) -> None:
    assert state(cache, remote, key)[0] is CacheState.COMPLETE


def test_a_folder_in_use_is_busy_and_a_failed_first_open_leaves_nothing(
    open_cache, cache_dir: Path
) -> None:
    remote = MemoryRemote({"f": data(10)})

    async def scenario(cache: Cache) -> None:
        with pytest.raises(CacheBusy):
            async with open_cache(remote):
                pass
        assert cache.folder.parent == cache_dir
        cache.remove_when_closed()  # as a mount that fails to start does

    run(open_cache, remote, scenario)
    assert os.listdir(cache_dir) == []


def test_the_rest_of_the_package_uses_only_the_front_door() -> None:
    """Outside cachefs/cache, only `cachefs.cache` itself is imported, never
    one of its parts (the tests may look behind it)."""
    package = Path(cachefs.__file__).parent
    behind: list[str] = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "cache"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            behind += [f"{path.relative_to(package)}: {n}" for n in names if n.startswith("cachefs.cache.")]
    assert behind == []


def test_a_data_file_whose_subfolder_is_gone_makes_it_again(open_cache) -> None:
    body = data(CH + 5, seed=3)
    remote = MemoryRemote({"a.bin": body})

    async def scenario(cache: Cache) -> None:
        # A new cache makes its 256 subfolders in a worker thread once it
        # runs; wait for them, then take them away, as an emptied folder would.
        await until(lambda: len(list(cache.data_dir.iterdir())) == 256)
        for sub in cache.data_dir.iterdir():
            sub.rmdir()
        assert bytes(await read_whole(cache, remote, "a.bin")) == body
        assert len(list(cache.data_dir.iterdir())) == 1

    run(open_cache, remote, scenario)


def test_a_file_closed_a_moment_ago_is_evicted_not_skipped_as_open(open_cache) -> None:
    body = data(CH // 2, seed=4)
    remote = MemoryRemote({"a.bin": body})

    async def scenario(cache: Cache) -> None:
        # Its chunk waits to be recorded (the journal batches): it must not
        # count as open once the reader has closed it.
        assert bytes(await read_whole(cache, remote, "a.bin")) == body
        result = await cache.evict(["a.bin"])
        assert (result.files, result.skipped) == (1, [])
        assert state(cache, remote, "a.bin")[0] is CacheState.ABSENT

    run(open_cache, remote, scenario)
