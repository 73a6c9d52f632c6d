"""The journal's flushes on demand: `settle` returns only once every chunk
queued before it is recorded and its use released, so the evictor can wait
for files that were closed a moment ago instead of overshooting the cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from cachefs.cache import journal as journal_module
from cachefs.cache.db import CacheDB
from cachefs.cache.journal import Journal
from cachefs.cache.objects import CachedObject

CHUNK = 64 * 1024


def make_object(tmp_path: Path, name: str, nchunks: int) -> CachedObject:
    path = tmp_path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, os.urandom(nchunks * CHUNK), 0)
    return CachedObject(key=name, version="v1", size=nchunks * CHUNK, mtime=0.0,
                        chunk_size=CHUNK, path=path, fd=fd)


def test_settle_returns_once_queued_chunks_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches that would gather for a minute: settle must not wait that out.
    monkeypatch.setattr(journal_module, "BATCH_SECONDS", 60.0)
    db = CacheDB(tmp_path / "cache.db")
    objs = [make_object(tmp_path, f"f{i}", 2) for i in range(3)]
    released: list[str] = []

    def release(obj: CachedObject) -> None:
        obj.uses -= 1
        released.append(obj.key)

    journal = Journal(db, release)

    async def main() -> None:
        with trio.fail_after(10):
            await scenario()

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            await journal.settle()  # nothing queued: returns at once
            for obj in objs[:2]:
                for idx in range(2):
                    journal.add(obj, idx)
            assert [journal.holding(o) for o in objs] == [2, 2, 0]
            await journal.settle()
            # Recorded and released, without waiting for the batch timer.
            assert [db.find_object(o.key, "v1") is not None for o in objs] == [True, True, False]
            assert db.find_object("f0", "v1").complete
            assert sorted(released) == ["f0", "f0", "f1", "f1"]
            assert [journal.holding(o) for o in objs] == [0, 0, 0]
            assert all(o.uses == 0 for o in objs)

            # Chunks queued while a flush is under way wait for the next one.
            journal.add(objs[2], 0)
            first = trio.Event()

            async def settle_first() -> None:
                await journal.settle()
                first.set()

            nursery.start_soon(settle_first)
            await trio.lowlevel.checkpoint()
            journal.add(objs[2], 1)
            await journal.settle()
            await first.wait()
            assert db.find_object("f2", "v1").complete
            assert journal.holding(objs[2]) == 0
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        db.close()
        for obj in objs:
            obj.close()
