"""Listings stored one row per entry (issue 19): what streams in reads back
whole, in order and a page at a time; the TTL; handles keep the listing they
opened; a database that cannot take a listing keeps it in memory."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from memory_remote import MemoryRemote

from cachefs.cache.db import CacheDB
from cachefs.fs.listings import (
    PAGE_ROWS,
    WRITE_BATCH,
    Listing,
    Listings,
    MemoryListing,
    StoredListing,
    name_bytes,
)
from cachefs.remote import RemoteEntry, Unreachable

NAMES = ["b", "a", "é", "Z", "a b", "\udcff-raw", "10", "9"] + [f"n{i:05d}" for i in range(700)]


class PagedRemote(MemoryRemote):
    """A MemoryRemote that gives its listings in batches, as S3 does."""

    def __init__(self, batches: list[list[RemoteEntry]]) -> None:
        super().__init__()
        self.batches = batches

    @asynccontextmanager
    async def list_dir_pages(self, path: str) -> AsyncIterator[AsyncIterator[list[RemoteEntry]]]:
        self.calls["list_dir"] += 1

        async def batches() -> AsyncIterator[list[RemoteEntry]]:
            for batch in self.batches:
                await trio.lowlevel.checkpoint()
                yield batch

        yield batches()


def _file(name: str, size: int = 1) -> RemoteEntry:
    return RemoteEntry(name, False, size, 1.0, f"v{size}")


def _run(tmp_path: Path, remote: MemoryRemote, job, ttl: float = 60.0) -> None:
    async def main() -> None:
        db = CacheDB(tmp_path / "state.db")
        try:
            await job(Listings(remote, db, ttl), db)
        finally:
            db.close()

    trio.run(main)


def test_a_listing_streams_in_and_reads_back_in_order_a_page_at_a_time(tmp_path: Path) -> None:
    entries = [_file(n, i) for i, n in enumerate(NAMES)]
    remote = PagedRemote([entries[i : i + 100] for i in range(0, len(entries), 100)])

    async def job(listings: Listings, db: CacheDB) -> None:
        listing = await listings.get("dir")
        assert isinstance(listing, StoredListing) and len(listing) == len(NAMES)
        order = sorted(NAMES, key=name_bytes)
        assert [e.name for e in listing] == order
        assert [e.name for e in listing.page_at(3, 4)] == order[3:7]
        assert [e.name for e in listing.page(name_bytes(order[10]), 2)] == order[11:13]
        assert listing.entry("é") == entries[NAMES.index("é")]
        assert listing.entry("\udcff-raw") == entries[NAMES.index("\udcff-raw")]
        assert listing.entry("missing") is None
        # Fresh within the TTL: no second request, also for a new Listings (a restart).
        assert await listings.get("dir") is listing
        again = Listings(remote, db, 60.0)
        assert [e.name for e in await again.get("dir")] == order
        assert remote.calls["list_dir"] == 1

    _run(tmp_path, remote, job)
    assert len(NAMES) > 2 * PAGE_ROWS


def test_a_directory_wins_over_a_file_of_its_name_in_another_batch(tmp_path: Path) -> None:
    remote = PagedRemote([[_file("x"), _file("y")], [RemoteEntry("x", True), _file("z")],
                          [RemoteEntry("z", True)], [_file("z", 5)]])

    async def job(listings: Listings, db: CacheDB) -> None:
        listing = await listings.get("")
        assert [(e.name, e.is_dir) for e in listing] == [("x", True), ("y", False), ("z", True)]

    _run(tmp_path, remote, job)


def test_an_expired_listing_is_fetched_again_and_the_old_one_kept_while_held(tmp_path: Path) -> None:
    remote = PagedRemote([[_file("old")]])

    async def job(listings: Listings, db: CacheDB) -> None:
        first = await listings.get("d")
        listings.hold(first)
        first.fetched_at -= 120  # past the TTL
        remote.batches = [[_file("new")]]
        second = await listings.get("d")
        assert [e.name for e in second] == ["new"] and second.key != first.key
        # An open handle still reads the listing it opened on.
        assert [e.name for e in first] == ["old"]
        listings.release(first)
        second.fetched_at -= 120
        remote.batches = [[_file("newer")]]
        await listings.get("d")
        assert isinstance(first, StoredListing)
        assert db.listing_page(first.id, None, 10) == []  # dropped once no handle held it

    _run(tmp_path, remote, job)


def test_an_updated_entry_changes_the_listing_key(tmp_path: Path) -> None:
    remote = PagedRemote([[_file("a"), _file("b")]])

    async def job(listings: Listings, db: CacheDB) -> None:
        listing = await listings.get("d")
        key = listing.key
        await listings.update_entry("d", "a", _file("a", 7))
        assert listing.key != key and listing.entry("a") == _file("a", 7) and len(listing) == 2
        await listings.update_entry("d", "b", None)
        assert [e.name for e in listing] == ["a"] and len(listing) == 1
        await listings.update_entry("d", "c", _file("c"))
        assert [e.name for e in Listings(remote, db, 60.0).cached("d")] == ["a", "c"]

    _run(tmp_path, remote, job)


@pytest.mark.parametrize("many", [False, True], ids=["in one write", "streamed"])
def test_a_database_that_cannot_store_keeps_the_listing_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    extra = [_file(f"n{i:05d}") for i in range(WRITE_BATCH * 2 if many else 0)]
    remote = PagedRemote([[_file("b")], [_file("a"), RemoteEntry("c", True)], extra])

    async def job(listings: Listings, db: CacheDB) -> None:
        async def full(*args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(db, "add_listing_entries", full)
        monkeypatch.setattr(db, "store_listing", full)
        listing: Listing = await listings.get("d")
        assert isinstance(listing, MemoryListing)
        assert [(e.name, e.is_dir) for e in listing][:3] == [("a", False), ("b", False), ("c", True)]
        assert len(listing) == 3 + len(extra)
        assert listing.entry("c") == RemoteEntry("c", True)
        assert db.old_listings() == []  # a half-filled one was dropped

    _run(tmp_path, remote, job)


def test_a_listing_cut_short_fails_as_the_remote_said_and_leaves_nothing(tmp_path: Path) -> None:
    class CutShort(PagedRemote):
        @asynccontextmanager
        async def list_dir_pages(self, path: str) -> AsyncIterator[AsyncIterator[list[RemoteEntry]]]:
            async def batches() -> AsyncIterator[list[RemoteEntry]]:
                yield [_file(f"n{i:05d}") for i in range(5000)]
                raise Unreachable("connection reset")

            yield batches()

    async def job(listings: Listings, db: CacheDB) -> None:
        with pytest.raises(Unreachable):
            await listings.get("d")
        assert db.old_listings() == [] and db.current_listing("d") is None

    _run(tmp_path, CutShort([]), job)
