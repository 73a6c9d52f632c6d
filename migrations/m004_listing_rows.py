"""Listings as one row per entry, so a directory of a million names is
written as it streams in and read a page at a time, never held whole."""

from sqlite_utils import Database

from . import MIGRATIONS


@MIGRATIONS()
def m004_listing_rows(db: Database) -> None:
    # One row per fetch of a directory. Entries are written under a new id
    # while `state` is 0 (filling); finishing a fetch makes it 1 (current)
    # and the path's previous current one 2 (superseded: kept while open
    # directory handles read it, then deleted).
    db.execute(
        """
        CREATE TABLE dir_listings (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,         -- directory path in the remote, '' is the root
            fetched_at REAL NOT NULL,
            state INTEGER NOT NULL DEFAULT 0,
            entries INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX dir_listings_current ON dir_listings (path) WHERE state = 1")
    # Names are the bytes the kernel sees (UTF-8, surrogate-escaped): their
    # order is the order readdir shows.
    db.execute(
        """
        CREATE TABLE dir_entries (
            listing_id INTEGER NOT NULL,
            name BLOB NOT NULL,
            is_dir INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            version TEXT NOT NULL,
            PRIMARY KEY (listing_id, name)
        ) WITHOUT ROWID
        """
    )
    # The JSON listings of earlier versions: fetched again when next needed.
    db.execute("DROP TABLE listings")
