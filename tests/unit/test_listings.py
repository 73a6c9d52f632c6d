"""Directory listings: kept for the TTL in SQLite, one row per entry, fetched
once for concurrent look-ups, served stale while the remote is unreachable;
what streams in reads back whole, in order and a page at a time (issue 19);
handles keep the listing they opened; a database that cannot take a listing
keeps it in memory."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cachefs.cache.db import CacheDB
from cachefs.fs.listings import PAGE_ROWS, WRITE_BATCH, Listing, Listings, StoredListing

import pytest
import trio
import trio.testing

from cachefs.fs.listings import MemoryListing, name_bytes
from cachefs.remote import NotFound, RemoteEntry, Unreachable
from memory_remote import MemoryRemote


class GatedRemote(MemoryRemote):
    """list_dir waits at `gate` while one is set, and may list extra entries."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.gate: trio.Event | None = None
        self.extra: list[RemoteEntry] = []

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        entries = await super().list_dir(path)
        if self.gate is not None:
            await self.gate.wait()
        return entries + self.extra


def names(listing) -> list[str]:
    return sorted(e.name for e in listing)


def run(main) -> None:
    async def bounded() -> None:
        with trio.fail_after(10):
            await main()

    trio.run(bounded)


def test_a_listing_is_fetched_once_per_ttl(new_listings) -> None:
    remote = MemoryRemote({"a": b"1", "d/b": b"2"})
    listings = new_listings(remote, ttl=60)

    async def main() -> None:
        assert listings.fresh("") is None and listings.cached("") is None
        assert names(await listings.get("")) == ["a", "d"]
        assert names(await listings.get("")) == ["a", "d"]
        assert names(await listings.get("d")) == ["b"]
        assert remote.calls["list_dir"] == 2
        assert listings.fresh("") is listings.cached("")
        assert listings.fresh("").entry("a").size == 1

    run(main)


def test_an_expired_listing_is_fetched_again(new_listings) -> None:
    remote = MemoryRemote({"a": b"1"})
    listings = new_listings(remote, ttl=0.05)

    async def main() -> None:
        await listings.get("")
        remote.put("b", b"22")
        await trio.sleep(0.06)
        assert listings.fresh("") is None
        assert names(listings.cached("")) == ["a"]  # however old
        assert names(await listings.get("")) == ["a", "b"]
        assert remote.calls["list_dir"] == 2

    run(main)


def test_concurrent_lookups_share_one_fetch(new_listings) -> None:
    remote = GatedRemote({"a": b"1"})
    listings = new_listings(remote, ttl=60)
    results: list[list[str]] = []

    async def get() -> None:
        results.append(names(await listings.get("")))

    async def main() -> None:
        remote.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()
            remote.gate.set()
        assert results == [["a"]] * 5
        assert remote.calls["list_dir"] == 1

    run(main)


def test_when_the_fetching_lookup_is_interrupted_a_waiting_one_fetches(new_listings) -> None:
    remote = GatedRemote({"a": b"1"})
    listings = new_listings(remote, ttl=60)
    results: list[list[str]] = []

    async def waiter() -> None:
        results.append(names(await listings.get("")))

    async def main() -> None:
        remote.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)  # waits for the fetch of the get below
            with trio.move_on_after(0.05) as interrupted:
                await listings.get("")
            assert interrupted.cancelled_caught
            await trio.testing.wait_all_tasks_blocked()
            remote.gate.set()
        assert results == [["a"]]
        assert remote.calls["list_dir"] == 2

    run(main)


def test_listings_outlive_the_process(new_listings) -> None:
    remote = MemoryRemote({"a": b"1"})

    async def main() -> None:
        await new_listings(remote, ttl=60).get("")
        restarted = new_listings(remote, ttl=60)
        assert names(restarted.fresh("")) == ["a"]  # from the database
        assert names(await restarted.get("")) == ["a"]
        assert remote.calls["list_dir"] == 1

    run(main)


def test_offline_an_old_listing_is_served_but_a_missing_directory_is_not(new_listings) -> None:
    remote = MemoryRemote({"a": b"1", "d/x": b"2"})
    listings = new_listings(remote, ttl=0)

    async def main() -> None:
        await listings.get("")
        await listings.get("d")
        remote.fail_next("list_dir", Unreachable("connection refused"))
        assert names(await listings.get("")) == ["a", "d"]
        remote.fail_next("list_dir", NotFound("gone"))
        with pytest.raises(NotFound):
            await listings.get("d")
        # Never listed: nothing to fall back on.
        remote.fail_next("list_dir", Unreachable("connection refused"))
        with pytest.raises(Unreachable):
            await listings.get("e")

    run(main)


def test_entries_of_impossible_sizes_are_skipped_with_one_warning(new_listings, caplog) -> None:
    remote = GatedRemote({"a": b"1"})
    remote.extra = [RemoteEntry("bad", False, -5), RemoteEntry("huge", False, 2**63)]
    listings = new_listings(remote, ttl=0)

    async def main() -> None:
        with caplog.at_level(logging.WARNING, logger="cachefs.fs.listings"):
            for _ in range(3):
                assert names(await listings.get("")) == ["a"]
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2 and "'bad'" in warnings[0] and "'huge'" in warnings[1]

    run(main)


def test_update_entry_records_what_a_stat_found(new_listings) -> None:
    remote = MemoryRemote({"a": b"1", "b": b"2"})
    listings = new_listings(remote, ttl=60)

    async def main() -> None:
        await listings.get("")
        before = listings.cached("")
        key, fetched_at = before.key, before.fetched_at
        await listings.update_entry("", "a", RemoteEntry("a", False, 3, 0.0, "v9"))
        await listings.update_entry("", "b", None)
        await listings.update_entry("", "bad", RemoteEntry("bad", False, -1))
        now = listings.cached("")
        assert now.key != key and now.fetched_at == fetched_at  # no younger for it
        assert names(now) == ["a"] and now.entry("a").version == "v9" and len(now) == 1
        restarted = new_listings(remote, ttl=60)
        assert (await restarted.get("")).entry("a").version == "v9"
        await listings.update_entry("never-listed", "x", None)  # nothing to update
        assert listings.cached("never-listed") is None

    run(main)


def test_listing_order_is_by_name() -> None:
    listing = MemoryListing(0.0, {name_bytes(n): RemoteEntry(n, False) for n in ("b", "a", "C", "é")})
    assert [e.name for e in listing] == ["C", "a", "b", "é"]
    assert [e.name for e in listing.page_at(1, 2)] == ["a", "b"]


# -- stored one row per entry (issue 19) ---------------------------------------


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
