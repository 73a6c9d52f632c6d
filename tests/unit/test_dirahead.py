"""Read-ahead across a directory's small files, on listings read by name."""

from __future__ import annotations

from cachefs.fs.dirahead import MIN_STREAK, WINDOW_FILES, DirectoryReadahead
from cachefs.fs.listings import MemoryListing, name_bytes
from cachefs.remote import RemoteEntry

SMALL = 1000


def _listing() -> MemoryListing:
    entries = [RemoteEntry(f"f{i:03d}", False, 10, 1.0, "v") for i in range(60)]
    entries[5] = RemoteEntry("f005", True)  # a directory
    entries[6] = RemoteEntry("f006", False, SMALL + 1, 1.0, "v")  # too big to read ahead
    return MemoryListing(1.0, {name_bytes(e.name): e for e in entries})


def test_opens_in_listing_order_read_the_next_small_files_ahead_once() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    listing = _listing()
    assert MIN_STREAK == 2
    assert ahead.on_open("d", listing, "f000") == []
    picks = ahead.on_open("d", listing, "f001")
    names = [e.name for e in picks]
    assert names[0] == "f002" and "f005" not in names and "f006" not in names
    assert names[-1] == f"f{1 + WINDOW_FILES:03d}"
    # The next open in order adds only what is new at the window's end.
    assert [e.name for e in ahead.on_open("d", listing, "f002")] == [f"f{2 + WINDOW_FILES:03d}"]


def test_a_jump_starts_over() -> None:
    ahead = DirectoryReadahead(small_size=SMALL)
    listing = _listing()
    ahead.on_open("d", listing, "f010")
    assert ahead.on_open("d", listing, "f040") == []  # out of order: a new streak
    assert ahead.on_open("d", listing, "f039") == []  # backwards
    assert ahead.on_open("d", listing, "f045") == []  # too far ahead of f039
    # One name may be skipped (a subdirectory, say) and still be in order.
    assert [e.name for e in ahead.on_open("d", listing, "f047")][:1] == ["f048"]
