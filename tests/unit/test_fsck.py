"""fsck on a cache folder made by the cache itself, damaged by hand: what it
finds, what --repair drops, and that a repaired folder serves true bytes."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from cachefs.cache import Cache, CacheState, folder_lock
from cachefs.maint.fsck import check_folder, recorded_source, source_of
from cachefs.maint.records import FolderState, ProblemKind, data_path
from memory_remote import MemoryRemote

CH = 64 * 1024
FILES = {"whole": bytes(range(256)) * 1024, "short": b"s" * (2 * CH + 5), "part": b"p" * (3 * CH)}


async def read(cache: Cache, remote: MemoryRemote, key: str, size: int) -> bytes:
    stored = remote.objects[key]
    obj = await cache.acquire(key, stored.version, len(stored.data), stored.mtime)
    try:
        return bytes(await cache.read(obj, 0, size))
    finally:
        cache.release(obj)


def fill(open_cache, remote: MemoryRemote) -> Path:
    async def main() -> Path:
        async with open_cache(remote, chunk_size=CH) as cache:
            for key, body in FILES.items():
                await read(cache, remote, key, CH if key == "part" else len(body))
            return cache.folder

    return trio.run(main)


def test_fsck_finds_and_repairs_damage_then_the_cache_reads_through(open_cache) -> None:
    remote = MemoryRemote(FILES)
    folder = fill(open_cache, remote)
    assert recorded_source(folder) == remote.source
    assert source_of(folder, ["elsewhere", remote.source]) == remote.source
    assert check_folder(folder).state is FolderState.CLEAN

    short = next(p for p in (folder / "data").rglob("*")
                 if p.is_file() and p.stat().st_size == len(FILES["short"]))
    os.truncate(short, CH)
    orphan = data_path(folder, "ab" + "0" * 38)
    orphan.write_bytes(b"left over")

    report = check_folder(folder)
    assert report.state is FolderState.DIRTY
    assert sorted((p.kind.value, p.key) for p in report.problems) == [
        (ProblemKind.ORPHAN_FILE.value, None), (ProblemKind.WRONG_SIZE.value, "short")]
    assert report.objects == 3

    repaired = check_folder(folder, repair=True)
    assert repaired.state is FolderState.REPAIRED
    assert not orphan.exists() and short.stat().st_size == len(FILES["short"])
    assert check_folder(folder).state is FolderState.CLEAN

    async def reread() -> None:
        async with open_cache(remote, chunk_size=CH) as cache:
            version = remote.objects["short"].version
            assert cache.state("short", version) == (CacheState.ABSENT, 0)  # its chunks were dropped
            assert await read(cache, remote, "short", len(FILES["short"])) == FILES["short"]
            assert cache.state("whole", remote.objects["whole"].version)[0] is CacheState.COMPLETE

    trio.run(reread)


def test_a_folder_in_use_is_busy_and_never_repaired(open_cache) -> None:
    folder = fill(open_cache, MemoryRemote(FILES))
    with folder_lock(folder):  # as a running daemon holds it
        assert check_folder(folder, repair=True).state is FolderState.BUSY
        forced = check_folder(folder, force=True)
        assert forced.state is FolderState.BUSY and forced.objects == 3
