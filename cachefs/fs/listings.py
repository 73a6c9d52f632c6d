"""Directory listings, kept in SQLite for `metadata_ttl`.

A listing is written one row per entry as the remote streams it in, and read
back a page at a time, so a directory of a million names is never held whole
in memory: what stays in memory is a small head per directory (its id, age
and size). A listing younger than the TTL is used as it is, also after a
restart; an older one is fetched again, and still served while the remote
cannot answer. Concurrent look-ups in one directory share one fetch.

When the database cannot take a listing (a full disk, a database being
rebuilt) the listing is kept in memory instead: `ls` must not fail because
the cache cannot store what it saw.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import trio

from cachefs.cache import ListingRow, ListingStore, ListingUnreadable, StateLost
from cachefs.remote import NotFound, Remote, RemoteEntry, RemoteError

log = logging.getLogger(__name__)

# Rows per query when a listing is read in name order.
PAGE_ROWS = 256
# Entries per write while a listing streams in.
WRITE_BATCH = 2000

_keys = itertools.count(1)


def name_bytes(name: str) -> bytes:
    """A name as the kernel sees it; listings are ordered by these bytes."""
    return name.encode("utf-8", "surrogateescape")


def _row(entry: RemoteEntry) -> ListingRow:
    return (name_bytes(entry.name), int(entry.is_dir), entry.size, entry.mtime, entry.version)


def _entry(row: ListingRow) -> RemoteEntry:
    name, is_dir, size, mtime, version = row
    # RemoteEntry(...) as it would be made, in a third of the time (a frozen
    # dataclass sets each field through object.__setattr__): one is made
    # per entry of every page read.
    entry = _new(RemoteEntry)
    _setattr(entry, "__dict__", {"name": name.decode("utf-8", "surrogateescape"), "is_dir": bool(is_dir),
                                 "size": size, "mtime": mtime, "version": version})
    return entry


_new = object.__new__
_setattr = object.__setattr__


class Listing:
    """One complete fetch of a directory, read in name order.

    `key` changes whenever what the listing holds changes (a new fetch, or
    one entry updated after a stat): the kernel's cache of the directory's
    entries is kept across opens only while it stays the same.
    Reads raise ListingUnreadable when the database cannot answer.
    """

    fetched_at: float
    count: int
    key: tuple[int, int]

    def entry(self, name: str) -> RemoteEntry | None:
        return self.entry_named(name_bytes(name))

    def entry_named(self, name: bytes) -> RemoteEntry | None:
        raise NotImplementedError

    def page(self, after: bytes | None, limit: int) -> list[RemoteEntry]:
        """Up to `limit` entries in order, after the name `after` (None: from the first)."""
        raise NotImplementedError

    def page_at(self, position: int, limit: int) -> list[RemoteEntry]:
        """Up to `limit` entries in order from the `position`th (0: the first)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[RemoteEntry]:
        """Every entry in order, a page at a time."""
        after = None
        while True:
            page = self.page(after, PAGE_ROWS)
            yield from page
            if len(page) < PAGE_ROWS:
                return
            after = name_bytes(page[-1].name)


class StoredListing(Listing):
    """A listing whose entries are rows of the cache database."""

    def __init__(self, db: ListingStore, listing_id: int, fetched_at: float, count: int) -> None:
        self._db = db
        self.id = listing_id
        self.epoch = db.epoch
        self.fetched_at = fetched_at
        self.count = count
        self.key = (next(_keys), 0)
        # The last page read: READDIRPLUS looks up each entry it returns.
        self._recent: dict[bytes, RemoteEntry] = {}

    @property
    def usable(self) -> bool:
        """False once the database was rebuilt: the rows are gone."""
        return self.epoch == self._db.epoch and not self._db.lost

    def _check(self) -> None:
        if not self.usable:
            raise ListingUnreadable("the cache database was rebuilt")

    def entry_named(self, name: bytes) -> RemoteEntry | None:
        found = self._recent.get(name)
        if found is not None:
            return found
        self._check()
        row = self._db.listing_entry(self.id, name)
        return None if row is None else _entry(row)

    def page(self, after: bytes | None, limit: int) -> list[RemoteEntry]:
        self._check()
        return self._remember([_entry(r) for r in self._db.listing_page(self.id, after, limit)])

    def page_at(self, position: int, limit: int) -> list[RemoteEntry]:
        self._check()
        return self._remember([_entry(r) for r in self._db.listing_page_at(self.id, position, limit)])

    def _remember(self, entries: list[RemoteEntry]) -> list[RemoteEntry]:
        self._recent = {name_bytes(e.name): e for e in entries}
        return entries

    def changed(self, count: int) -> None:
        """One entry was updated in place."""
        self._recent = {}
        self.count = count
        self.key = (self.key[0], self.key[1] + 1)


class MemoryListing(Listing):
    """A listing kept in memory, when the database cannot take it."""

    def __init__(self, fetched_at: float, entries: dict[bytes, RemoteEntry]) -> None:
        self.fetched_at = fetched_at
        self.key = (next(_keys), 0)
        self._set(entries)

    def _set(self, entries: dict[bytes, RemoteEntry]) -> None:
        self._entries = entries
        self._order = sorted(entries)
        self.count = len(entries)

    def entry_named(self, name: bytes) -> RemoteEntry | None:
        return self._entries.get(name)

    def page(self, after: bytes | None, limit: int) -> list[RemoteEntry]:
        start = 0 if after is None else bisect.bisect_right(self._order, after)
        return self.page_at(start, limit)

    def page_at(self, position: int, limit: int) -> list[RemoteEntry]:
        return [self._entries[n] for n in self._order[position : position + limit]]

    def update(self, name: bytes, entry: RemoteEntry | None) -> None:
        entries = dict(self._entries)
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry
        self._set(entries)
        self.key = (self.key[0], self.key[1] + 1)


class _BatchWriter:
    """Writes batches of a listing on the database's thread while the next
    batch is read and parsed: SQLite lets go of the GIL as it works, so the
    two overlap. One write at a time; a failed write fails the next put."""

    def __init__(self, db: ListingStore, listing_id: int, nursery: trio.Nursery) -> None:
        self._db = db
        self._listing_id = listing_id
        self._nursery = nursery
        self._done = trio.Event()
        self._done.set()
        self._error: Exception | None = None

    async def put(self, batch: list[ListingRow]) -> None:
        await self.flush()
        self._done = trio.Event()
        self._nursery.start_soon(self._write, batch, self._done)

    async def flush(self) -> None:
        """Wait for the write under way; raise what it failed with."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    async def _write(self, batch: list[ListingRow], done: trio.Event) -> None:
        try:
            await self._db.add_listing_entries(self._listing_id, batch)
        except (sqlite3.Error, StateLost) as e:
            self._error = e
        finally:
            done.set()


@dataclasses.dataclass
class _Fetch:
    """One listing request; concurrent look-ups share its outcome."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    listing: Listing | None = None
    error: RemoteError | None = None


class Listings:
    """Directory path -> listing, with a TTL and single-flight fetches."""

    def __init__(self, remote: Remote, db: ListingStore, ttl: float) -> None:
        self._remote = remote
        self._db = db
        self.ttl = ttl
        self._heads: dict[str, Listing] = {}
        self._inflight: dict[str, _Fetch] = {}
        self._warned: set[tuple[str, str]] = set()
        self._store_warned = False
        # Stored listings open directory handles read, by id; superseded
        # ones are deleted once no handle reads them.
        self._holds: Counter[int] = Counter()
        self._superseded: set[int] = set()
        # Left by an earlier daemon: superseded, or half filled when it stopped.
        self._superseded.update(db.old_listings())

    # --- reading ---------------------------------------------------------------

    def _fresh(self, listing: Listing | None) -> bool:
        return listing is not None and time.time() - listing.fetched_at < self.ttl

    def cached(self, path: str) -> Listing | None:
        """The listing of `path` as last fetched, however old; never fetches.
        None also when the database cannot tell right now."""
        listing = self._heads.get(path)
        if isinstance(listing, StoredListing) and not listing.usable:
            del self._heads[path]
            listing = None
        if listing is None:
            try:
                listing = self._load(path)
            except ListingUnreadable:
                return None
        return listing

    def fresh(self, path: str) -> Listing | None:
        """The listing of `path` if it is younger than the TTL; never fetches."""
        listing = self.cached(path)
        return listing if self._fresh(listing) else None

    def forget(self, path: str, listing: Listing) -> None:
        """`listing` could not be read: the next look-up fetches it again."""
        if self._heads.get(path) is listing:
            del self._heads[path]
        if isinstance(listing, StoredListing):
            listing.fetched_at = 0.0  # never fresh again

    async def get(self, path: str) -> Listing:
        """The listing of directory `path`; raises RemoteError (e.g. NotFound).

        Offline, a listing older than the TTL is still served.
        """
        while True:
            listing = self.cached(path)
            if self._fresh(listing):
                return listing
            fetch = self._inflight.get(path)
            if fetch is None:
                fetch = self._inflight[path] = _Fetch()
                try:
                    fetch.listing = await self._fetch(path)
                except RemoteError as e:
                    fetch.error = e
                finally:
                    del self._inflight[path]
                    fetch.done.set()
            else:
                await fetch.done.wait()
            if fetch.listing is not None:
                return fetch.listing
            if fetch.error is not None:
                if listing is not None and listing.fetched_at and not isinstance(fetch.error, NotFound):
                    log.debug("listing %r failed (%s); using the cached listing", path, fetch.error)
                    return listing
                raise fetch.error
            # The fetching request was interrupted: try again.

    async def lookup(self, directory: str, name: str) -> RemoteEntry | None:
        """The entry `name` of `directory` (None: not there); raises RemoteError."""
        for _ in range(2):
            listing = await self.get(directory)
            try:
                return listing.entry(name)
            except ListingUnreadable as e:
                log.debug("listing %r unreadable (%s); fetching it again", directory, e)
                self.forget(directory, listing)
        raise RemoteError(f"listing of {directory!r} cannot be read back")

    def _load(self, path: str) -> Listing | None:
        head = self._db.current_listing(path)
        if head is None:
            return None
        listing_id, fetched_at, count = head
        listing = StoredListing(self._db, listing_id, fetched_at, count)
        self._heads[path] = listing
        return listing

    # --- open directory handles --------------------------------------------------

    def hold(self, listing: Listing) -> None:
        if isinstance(listing, StoredListing):
            self._holds[listing.id] += 1

    def release(self, listing: Listing) -> None:
        if isinstance(listing, StoredListing):
            self._holds[listing.id] -= 1
            if self._holds[listing.id] <= 0:
                del self._holds[listing.id]

    # --- changes -----------------------------------------------------------------

    async def update_entry(self, directory: str, name: str, entry: RemoteEntry | None) -> None:
        """Record what a stat found: a new version of `name`, or (None) its deletion."""
        listing = self.cached(directory)
        if listing is None:
            return
        if entry is not None and not self._usable(directory, entry):
            entry = None
        raw = name_bytes(name)
        if isinstance(listing, MemoryListing):
            listing.update(raw, entry)
            return
        assert isinstance(listing, StoredListing)
        try:
            existed = listing.entry_named(raw) is not None
            if entry is None:
                await self._db.delete_listing_entry(listing.id, raw)
                listing.changed(listing.count - existed)
            else:
                await self._db.put_listing_entry(listing.id, _row(entry))
                listing.changed(listing.count + (not existed))
        except (sqlite3.Error, StateLost, ListingUnreadable) as e:
            log.debug("cannot update the listing of %r (%s); it is fetched again", directory, e)
            self.forget(directory, listing)

    # --- fetching ----------------------------------------------------------------

    def _usable(self, directory: str, entry: RemoteEntry) -> bool:
        if entry.usable:
            return True
        # Once per name: listings are fetched again whenever they expire.
        if (directory, entry.name) not in self._warned:
            self._warned.add((directory, entry.name))
            log.warning("skipping %r in /%s: unusable size %r", entry.name, directory, entry.size)
        return False

    async def _pages(self, path: str) -> AsyncIterator[list[RemoteEntry]]:
        """The remote's listing of `path` in batches, as they come."""
        pages = getattr(self._remote, "list_dir_pages", None)
        if pages is None:
            yield await self._remote.list_dir(path)
            return
        async with pages(path) as batches:
            async for batch in batches:
                yield batch

    async def _fetch(self, path: str) -> Listing:
        now = time.time()
        await self._sweep()
        async with contextlib.aclosing(self._row_batches(path)) as batches:
            first = await anext(batches, [])
            if len(first) < WRITE_BATCH:
                # All there is (most directories): one transaction.
                try:
                    listing_id, count, superseded = await self._db.store_listing(path, now, first)
                except (sqlite3.Error, StateLost) as e:
                    self._cannot_store(e)
                    return await self._fetch_to_memory(path, now)
            else:
                try:
                    listing_id = await self._db.begin_listing(path, now)
                except (sqlite3.Error, StateLost) as e:
                    self._cannot_store(e)
                    return await self._fetch_to_memory(path, now)
                try:
                    await self._stream_into(listing_id, first, batches)
                    count, superseded = await self._db.finish_listing(listing_id, path)
                except (sqlite3.Error, StateLost) as e:
                    self._cannot_store(e)
                    await self._drop_quietly([listing_id])
                    return await self._fetch_to_memory(path, now)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await self._drop_quietly([listing_id])
                    raise
        self._store_warned = False
        self._superseded.update(superseded)
        listing = StoredListing(self._db, listing_id, now, count)
        self._heads[path] = listing
        await self._sweep()
        return listing

    async def _row_batches(self, path: str) -> AsyncIterator[list[ListingRow]]:
        """The remote's listing of `path` as rows, WRITE_BATCH at a time
        (the last batch, and only it, may be shorter)."""
        batch: list[ListingRow] = []
        async for page in self._pages(path):
            # One bad size must not make the whole directory fail.
            batch.extend(_row(e) for e in page if self._usable(path, e))
            while len(batch) >= WRITE_BATCH:
                yield batch[:WRITE_BATCH]
                batch = batch[WRITE_BATCH:]
        if batch:
            yield batch

    async def _stream_into(
        self, listing_id: int, first: list[ListingRow], rest: AsyncIterator[list[ListingRow]]
    ) -> None:
        """`first` and the `rest` of a listing into the rows of `listing_id`."""
        # Raised from outside the nursery, which would wrap it in a group.
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            writer = _BatchWriter(self._db, listing_id, nursery)
            try:
                await writer.put(first)
                async for batch in rest:
                    await writer.put(batch)
                await writer.flush()
            except BaseException as e:
                failure = e
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _fetch_to_memory(self, path: str, fetched_at: float) -> Listing:
        entries: dict[bytes, RemoteEntry] = {}
        async for page in self._pages(path):
            for e in page:
                if self._usable(path, e):
                    raw = name_bytes(e.name)
                    if not (e.is_dir is False and raw in entries and entries[raw].is_dir):
                        entries[raw] = e
        listing = MemoryListing(fetched_at, entries)
        self._heads[path] = listing
        return listing

    def _cannot_store(self, error: Exception) -> None:
        # Only a copy: the listing is kept in memory. A full disk must not fail `ls`.
        if not self._store_warned:
            self._store_warned = True
            log.warning("cannot store directory listings in %s (%s); they are kept in memory",
                        self._db.path, error)

    async def _sweep(self) -> None:
        """Delete superseded listings that no open directory handle reads."""
        doomed = [i for i in self._superseded if i not in self._holds]
        if doomed:
            self._superseded.difference_update(doomed)
            await self._drop_quietly(doomed)

    async def _drop_quietly(self, ids: list[int]) -> None:
        try:
            await self._db.drop_listings(ids)
        except (sqlite3.Error, StateLost) as e:
            log.debug("cannot delete old listings: %s", e)
