"""Schema migrations for the cache database.

The schema changes only through the steps registered here, applied in order
when a cache is opened. Each step lives in its own module, named by number;
never edit a step that has shipped, add a new one.
"""

from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("cachefs")

from . import m001_initial, m002_pins, m003_validators, m004_listing_rows  # noqa: E402,F401  (each registers itself)
