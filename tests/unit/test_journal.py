"""The journal's flushes on demand: `settle` returns only once every chunk
queued before it is recorded and its use released, so the evictor can wait
for files that were closed a moment ago instead of overshooting the cap."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from cachefs.cache import journal as journal_module
from cachefs.cache.db import CacheDB
from cachefs.cache.journal import Journal
from cachefs.cache.objects import CachedObject
from cachefs.cache.table import ObjectTable

CHUNK = 64 * 1024


def make_object(tmp_path: Path, name: str, nchunks: int) -> CachedObject:
    path = tmp_path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, os.urandom(nchunks * CHUNK), 0)
    return CachedObject(key=name, version="v1", size=nchunks * CHUNK, mtime=0.0,
                        chunk_size=CHUNK, path=path, fd=fd)


def held(*objs: CachedObject) -> ObjectTable:
    """A table holding one use of each object, as an open handle does."""
    table = ObjectTable(on_closed=lambda obj: None)
    for obj in objs:
        table.add(obj)
    return table


def test_settle_returns_once_queued_chunks_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches that would gather for a minute: settle must not wait that out.
    monkeypatch.setattr(journal_module, "BATCH_SECONDS", 60.0)
    db = CacheDB(tmp_path / "cache.db")
    objs = [make_object(tmp_path, f"f{i}", 2) for i in range(3)]
    table = held(*objs)
    journal = Journal(db, table)

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
            assert [table.uses(o) for o in objs] == [3, 3, 1]
            await journal.settle()
            # Recorded and released, without waiting for the batch timer.
            assert [db.find_object(o.key, "v1") is not None for o in objs] == [True, True, False]
            assert db.find_object("f0", "v1").complete
            assert [journal.holding(o) for o in objs] == [0, 0, 0]
            assert [table.uses(o) for o in objs] == [1, 1, 1]  # the test's own

            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        db.close()
        for obj in objs:
            obj.close()


def test_settle_during_a_flush_waits_for_the_flush_that_records_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = CacheDB(tmp_path / "cache.db")
    obj = make_object(tmp_path, "f", 2)
    journal = Journal(db, held(obj))
    # The first flush's fsync blocks until the test lets it go.
    entered, gate = threading.Event(), threading.Event()
    real_sync = Journal._sync_files

    def blocking_sync(batch):
        entered.set()
        gate.wait(10)
        return real_sync(batch)

    monkeypatch.setattr(Journal, "_sync_files", staticmethod(blocking_sync))

    def recorded() -> set[int]:
        row = db.find_object("f", "v1")
        if row is None:
            return set()
        return db.chunks_of(row.id)

    async def main() -> None:
        with trio.fail_after(10):
            await scenario()

    async def scenario() -> None:
        seen: dict[str, set[int]] = {}

        async def settle(name: str, done: trio.Event) -> None:
            await journal.settle()
            seen[name] = recorded()
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            journal.add(obj, 0)
            queued_first, during, queued_later = trio.Event(), trio.Event(), trio.Event()
            nursery.start_soon(settle, "queued first", queued_first)
            await trio.to_thread.run_sync(entered.wait)  # chunk 0's flush is under way
            nursery.start_soon(settle, "during the flush", during)  # nothing queued
            for _ in range(10):
                await trio.lowlevel.checkpoint()  # it is waiting before more is queued
            journal.add(obj, 1)
            nursery.start_soon(settle, "queued later", queued_later)
            for _ in range(10):
                await trio.lowlevel.checkpoint()
            assert seen == {}  # all three wait while the fsync is held
            gate.set()
            await queued_first.wait()
            await during.wait()
            await queued_later.wait()
            nursery.cancel_scope.cancel()
        assert seen["queued first"] >= {0}
        assert seen["during the flush"] >= {0}
        assert seen["queued later"] == {0, 1}
        assert journal.holding(obj) == 0

    try:
        trio.run(main)
    finally:
        gate.set()
        db.close()
        obj.close()
