"""Directory listings, cached in memory and in SQLite for `metadata_ttl`.

A listing younger than the TTL is used as it is, also after a restart; an
older one is fetched again. Concurrent look-ups in one directory share one
fetch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import trio

from cachefs.cache import ListingStore
from cachefs.remote import NotFound, Remote, RemoteEntry, RemoteError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Listing:
    fetched_at: float
    entries: dict[str, RemoteEntry]

    @functools.cached_property
    def order(self) -> list[str]:
        """Names in the order `ls` and readdir show them."""
        return sorted(self.entries)

    @functools.cached_property
    def position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.order)}


@dataclasses.dataclass
class _Fetch:
    """One listing request; concurrent look-ups share its outcome."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    entries: dict[str, RemoteEntry] | None = None
    error: RemoteError | None = None


class Listings:
    """Directory path -> entries, with a TTL and single-flight fetches."""

    def __init__(self, remote: Remote, db: ListingStore, ttl: float) -> None:
        self._remote = remote
        self._db = db
        self.ttl = ttl
        self._mem: dict[str, Listing] = {}
        self._inflight: dict[str, _Fetch] = {}
        self._warned: set[tuple[str, str]] = set()

    def _fresh(self, listing: Listing | None) -> bool:
        return listing is not None and time.time() - listing.fetched_at < self.ttl

    def fresh(self, path: str) -> Listing | None:
        """The listing in memory if it is younger than the TTL; never fetches."""
        listing = self._mem.get(path)
        return listing if self._fresh(listing) else None

    async def update_entry(self, directory: str, name: str, entry: RemoteEntry | None) -> None:
        """Record what a stat found: a new version of `name`, or (None) its deletion."""
        listing = self._mem.get(directory) or self._load(directory)
        if listing is None:
            return
        entries = dict(listing.entries)
        if entry is None or not self._usable(directory, entry):
            entries.pop(name, None)
        else:
            entries[name] = entry
        # A new Listing: sorted order and positions are derived per listing.
        self._mem[directory] = Listing(listing.fetched_at, entries)
        await self._db.put_listing(directory, listing.fetched_at, [dataclasses.asdict(e) for e in entries.values()])

    def cached(self, path: str) -> Listing | None:
        """The listing in memory, however old; never fetches."""
        return self._mem.get(path)

    async def get(self, path: str) -> dict[str, RemoteEntry]:
        """The entries of directory `path`; raises RemoteError (e.g. NotFound).

        Offline, a listing older than the TTL is still served.
        """
        while True:
            listing = self._mem.get(path) or self._load(path)
            if self._fresh(listing):
                return listing.entries
            fetch = self._inflight.get(path)
            if fetch is None:
                fetch = self._inflight[path] = _Fetch()
                try:
                    fetch.entries = await self._fetch(path)
                except RemoteError as e:
                    fetch.error = e
                finally:
                    del self._inflight[path]
                    fetch.done.set()
            else:
                await fetch.done.wait()
            if fetch.entries is not None:
                return fetch.entries
            if fetch.error is not None:
                if listing is not None and not isinstance(fetch.error, NotFound):
                    log.debug("listing %r failed (%s); using the cached listing", path, fetch.error)
                    return listing.entries
                raise fetch.error
            # The fetching request was interrupted: try again.

    def _load(self, path: str) -> Listing | None:
        stored = self._db.get_listing(path)
        if stored is None:
            return None
        fetched_at, rows = stored
        listing = Listing(fetched_at, {r["name"]: RemoteEntry(**r) for r in rows})
        self._mem[path] = listing
        return listing

    def _usable(self, directory: str, entry: RemoteEntry) -> bool:
        if entry.usable:
            return True
        # Once per name: listings are fetched again whenever they expire.
        if (directory, entry.name) not in self._warned:
            self._warned.add((directory, entry.name))
            log.warning("skipping %r in /%s: unusable size %r", entry.name, directory, entry.size)
        return False

    async def _fetch(self, path: str) -> dict[str, RemoteEntry]:
        # One bad size must not make the whole directory fail.
        entries = [e for e in await self._remote.list_dir(path) if self._usable(path, e)]
        now = time.time()
        self._mem[path] = Listing(now, {e.name: e for e in entries})
        await self._db.put_listing(path, now, [dataclasses.asdict(e) for e in entries])
        return self._mem[path].entries
