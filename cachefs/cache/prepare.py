"""A new cache's database, made by `cachefs mount` ahead of its daemon.

Making a new cache's database takes a good part of a first mount's start:
sqlite-utils to import and the schema's migrations to apply. `cachefs
mount` starts its daemon first and has little else to do meanwhile, so it
makes a database with the current schema itself, on the other core, while
the daemon loads. It lies in the cache dir under a hidden name until the
daemon opens its source's folder: a folder without a database takes it as
its own (`folder.HeldFolder.take`), so the daemon opens a known cache.
The command removes it if the daemon did not take it. Plain sqlite3: no
trio in the command.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cachefs import migrations

# As long as the daemon waits for another process's lock on a database.
OPEN_TIMEOUT_S = 5.0


def prepare_database(cache_dir: Path) -> Path | None:
    """A database with the current schema, made in `cache_dir` under a name
    no source folder has; None if it could not be made (the daemon then
    makes one, and says what is wrong). Private (umask 077), as the daemon's
    files are."""
    path = cache_dir / f".new-state-{os.getpid()}.db"
    mask = os.umask(0o077)
    try:
        conn = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # what the daemon sets: a setting of the file
            migrations.apply_pending(conn)
        finally:
            conn.close()  # the last connection: its WAL is written back and removed
    except (OSError, sqlite3.Error):
        discard_database(path)
        return None
    finally:
        os.umask(mask)
    return path


def discard_database(path: Path) -> None:
    """Remove a prepared database nobody took."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        except OSError:
            pass
