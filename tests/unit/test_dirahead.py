"""Read-ahead across a directory's small files: only for opens in listing order."""

from __future__ import annotations

from cachefs.fs import dirahead
from cachefs.fs.dirahead import MIN_STREAK, WINDOW_FILES, DirectoryReadahead
from cachefs.fs.dirahead import ListingReadahead
from cachefs.fs.listings import Listing, MemoryListing, name_bytes
from cachefs.remote import RemoteEntry

SMALL = 1000


def listing(count: int, size: int = 100, dirs: tuple[str, ...] = (),
            extra: tuple[RemoteEntry, ...] = ()) -> Listing:
    entries = [RemoteEntry(f"f{i:03d}", False, size) for i in range(count)]
    entries += [RemoteEntry(d, True) for d in dirs]
    entries += extra
    return MemoryListing(0.0, {name_bytes(e.name): e for e in entries})


def picked(entries: list[RemoteEntry]) -> list[str]:
    return [e.name for e in entries]


def test_opens_in_order_start_read_ahead_and_never_repeat_it() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    files = listing(40)
    assert MIN_STREAK == 2
    assert ahead.on_open("d", files, "f000") == []
    first = picked(ahead.on_open("d", files, "f001"))
    assert first == [f"f{i:03d}" for i in range(2, 2 + WINDOW_FILES)]
    # The next open adds only what the window gained.
    assert picked(ahead.on_open("d", files, "f002")) == [f"f{2 + WINDOW_FILES:03d}"]
    # A reader may skip a name and still be in order.
    assert picked(ahead.on_open("d", files, "f004")) == [f"f{i:03d}" for i in range(3 + WINDOW_FILES, 5 + WINDOW_FILES)]


def test_jumping_around_reads_nothing_ahead() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    files = listing(40)
    for name in ("f010", "f003", "f030", "f020", "f000", "f039"):
        assert ahead.on_open("d", files, name) == []
    assert ahead.on_open("d", files, "not listed") == []


def test_big_files_and_directories_are_left_out_and_bytes_are_bounded(monkeypatch) -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    files = listing(4, dirs=("f001a",), extra=(RemoteEntry("f002", False, SMALL + 1),))
    ahead.on_open("d", files, "f000")
    assert picked(ahead.on_open("d", files, "f001")) == ["f003"]

    monkeypatch.setattr(dirahead, "WINDOW_BYTES", 250)
    bounded = DirectoryReadahead(small_size=SMALL)
    files = listing(10)
    bounded.on_open("e", files, "f000")
    assert picked(bounded.on_open("e", files, "f001")) == ["f002", "f003"]  # 100 + 100, not a third


def test_each_directory_has_its_own_cursor() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    a, b = listing(10), listing(10)
    ahead.on_open("a", a, "f000")
    assert ahead.on_open("b", b, "f001") == []  # b's first open
    assert picked(ahead.on_open("a", a, "f001"))[:1] == ["f002"]


def test_directories_opened_in_order_get_the_next_ones_listed_early() -> None:
    ahead = ListingReadahead()
    tree = listing(3, dirs=tuple(f"d{i:02d}" for i in range(12)))
    assert ahead.on_open("", tree, "d00") == []
    assert picked(ahead.on_open("", tree, "d01")) == ["d02", "d03", "d04", "d05"]
    assert picked(ahead.on_open("", tree, "d02")) == ["d06"]
    assert ahead.on_open("", tree, "d09") == []  # a jump starts over


class CountingListing(MemoryListing):
    """Counts the pages read, as each costs a query of a stored listing."""

    pages_read = 0

    def page(self, after, limit):
        self.pages_read += 1
        return super().page(after, limit)


def test_a_walk_through_a_directory_reads_a_page_per_many_opens() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    entries = [RemoteEntry(f"f{i:03d}", False, 100) for i in range(200)]
    files = CountingListing(0.0, {name_bytes(e.name): e for e in entries})
    issued = []
    for e in entries:
        issued += picked(ahead.on_open("d", files, e.name))
    # Every file after the first two is read ahead once, in order.
    assert issued == [e.name for e in entries[2:]]
    assert files.pages_read <= 200 // (dirahead.PAGE_ENTRIES - WINDOW_FILES) + 2
    # A listing fetched again is read again.
    again = CountingListing(0.0, {name_bytes(e.name): e for e in entries})
    ahead.on_open("d", again, "f000")
    ahead.on_open("d", again, "f001")
    assert again.pages_read >= 1
