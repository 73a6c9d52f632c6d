"""Directory listings: kept for the TTL in memory and in SQLite, fetched once
for concurrent look-ups, and served stale while the remote is unreachable."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from cachefs.fs.listings import Listing
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


def names(entries: dict[str, RemoteEntry]) -> list[str]:
    return sorted(entries)


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
        assert listings.fresh("").entries["a"].size == 1

    run(main)


def test_an_expired_listing_is_fetched_again(new_listings) -> None:
    remote = MemoryRemote({"a": b"1"})
    listings = new_listings(remote, ttl=0.05)

    async def main() -> None:
        await listings.get("")
        remote.put("b", b"22")
        await trio.sleep(0.06)
        assert listings.fresh("") is None
        assert names(listings.cached("").entries) == ["a"]  # however old
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
        assert restarted.fresh("") is None  # memory only
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
        await listings.update_entry("", "a", RemoteEntry("a", False, 3, 0.0, "v9"))
        await listings.update_entry("", "b", None)
        await listings.update_entry("", "bad", RemoteEntry("bad", False, -1))
        now = listings.cached("")
        assert now is not before and now.fetched_at == before.fetched_at  # no younger for it
        assert names(now.entries) == ["a"] and now.entries["a"].version == "v9"
        restarted = new_listings(remote, ttl=60)
        assert (await restarted.get(""))["a"].version == "v9"
        await listings.update_entry("never-listed", "x", None)  # nothing to update
        assert listings.cached("never-listed") is None

    run(main)


def test_listing_order_is_by_name() -> None:
    listing = Listing(0.0, {n: RemoteEntry(n, False) for n in ("b", "a", "C", "é")})
    assert listing.order == ["C", "a", "b", "é"]
    assert listing.position == {"C": 0, "a": 1, "b": 2, "é": 3}
