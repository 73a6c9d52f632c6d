"""Read-ahead across a directory's small files.

A file of one chunk or less costs a whole HTTP round trip when it is opened,
and a program that reads a directory file by file (cp -r, tar, rsync, a
loop over sorted names) waits for each in turn. When opens of small files
walk a directory in listing order, the next few are fetched before they are
asked for, so their round trips overlap. A program that jumps around never
triggers it, and the window is bounded in files and bytes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass

from cachefs.remote import RemoteEntry

from .listings import Listing, name_bytes

WINDOW_FILES = 16  # how many files ahead of the reader
WINDOW_BYTES = 64 * 1024 * 1024  # and at most this many bytes
MIN_STREAK = 2  # opens in listing order before read-ahead starts
MAX_GAP = 2  # a reader may skip a name (e.g. a subdirectory) and still be in order
MAX_DIRECTORIES = 1024  # cursors kept, most recently used
# Entries read from the listing at a time: a reader walking the directory
# then costs one page read per this many opens, not two per open.
PAGE_ENTRIES = 4 * WINDOW_FILES


@dataclass
class _Cursor:
    name: bytes  # the last small file opened
    streak: int  # consecutive opens in listing order
    issued_to: bytes  # read-ahead has been started up to this name


@dataclass
class _Page:
    """Entries of one listing (by its key) read in order after the name `after`."""

    listing_key: tuple[int, int]
    after: bytes
    entries: list[RemoteEntry]
    names: list[bytes]  # of the entries, as the listing orders them
    index: dict[bytes, int]  # name -> position in entries
    to_end: bool  # the listing has nothing after the last entry


class DirectoryReadahead:
    """Decides which siblings of a just-opened small file to fetch early."""

    def __init__(self, small_size: int) -> None:
        self._small_size = small_size
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._pages: dict[str, _Page] = {}  # the last page read of each directory with a cursor

    def on_open(self, directory: str, listing: Listing, name: str) -> list[RemoteEntry]:
        """Note that `name` in `directory` was opened; return entries to fetch now.

        Works on names, not positions, so that a listing read from the
        database a page at a time answers it, a page per many opens."""
        raw = name_bytes(name)
        cursor = self._cursors.get(directory)
        if cursor is not None and raw > cursor.name and raw in self._following(
                directory, listing, cursor.name, MAX_GAP)[1]:
            cursor.name, cursor.streak = raw, cursor.streak + 1
        else:
            cursor = _Cursor(raw, 1, raw)
        self._remember(directory, cursor)
        if cursor.streak < MIN_STREAK:
            return []
        # The window ends WINDOW_FILES names after the one opened; what is
        # up to `issued_to` in it was started by earlier opens.
        window, names = self._following(directory, listing, raw, WINDOW_FILES)
        first = bisect.bisect_right(names, cursor.issued_to)
        picks: list[RemoteEntry] = []
        budget = WINDOW_BYTES
        for entry, entry_name in zip(window[first:], names[first:]):
            if entry.is_dir or entry.size > self._small_size:
                cursor.issued_to = entry_name
                continue
            if entry.size > budget:
                break
            budget -= entry.size
            picks.append(entry)
            cursor.issued_to = entry_name
        else:
            if names:
                cursor.issued_to = max(cursor.issued_to, names[-1])
        return picks

    def _following(self, directory: str, listing: Listing, name: bytes,
                   count: int) -> tuple[list[RemoteEntry], list[bytes]]:
        """Up to `count` entries after `name`, and their names: from the
        directory's last page when it holds them, else from a new page read there."""
        page = self._pages.get(directory)
        if page is not None and page.listing_key == listing.key:
            if name == page.after:
                start: int | None = 0
            else:
                pos = page.index.get(name)
                start = None if pos is None else pos + 1
            if start is not None and (start + count <= len(page.entries) or page.to_end):
                return page.entries[start:start + count], page.names[start:start + count]
        entries = listing.page(name, PAGE_ENTRIES)
        names = [name_bytes(e.name) for e in entries]
        self._pages[directory] = _Page(listing.key, name, entries, names,
                                       {n: i for i, n in enumerate(names)}, len(entries) < PAGE_ENTRIES)
        return entries[:count], names[:count]

    def _remember(self, directory: str, cursor: _Cursor) -> None:
        self._cursors[directory] = cursor
        self._cursors.move_to_end(directory)
        while len(self._cursors) > MAX_DIRECTORIES:
            old, _ = self._cursors.popitem(last=False)
            self._pages.pop(old, None)


LISTING_WINDOW = 4  # directory listings fetched ahead of the reader
LISTING_SCAN = 16  # entries looked through for the next directories


class ListingReadahead:
    """Decides which sibling directories of a just-opened one to list early.

    `find`, `ls -R` and `du` open a directory's subdirectories one after
    another in listing order, and each waits for its listing's round trip.
    Once two opens came in order, the listings of the next few directories
    are fetched meanwhile. Only directories count in the order: files
    between them are passed over.
    """

    def __init__(self) -> None:
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()

    def on_open(self, directory: str, listing: Listing, name: str) -> list[RemoteEntry]:
        """Note that subdirectory `name` of `directory` was opened; return those to list now."""
        raw = name_bytes(name)
        cursor = self._cursors.get(directory)
        if cursor is not None and raw > cursor.name and raw in self._next(listing, cursor.name, MAX_GAP):
            cursor.name, cursor.streak = raw, cursor.streak + 1
        else:
            cursor = _Cursor(raw, 1, raw)
        self._cursors[directory] = cursor
        self._cursors.move_to_end(directory)
        while len(self._cursors) > MAX_DIRECTORIES:
            self._cursors.popitem(last=False)
        if cursor.streak < MIN_STREAK:
            return []
        picks = [e for e in self._next_entries(listing, raw, LISTING_WINDOW) if name_bytes(e.name) > cursor.issued_to]
        if picks:
            cursor.issued_to = name_bytes(picks[-1].name)
        return picks

    @staticmethod
    def _next_entries(listing: Listing, after: bytes, count: int) -> list[RemoteEntry]:
        return [e for e in listing.page(after, LISTING_SCAN) if e.is_dir][:count]

    def _next(self, listing: Listing, after: bytes, count: int) -> set[bytes]:
        return {name_bytes(e.name) for e in self._next_entries(listing, after, count)}
