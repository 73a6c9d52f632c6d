"""Validators: which version of the remote's bytes a cached object holds."""

from sqlite_utils import Database

from . import MIGRATIONS


@MIGRATIONS()
def m003_validators(db: Database) -> None:
    # "etag:...", "lm:<seconds>", or "" for a server that gives neither.
    # NULL marks rows recorded before validators were kept: their chunks
    # may come from different versions, so a partial one is fetched again.
    db.execute("ALTER TABLE objects ADD COLUMN validator TEXT")
