"""The cache's front door: `open_cache`, and the `Cache` it yields.

    async with open_cache(CacheConfig(cache_dir), remote) as cache:
        obj = await cache.acquire(key, version, size, mtime)
        try:
            data = await cache.read(obj, offset, size)
        finally:
            cache.release(obj)

`open_cache` takes the source's folder (see `layout`), opens its database
and runs the cache's own tasks (fetches, the journal, the evictor, the
watch on its files) in a nursery of its own until the block ends; then it
records what was fetched and lets go of the folder. So a `Cache` can only be
used while its tasks run.

Behind the door: `table` keeps the open objects and their uses, `fetcher`
brings chunks from the remote (in `slots` by priority), `journal` makes them
durable and records them, `evictor` keeps the cache within its limits,
`discard` drops versions that changed on the remote, `folder` holds the
source folder and watches its files, and `db` holds all the SQL.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from cachefs.remote import Pin, Remote

from .db import ListingRow, ObjectRow, Usage
from .evictor import EvictResult, Evictor
from .fanout import data_file_name, data_path, make_folder_for
from .fetcher import ChunkFetcher
from .discard import Discards
from .folder import FolderWatch, HeldFolder
from .journal import Journal
from .layout import CHUNK_SIZE, DATA_NAME, DEFAULT_MIN_FREE, open_data_file, prepare_dir
from .objects import CachedObject, CacheState, ChunkFetch
from .slots import Priority
from .table import ObjectTable

log = logging.getLogger(__name__)

FORGET_RETRY_S = 5.0


@dataclass(frozen=True)
class CacheConfig:
    """Where the cache lives and how big it may grow."""

    cache_dir: Path
    cap_bytes: int | None = None  # None: no cap
    min_free_bytes: int = DEFAULT_MIN_FREE  # free space kept on the cache's disk
    chunk_size: int = CHUNK_SIZE  # of objects cached from now on


@dataclass(frozen=True)
class CacheStats:
    """What the cache did and the limits it keeps, for `cachefs status`."""

    bytes_fetched: int
    cap_bytes: int | None
    min_free_bytes: int


class ListingStore(Protocol):
    """Where directory listings are kept across restarts, one row per entry
    (see `fs.listings`; the SQL is in `db`). Reads raise ListingUnreadable
    when the database cannot answer; writes raise sqlite3 errors or StateLost."""

    path: Path
    epoch: int  # counts rebuilds of the database: listing ids of an earlier one mean nothing
    lost: bool  # being rebuilt

    def current_listing(self, path: str) -> tuple[int, float, int] | None: ...

    def listing_entry(self, listing_id: int, name: bytes) -> ListingRow | None: ...

    def listing_page(self, listing_id: int, after: bytes | None, limit: int) -> list[ListingRow]: ...

    def listing_page_at(self, listing_id: int, position: int, limit: int) -> list[ListingRow]: ...

    async def begin_listing(self, path: str, fetched_at: float) -> int: ...

    async def add_listing_entries(self, listing_id: int, rows: list[ListingRow]) -> None: ...

    async def finish_listing(self, listing_id: int, path: str) -> tuple[int, list[int]]: ...

    async def store_listing(self, path: str, fetched_at: float,
                            rows: list[ListingRow]) -> tuple[int, int, list[int]]: ...

    async def put_listing_entry(self, listing_id: int, row: ListingRow) -> None: ...

    async def delete_listing_entry(self, listing_id: int, name: bytes) -> None: ...

    def old_listings(self) -> list[int]: ...

    async def drop_listings(self, ids: list[int]) -> None: ...


@asynccontextmanager
async def open_cache(config: CacheConfig, remote: Remote) -> AsyncIterator[Cache]:
    """The cache of `remote`'s source in `config.cache_dir`, its tasks running
    until the block ends (module docstring).

    Raises CacheBusy, CacheDirError or CorruptDatabase when it cannot be
    opened; then nothing is left behind. An error of the block comes out
    as itself, not wrapped in an ExceptionGroup.
    """
    held = HeldFolder.take(config.cache_dir, remote.source)
    cache: Cache | None = None
    failure: BaseException | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                cache = Cache(config, remote, held, nursery)
                try:
                    yield cache
                except BaseException as e:
                    # Raised below, once the nursery is done: from inside it
                    # would come out wrapped in an ExceptionGroup.
                    failure = e
                nursery.cancel_scope.cancel()
        finally:
            if cache is not None:
                # What was fetched is recorded, even when the block failed.
                with trio.CancelScope(shield=True):
                    await cache._journal.flush()
        if failure is not None:
            raise failure
    finally:
        if cache is not None:
            cache._close()
        else:
            held.close()


class Cache:
    """Cached objects of one source; made by `open_cache`, which runs its tasks."""

    def __init__(self, config: CacheConfig, remote: Remote, held: HeldFolder, nursery: trio.Nursery) -> None:
        self._held = held
        self._remove_when_closed = False
        self._nursery = nursery
        self._db = held.db
        self.source = remote.source
        self.folder = held.path
        self.data_dir = held.path / DATA_NAME
        self._data_dir_name = str(self.data_dir)
        self.chunk_size = config.chunk_size
        # Told (key, version) of every object discarded because the remote's
        # bytes changed: the layer above must stop serving that version.
        self.on_discard: list[Callable[[str, str], None]] = []
        # Asked to let go of the uses of objects the layer above keeps open
        # only to reopen them faster; each returns how many it let go of.
        # Called when the cache needs room that only they hold, and when it
        # starts over.
        self.on_pressure: list[Callable[[], int]] = []
        self._objects = ObjectTable(on_closed=self._closed)
        self._forgetting: set[int] = set()  # object ids whose chunk rows are being deleted
        self._journal = Journal(self._db, self._objects)
        self._evictor = Evictor(self._db, self._data_path, self._objects.is_open, config.cap_bytes,
                                config.min_free_bytes, self._settle, self._relieve)
        self._discards = Discards(self._objects, self._journal, self._evictor, self._db, nursery, self.on_discard)
        self._watch = FolderWatch(held, self._start_over)
        self._fetcher = ChunkFetcher(remote, self._journal, self._evictor, nursery, self._objects,
                                     self._discards.discard)
        nursery.start_soon(self._journal.run)
        nursery.start_soon(self._evictor.run)
        nursery.start_soon(self._watch.run)

    def remove_when_closed(self) -> None:
        """Remove the folder when the cache closes if this cache made it: for a
        mount that failed to start (it holds nothing worth keeping)."""
        self._remove_when_closed = True

    def _close(self) -> None:
        self._objects.close_all()
        self._held.close(remove=self._remove_when_closed)

    # --- opening and closing objects -------------------------------------------

    async def acquire(self, key: str, version: str, size: int, mtime: float) -> CachedObject:
        """The cached object for this version, opened; pair with `release`."""
        while (obj := self._objects.find(key, version)) is None:
            busy = self._leaving(key, version)
            if busy is None:
                break
            await busy.wait()  # then look again
        if obj is None:
            obj = self._objects.add(self._load(key, version, size, mtime))
        else:
            self._objects.retain(obj)
        self._journal.opened(obj)
        return obj

    def _leaving(self, key: str, version: str) -> trio.Event | None:
        """Set once this version's eviction or discard, if one is under way, is done."""
        evicting = self._evictor.evicting.get((key, version))
        return evicting if evicting is not None else self._discards.pending(key, version)

    def acquire_complete(self, key: str, version: str, size: int, mtime: float) -> CachedObject | None:
        """Like `acquire`, but only for a complete object that needs no wait;
        otherwise None, and nothing is acquired."""
        obj = self._objects.find(key, version)
        if obj is None:
            if self._leaving(key, version) is not None:
                return None
            row = self._db.find_object(key, version)
            if row is None or not row.complete:
                return None
            obj = self._objects.add(self._load(key, version, size, mtime, row))
        else:
            self._objects.retain(obj)
        if not obj.complete:
            # Loaded from a row that promised more than the file holds.
            self.release(obj)
            return None
        self._journal.opened(obj)
        return obj

    def retain(self, obj: CachedObject) -> CachedObject:
        """One more use of an object someone already holds; pair with `release`.
        Its data file stays open (and its fd number ours) until then."""
        return self._objects.retain(obj)

    def release(self, obj: CachedObject) -> None:
        self._objects.release(obj)

    def peek(self, key: str, version: str) -> CachedObject | None:
        """The object if some handle or fetch has it open, without a new use."""
        return self._objects.find(key, version)

    def state(self, key: str, version: str) -> tuple[CacheState, int]:
        """How much of an object version is cached: its state and bytes."""
        obj = self._objects.find(key, version)
        if obj is not None:
            return obj.state, obj.bytes_present
        row = self._db.find_object(key, version)
        cached = row.bytes_cached if row else 0
        if row and row.complete:
            return CacheState.COMPLETE, cached
        return (CacheState.PARTIAL if cached else CacheState.ABSENT), cached

    def _closed(self, obj: CachedObject) -> None:
        """The last use of `obj` is gone (see `table`)."""
        if obj.stale:
            return  # discard took it out and removes its record and file
        self._evictor.closed()
        if obj.object_id is None:
            # Nothing of it was ever recorded, so nothing in the file
            # will be trusted: remove it rather than leave an orphan. Done
            # here, before any other task runs, so no new open can race it.
            try:
                obj.path.unlink(missing_ok=True)
            except OSError as e:
                # An orphan for fsck; release runs inside the journal's
                # flush, which an exception would end, and the daemon with it.
                log.warning("cannot remove the unrecorded data file of %s: %s", obj.key, e.strerror)

    def _load(
        self, key: str, version: str, size: int, mtime: float, row: ObjectRow | None = None
    ) -> CachedObject:
        """Open (or create) the data file of an object and learn what it holds.

        Nothing here waits, so no other task can see the object half loaded.
        """
        row = row or self._db.find_object(key, version)
        name = row.data_name if row else hashlib.sha256(f"{key}\0{version}".encode()).hexdigest()[:40]
        path = data_file_name(self._data_dir_name, name)
        # Inline, not in a worker thread: with the data folder spread over
        # block groups (fanout.py) creating a file takes ~20 µs, less than
        # the thread hop would.
        try:
            fd, found_size = open_data_file(path, size)
        except FileNotFoundError:
            # Its subfolder is not made yet (a new cache makes them in the
            # background) or gone (the data folder was emptied or removed):
            # make it so this open works, and have the watcher look at the
            # rest. A new file's size (0) never matches a row, so nothing
            # recorded is trusted below.
            self._watch.check_soon()
            prepare_dir(self.folder)
            make_folder_for(self.data_dir, path)
            fd, found_size = open_data_file(path, size)
        present: set[int] = set()
        if row is not None and row.id not in self._forgetting:
            if row.complete and row.size == size:
                # Complete means every chunk is recorded: no need to ask which.
                present = set(range(-(-size // row.chunk_size)))
            else:
                present = self._db.chunks_of(row.id)
            why = ""
            if present and found_size != size:
                why = "data file of %s had the wrong size; fetching it again"
            elif present and row.validator is None and not row.complete:
                # Recorded before validators were kept: the rest could only be
                # fetched without knowing which version the chunks held are of.
                why = "cached part of %s has no recorded version; fetching it again"
            if why:
                # The file no longer matches what was recorded: trust neither.
                log.warning(why, key)
                present = set()
                self._forgetting.add(row.id)
                self._nursery.start_soon(self._forget_chunks, row.id, self._watch.generation)
        chunk_size = row.chunk_size if row else self.chunk_size
        # Only chunks held bind the version later chunks must be of.
        pin = Pin(size, row.validator if row is not None and present else None)
        return CachedObject(
            key=key, version=version, size=size, mtime=mtime, chunk_size=chunk_size,
            file=path, fd=fd, object_id=row.id if row else None, present=present, pin=pin,
        )

    def _data_path(self, row: ObjectRow) -> Path:
        return data_path(self.data_dir, row.data_name)

    async def _forget_chunks(self, object_id: int, generation: int) -> None:
        # Until the rows are gone, a new load must not trust them: the file
        # was already cut to the new size, so its size no longer tells.
        # A failure (the disk is full) must neither end the daemon nor let
        # the rows be trusted again: keep trying while this process runs.
        while generation == self._watch.generation:  # else the id is of a lost database
            try:
                await self._db.forget_chunks(object_id)
            except sqlite3.Error as e:
                log.warning("cannot forget the chunks of object %d yet: %s", object_id, e)
                await trio.sleep(FORGET_RETRY_S)
                continue
            self._forgetting.discard(object_id)
            return

    def _relieve(self) -> bool:
        """Ask the layer above to close what it keeps open for speed; True if it did."""
        return sum(let_go() for let_go in self.on_pressure) > 0

    async def _start_over(self) -> None:
        """The folder's files were lost and made anew (see `recovery`):
        forget what was recorded in the old ones."""
        self._relieve()
        for obj in self._objects:
            obj.detached = True
            obj.object_id = None
        self._forgetting.clear()
        await self._db.recreate(self.source)
        self._evictor.used_bytes = 0

    # --- reading ---------------------------------------------------------------

    def fetch(self, obj: CachedObject, chunks: Iterable[int],
              priority: Priority = Priority.DEMAND) -> list[ChunkFetch]:
        """Start fetching those of `chunks` not present or in flight (one in
        flight at a lower priority is promoted); returns the fetches to wait on."""
        return self._fetcher.start(obj, chunks, priority)

    @staticmethod
    async def wait(fetches: Iterable[ChunkFetch]) -> None:
        """Return once all `fetches` are done; raise the first one's error."""
        await ChunkFetcher.wait(fetches)

    async def ensure(self, obj: CachedObject, offset: int, size: int, ahead: int = 0,
                     priority: Priority = Priority.DEMAND) -> None:
        """Return once bytes [offset, offset+size) of `obj` are in its data
        file, fetching what is missing; raise the fetch's error if one failed.

        `ahead` chunks after the requested ones are fetched in the background.
        """
        chunks = obj.chunks_for(offset, size)
        waits = self._fetcher.start(obj, chunks, priority)
        end = min(offset + size, obj.size)
        for idx in chunks:
            fetch = obj.inflight.get(idx)
            if fetch is not None:
                # Only as far into the chunk as this read needs.
                chunk_start, chunk_end = obj.chunk_span(idx)
                await fetch.wait_for(min(end, chunk_end) - chunk_start)
            elif idx not in obj.present:
                await self._fetcher.wait(waits)  # it failed: raise its error
        if ahead and chunks:
            # Only once this read's own bytes are here: read-ahead bodies
            # arriving at the same moment would delay the first byte (a cold
            # open's first read waited 9 ms behind four of them, not 3).
            self._fetcher.start(obj, range(chunks.stop, min(obj.nchunks, chunks.stop + ahead)), Priority.READAHEAD)

    async def read(self, obj: CachedObject, offset: int, size: int, ahead: int = 0) -> memoryview:
        """Bytes [offset, offset+size) of `obj`, fetching what is missing (see `ensure`)."""
        await self.ensure(obj, offset, size, ahead)
        return await obj.pread(offset, size)

    def fetch_in_background(self, key: str, version: str, size: int, mtime: float) -> None:
        """Start fetching a whole object in the background, unless cached."""
        if size == 0:
            return  # nothing to fetch, and an empty object keeps no data file
        obj = self._objects.find(key, version)
        if obj is not None and obj.complete:
            return  # open, and complete: no need to ask the database
        row = self._db.find_object(key, version)
        if row is None or not row.complete:
            self._nursery.start_soon(self._fetch_whole, key, version, size, mtime)

    async def _fetch_whole(self, key: str, version: str, size: int, mtime: float) -> None:
        try:
            obj = await self.acquire(key, version, size, mtime)
        except OSError as e:
            log.warning("cannot cache %s: %s", key, e)
            return
        except Exception:
            # Background work nobody waits for: it must not end the daemon.
            log.exception("fetching %s in the background failed", key)
            return
        try:
            # The fetches hold their own uses of the object.
            self._fetcher.start(obj, range(obj.nchunks), Priority.BACKGROUND)
        finally:
            self.release(obj)

    # --- eviction, pins and figures --------------------------------------------

    async def evict(self, keys: list[str]) -> EvictResult:
        """Evict what is cached at or under `keys` ('' is everything); what is
        open or pinned is skipped (`cachefs evict`)."""
        # A file closed a moment ago is still held by its chunks waiting to
        # be recorded: record them now, or it would be skipped as open.
        await self._journal.settle()
        return await self._evictor.evict_keys(keys)

    async def pin(self, keys: list[str]) -> None:
        """Keep these objects from eviction (`cachefs prefetch --pin`)."""
        await self._db.pin(keys)

    async def unpin(self, path: str) -> int:
        """Unpin `path` and everything under it ('' is everything); returns how many."""
        return await self._db.unpin(path)

    def usage(self) -> Usage:
        """Bytes and objects recorded, and the number of pins."""
        return self._db.usage()

    def stats(self) -> CacheStats:
        return CacheStats(self._fetcher.bytes_fetched, self._evictor.cap_bytes, self._evictor.min_free_bytes)

    @property
    def listings(self) -> ListingStore:
        """Where directory listings are kept."""
        return self._db

    async def _settle(self) -> bool:
        """Wait for the journal if it alone keeps closed objects from eviction;
        return whether it did."""
        if not any(self._objects.uses(obj) == self._journal.holding(obj) for obj in self._objects):
            return False
        await self._journal.settle()
        return True
