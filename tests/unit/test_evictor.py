"""The evictor at its cap when only files closed a moment ago stand in the
way: it waits for their records (the journal's settle) and evicts them,
but stops asking once waiting frees nothing."""

from __future__ import annotations

from pathlib import Path

import trio

from cachefs.cache.db import CacheDB, ChunkRecord
from cachefs.cache.evictor import Evictor

MiB = 1 << 20


def add_object(db: CacheDB, folder: Path, key: str, size: int) -> Path:
    """A recorded, complete object of one chunk and its data file."""
    path = folder / key
    path.write_bytes(b"x" * size)

    async def record() -> None:
        def write(d):
            object_id = CacheDB.insert_object(d, key, "v1", size, 0.0, size, key)
            CacheDB.record_chunks(d, [ChunkRecord(object_id, 0, size, 1)])

        await db.write(write)

    trio.run(record)
    return path


def test_make_room_waits_for_closing_files_then_evicts_them(tmp_path: Path) -> None:
    db = CacheDB(tmp_path / "cache.db")
    old = add_object(db, tmp_path, "old", 8 * MiB)
    held = {("old", "v1")}  # by its unflushed record, as if just closed
    settles = []

    async def settle() -> bool:
        settles.append(len(held))
        held.clear()  # the journal recorded it and let it go
        return True

    evictor = Evictor(db, lambda row: tmp_path / row.data_name, lambda k, v: (k, v) in held,
                      cap_bytes=10 * MiB, min_free_bytes=0, settle=settle)
    try:
        trio.run(evictor.make_room, 8 * MiB)
        assert settles == [1]
        assert not old.exists()
        assert db.find_object("old", "v1") is None
        assert evictor.used_bytes == 0
    finally:
        db.close()


def test_make_room_stops_waiting_when_waiting_frees_nothing(tmp_path: Path) -> None:
    db = CacheDB(tmp_path / "cache.db")
    paths = [add_object(db, tmp_path, f"f{i}", 4 * MiB) for i in range(3)]
    held = {("f0", "v1"), ("f1", "v1"), ("f2", "v1")}
    settles = []

    async def settle() -> bool:
        settles.append(1)
        return True  # there were such files, but they stay open (or pinned)

    evictor = Evictor(db, lambda row: tmp_path / row.data_name, lambda k, v: (k, v) in held,
                      cap_bytes=12 * MiB, min_free_bytes=0, settle=settle)
    try:
        trio.run(evictor.make_room, 4 * MiB)
        trio.run(evictor.make_room, 4 * MiB)
        assert settles == [1]  # asked once; the second download went on over the cap
        assert all(p.exists() for p in paths)

        held.discard(("f0", "v1"))  # now something can go: eviction catches up
        evictor.written(8 * MiB, 0)  # the two downloads above ended with nothing written
        trio.run(evictor.make_room, 4 * MiB)
        assert not paths[0].exists()
        held.clear()
        held.update({("f1", "v1"), ("f2", "v1")})
        trio.run(evictor.make_room, 8 * MiB)
        assert settles == [1, 1]  # after a success it asks again
    finally:
        db.close()
