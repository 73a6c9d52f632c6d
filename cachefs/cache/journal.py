"""Makes fetched chunks durable, then records them, in batches.

Order matters: data is written, then fdatasync'ed, then recorded in SQLite.
A crash can therefore lose the record of a chunk that is on disk (it is
fetched again) but never record a chunk whose bytes are not. Batching keeps
one fsync per file and one commit per batch, off the request path.

Once durable, streamed chunks leave the page cache: chunks of objects
bigger than one chunk whose fetch was started ahead of a reader (read-ahead,
prefetch), even if a reader caught up with it and waited. Streaming big
files into the cache is write-once work: keeping every byte in memory would
push out what the rest of the system is using (a prefetch of large files
would empty the page cache), and it makes cold reads slow in VMs, where page
cache memory new to the guest costs about 10 us a page to touch while pages
freed a moment ago are reused for free (bench/RESULTS.md). Chunks whose
fetch a reader started stay, since random reads come back to them, and so
do small files, whose pages are few and often re-read.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from typing import NamedTuple

import trio

from .db import CacheDB, ChunkRecord, Database, StateLost
from .objects import CachedObject
from .table import ObjectTable

log = logging.getLogger(__name__)

# How long to gather chunks before a flush: a few chunks of a fast download.
BATCH_SECONDS = 0.1
# How long open times wait to be recorded when no chunk is queued: they only
# order eviction, and each write makes SQLite's readers drop their cached
# pages, which a reader of warm files then reads again (from disk, cold).
TOUCH_SECONDS = 2.0


class QueuedChunk(NamedTuple):
    """A chunk written to its data file, waiting to be made durable."""

    obj: CachedObject
    idx: int
    uncache: bool  # fetched ahead of readers: drop its pages once durable


class Journal:
    """Queues (object, chunk) pairs and flushes them from one task."""

    def __init__(self, db: CacheDB, objects: ObjectTable) -> None:
        self._db = db
        self._objects = objects  # each queued chunk holds a use of its object
        self._pending: list[QueuedChunk] = []
        self._opened: dict[CachedObject, float] = {}  # last open time, for LRU
        self._held: Counter[CachedObject] = Counter()  # uses held by queued or flushing chunks
        self._wakeup = trio.Event()
        self._hurry = trio.Event()  # flush without waiting out the batch
        self._gathering_done = trio.Event()  # set once the queued chunks are flushed
        self._flushing: trio.Event | None = None  # the same, for a flush under way

    def add(self, obj: CachedObject, idx: int, uncache: bool = False) -> None:
        """Queue chunk `idx` of `obj`, which is in its data file; `uncache`:
        drop its pages once durable (module docstring)."""
        self._objects.retain(obj)
        self._held[obj] += 1
        self._pending.append(QueuedChunk(obj, idx, uncache))
        self._wakeup.set()

    def holding(self, obj: CachedObject) -> int:
        """How many of `obj`'s uses are chunks waiting to be recorded."""
        return self._held[obj]

    async def settle(self) -> None:
        """Flush what is queued now, without the batching delay; return once
        every chunk added so far is recorded (or given up)."""
        if self._pending:
            done = self._gathering_done
            self._hurry.set()
        elif self._flushing is not None:
            done = self._flushing
        else:
            return
        await done.wait()

    def opened(self, obj: CachedObject) -> None:
        """Note that `obj` was opened now (recorded with the next batch, or
        within TOUCH_SECONDS)."""
        self._opened[obj] = time.time()

    async def run(self) -> None:
        """Flush forever; cancel to stop (then call `flush` once more)."""
        while True:
            with trio.move_on_after(TOUCH_SECONDS):
                await self._wakeup.wait()
            if not self._wakeup.is_set() and not self._opened:
                continue
            with trio.move_on_after(BATCH_SECONDS):
                await self._hurry.wait()
            # A batch taken must be recorded: cancelling it half way would
            # drop the record of chunks that are safely on disk. A flush is
            # bounded (one fsync per file, one commit), so shield it.
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        done, self._gathering_done = self._gathering_done, trio.Event()
        self._flushing = done
        try:
            await self._flush()
        finally:
            if self._flushing is done:
                self._flushing = None
            done.set()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        opened, self._opened = self._opened, {}
        self._wakeup = trio.Event()
        self._hurry = trio.Event()
        # Access times of objects without a row yet are set when it is made.
        accessed = {obj.object_id: t for obj, t in opened.items() if obj.object_id is not None}
        try:
            if accessed:
                try:
                    await self._db.write(lambda db: CacheDB.touch(db, accessed))
                except StateLost:
                    pass  # said once by the cache, which rebuilds
                except sqlite3.OperationalError as e:
                    log.error("could not record access times: %s", e)
                except Exception:
                    log.exception("could not record access times")
            if batch:
                try:
                    failed = await trio.to_thread.run_sync(self._sync_files, batch)
                    durable = self._forget_unsynced(batch, failed) if failed else batch
                    durable = [queued for queued in durable if not queued.obj.detached]
                    new_ids = await self._db.write(lambda db: self._record(db, durable)) if durable else {}
                    # Only now, after the commit, do the new rows exist.
                    for obj, object_id in new_ids.items():
                        if not obj.detached:  # a rebuild came between: the row is in the old database
                            obj.object_id = object_id
                except StateLost:
                    # The cache says so once, and rebuilds; not recording is safe.
                    log.debug("could not record %d cached chunks: the database is lost", len(batch))
                except sqlite3.OperationalError as e:
                    # A full disk, a lock: one line, not a traceback a batch.
                    log.error("could not record %d cached chunks: %s", len(batch), e)
                except Exception:
                    # Not recording is always safe: the chunks are fetched again.
                    log.exception("could not record %d cached chunks", len(batch))
        finally:
            # Taken means released, however the flush ends.
            for obj, *_ in batch:
                self._held[obj] -= 1
                if not self._held[obj]:
                    del self._held[obj]
                self._objects.release(obj)

    @staticmethod
    def _sync_files(batch: list[QueuedChunk]) -> set[CachedObject]:
        """fdatasync each object's file once; return those that failed.

        Then the page cache copies of synced streamed chunks are dropped
        (module docstring).
        """
        to_drop: dict[CachedObject, list[int]] = {}  # every object in the batch
        for obj, idx, uncache in batch:
            chunks = to_drop.setdefault(obj, [])
            if uncache:
                chunks.append(idx)
        failed = set()
        for obj, idxs in to_drop.items():
            try:
                os.fdatasync(obj.fd)
            except OSError as e:
                log.error("cannot make %s durable: %s", obj.key, e.strerror)
                failed.add(obj)
                continue
            if idxs:
                _drop_pages(obj, idxs)
        return failed

    @staticmethod
    def _forget_unsynced(batch: list[QueuedChunk], failed: set[CachedObject]) -> list[QueuedChunk]:
        """Chunks whose write-back failed may read back wrong: fetch them again."""
        for queued in batch:
            if queued.obj in failed:
                queued.obj.present.discard(queued.idx)
        return [queued for queued in batch if queued.obj not in failed]

    @staticmethod
    def _record(db: Database, batch: list[QueuedChunk]) -> dict[CachedObject, int]:
        """On the writer thread, in one transaction: rows for new objects, then
        chunks. Returns the ids of the new object rows."""
        new_ids: dict[CachedObject, int] = {}
        pinned: set[CachedObject] = set()
        records = []
        for obj, idx, _ in batch:
            if obj.stale:
                # The remote changed under it; the cache drops what it has.
                continue
            validator = obj.pin.validator if obj.pin is not None else None
            # Objects get their row at their first flush, not at open, so a
            # cold open costs no database write.
            object_id = obj.object_id or new_ids.get(obj)
            if object_id is None:
                object_id = new_ids[obj] = CacheDB.insert_object(
                    db, obj.key, obj.version, obj.size, obj.mtime, obj.chunk_size, obj.name, validator
                )
            elif obj not in pinned and validator is not None and obj not in new_ids:
                # A row whose chunks were all forgotten, fetched again under a new pin.
                CacheDB.set_validator(db, object_id, validator)
            pinned.add(obj)
            start, end = obj.chunk_span(idx)
            records.append(ChunkRecord(object_id, idx, end - start, obj.nchunks))
        CacheDB.record_chunks(db, records)
        return new_ids


def _drop_pages(obj: CachedObject, idxs: list[int]) -> None:
    """Drop the page cache copies of chunks `idxs`, which are synced (clean).

    The kernel drops only pages (and large folios) wholly inside the range it
    is given, so adjacent chunks go in one call, and a run that ends at the
    end of the file says so (length 0) to take the last partial page too.
    """
    runs: list[list[int]] = []
    for idx in sorted(idxs):
        if runs and runs[-1][1] == idx:
            runs[-1][1] = idx + 1
        else:
            runs.append([idx, idx + 1])
    for first, stop in runs:
        start = obj.chunk_span(first)[0]
        end = obj.chunk_span(stop - 1)[1]
        try:
            os.posix_fadvise(obj.fd, start, 0 if end == obj.size else end - start, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            # Only advice: the chunks are durable whatever it says.
            log.debug("cannot drop cached pages of %s: %s", obj.key, e.strerror)
