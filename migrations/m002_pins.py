"""Pins: paths whose cached data eviction must keep (`cachefs prefetch --pin`)."""

from sqlite_utils import Database

from . import MIGRATIONS


@MIGRATIONS()
def m002_pins(db: Database) -> None:
    # Keyed by path, not object version: a pin holds across remote changes.
    db.execute("CREATE TABLE pins (key TEXT PRIMARY KEY, pinned_at REAL NOT NULL)")
