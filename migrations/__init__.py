"""Schema migrations for the cache database.

The schema changes only through the steps registered here, applied in order
when a cache is opened. Each step lives in its own module, named by number;
never edit a step that has shipped, add a new one and name it in `STEPS`.

sqlite-utils applies them (`MIGRATIONS.apply`) and records each applied step
in its `_sqlite_migrations` table. Importing sqlite-utils takes a good part
of a mount's start-up, so `pending` reads that table with plain sqlite3, and
`MIGRATIONS` (with sqlite-utils and the steps) is loaded only when a step is
still to apply: a new cache, or one a newer cachefs opens for the first time.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils.migrations import Migrations

    MIGRATIONS: Migrations

# The name of our set in sqlite-utils' `_sqlite_migrations` table.
SET_NAME = "cachefs"
# Every step, in order: each is the function of the same name in the module
# of the same name (tests/unit check that these are the registered ones).
STEPS = ("m001_initial", "m002_pins", "m003_validators", "m004_listing_rows")


def pending(conn: sqlite3.Connection) -> bool:
    """Whether some step is not yet applied to the database of `conn`."""
    try:
        applied = {row[0] for row in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (SET_NAME,))}
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return True  # a new database
        raise
    return not applied.issuperset(STEPS)


@contextmanager
def _numpy_hidden() -> Iterator[None]:
    """While sqlite-utils loads, make numpy look absent.

    sqlite-utils imports numpy whenever it is installed (matplotlib, for
    `cachefs bench`'s chart, brings it), only to map numpy types to columns
    the cache never stores: 0.05 to 0.15 s more on every new cache. Only its
    own import is kept from numpy: the process may still import it later.
    """
    if "numpy" in sys.modules:
        yield
        return
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "numpy" in sys.modules and sys.modules["numpy"] is None:
            del sys.modules["numpy"]


def apply_pending(conn: sqlite3.Connection) -> None:
    """Apply the steps not yet applied; sqlite-utils is imported only if any is."""
    if pending(conn):
        with _numpy_hidden():
            from sqlite_utils import Database

        migrations = globals().get("MIGRATIONS") or _load()
        migrations.apply(Database(conn))


def _load() -> Migrations:
    with _numpy_hidden():
        from sqlite_utils.migrations import Migrations

    migrations = Migrations(SET_NAME)
    # Before the steps' modules, which register themselves on it.
    globals()["MIGRATIONS"] = migrations
    for step in STEPS:
        import_module(f".{step}", __name__)
    return migrations


def __getattr__(name: str) -> Any:
    # Only until _load has run: then MIGRATIONS is a global of its own.
    if name == "MIGRATIONS":
        return _load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
