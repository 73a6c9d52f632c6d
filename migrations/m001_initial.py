"""The first schema: objects, their cached chunks, and directory listings."""

from sqlite_utils import Database

from . import MIGRATIONS


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE objects (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,          -- path of the object in the remote
            version TEXT NOT NULL,      -- remote version token (ETag, size+mtime)
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            chunk_size INTEGER NOT NULL,
            data_name TEXT NOT NULL,    -- data file, relative to the data dir
            bytes_cached INTEGER NOT NULL DEFAULT 0,
            complete INTEGER NOT NULL DEFAULT 0,
            last_access REAL NOT NULL DEFAULT 0,
            UNIQUE (key, version)
        )
        """
    )
    # A row here promises that the chunk's bytes are on disk (written and
    # fdatasync'ed before the row was committed).
    db.execute(
        """
        CREATE TABLE chunks (
            object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            PRIMARY KEY (object_id, idx)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE listings (
            path TEXT PRIMARY KEY,      -- directory path in the remote, '' is the root
            fetched_at REAL NOT NULL,
            entries TEXT NOT NULL       -- JSON list of entries
        )
        """
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
