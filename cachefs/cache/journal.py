"""Makes fetched chunks durable, then records them, in batches.

Order matters: data is written, then fdatasync'ed, then recorded in SQLite.
A crash can therefore lose the record of a chunk that is on disk (it is
fetched again) but never record a chunk whose bytes are not. Batching keeps
one fsync per file and one commit per batch, off the request path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from .db import CacheDB, ChunkRecord
from .objects import CachedObject

log = logging.getLogger(__name__)

# How long to gather chunks before a flush: a few chunks of a fast download.
BATCH_SECONDS = 0.1


class Journal:
    """Queues (object, chunk) pairs and flushes them from one task."""

    def __init__(self, db: CacheDB, release: Callable[[CachedObject], None]) -> None:
        self._db = db
        self._release = release  # drops the use each queued chunk holds
        self._pending: list[tuple[CachedObject, int]] = []
        self._wakeup = trio.Event()

    def add(self, obj: CachedObject, idx: int) -> None:
        obj.uses += 1
        self._pending.append((obj, idx))
        self._wakeup.set()

    async def run(self) -> None:
        """Flush forever; cancel to stop (call `flush` first to lose nothing)."""
        while True:
            await self._wakeup.wait()
            await trio.sleep(BATCH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        self._wakeup = trio.Event()
        if batch:
            try:
                await self._ensure_rows(batch)
                await trio.to_thread.run_sync(self._sync_files, batch)
                await self._db.write(lambda db: CacheDB.record_chunks(db, self._records(batch)))
            except Exception:
                # Not recording is always safe: the chunks are fetched again.
                log.exception("could not record %d cached chunks", len(batch))
            finally:
                for obj, _ in batch:
                    self._release(obj)

    async def _ensure_rows(self, batch: list[tuple[CachedObject, int]]) -> None:
        # Objects get their row at the first flush, not at open, so a cold
        # open costs no database write.
        for obj, _ in batch:
            if obj.object_id is None:
                obj.object_id = await self._db.insert_object(
                    obj.key, obj.version, obj.size, obj.mtime, obj.chunk_size, obj.path.name
                )

    @staticmethod
    def _sync_files(batch: list[tuple[CachedObject, int]]) -> None:
        for obj in {id(o): o for o, _ in batch}.values():
            os.fdatasync(obj.fd)

    @staticmethod
    def _records(batch: list[tuple[CachedObject, int]]) -> list[ChunkRecord]:
        records = []
        for obj, idx in batch:
            start, end = obj.chunk_span(idx)
            assert obj.object_id is not None
            records.append(ChunkRecord(obj.object_id, idx, end - start, obj.nchunks))
        return records
