"""What a cache holds, in figures, for `cachefs status`.

Read-only queries on the cache database's reader connection: they run on the
daemon's event loop thread, which a WAL reader never blocks (see `db`). Each
is one pass over the objects table, fine for a status request.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass

from .db import CacheDB


@dataclass(frozen=True)
class Usage:
    """Recorded cache contents: only durable chunks count (see `journal`)."""

    bytes_cached: int
    objects_complete: int
    objects_partial: int  # some bytes recorded, not all
    pinned: int  # pinned paths (`cachefs prefetch --pin`)

    def as_dict(self) -> dict:
        return asdict(self)


def _reader(db: CacheDB) -> sqlite3.Connection:
    # CacheDB keeps its reader private to keep writes off the event loop;
    # these are reads only, so borrowing it is within that rule.
    return db._reader.conn


def usage(db: CacheDB) -> Usage:
    """Bytes and objects recorded in `db`, and the number of pins."""
    conn = _reader(db)
    total, complete, partial = conn.execute(
        "SELECT COALESCE(SUM(bytes_cached), 0),"
        " COALESCE(SUM(complete != 0), 0),"
        " COALESCE(SUM(complete = 0 AND bytes_cached > 0), 0)"
        " FROM objects"
    ).fetchone()
    (pinned,) = conn.execute("SELECT COUNT(*) FROM pins").fetchone()
    return Usage(int(total), int(complete), int(partial), int(pinned))

