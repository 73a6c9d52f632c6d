"""The cache's SQLite state: what objects and chunks are on disk, and listings.

Two connections to one WAL database. The reader serves point look-ups on the
event loop thread: under WAL a reader never waits for the writer, so these
are bounded (an indexed look-up in a local file). Every write goes through
the writer connection on a single worker thread, so the request path never
waits for a commit or an fsync.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from cachefs import migrations

T = TypeVar("T")

log = logging.getLogger(__name__)


class CorruptDatabase(Exception):
    """The database file cannot be opened or migrated."""


class DatabaseLocked(CorruptDatabase):
    """Another process holds a lock on the database (an sqlite3 shell...)."""


class StateLost(sqlite3.DatabaseError):
    """The database failed in a way a full disk or a lock does not explain
    (truncated, removed, replaced...); the cache checks and rebuilds it."""


# SQLite errors that say nothing about the file itself being lost.
_TRANSIENT = ("full", "locked", "busy", "interrupted")


def is_transient(error: sqlite3.Error) -> bool:
    return any(word in str(error).lower() for word in _TRANSIENT)


# How long opening the database waits for another process's lock: long
# enough for a passing transaction, short enough that `cachefs mount` says
# why it cannot start instead of seeming to hang.
OPEN_BUSY_TIMEOUT_S = 5.0
# Once open, writes (on their own thread) wait this long for a lock.
BUSY_TIMEOUT_S = 30.0
# Reads run on the event loop, where a wait stalls every request; under WAL
# they wait only while a damaged WAL index is recovered. A read that gives
# up finds "nothing cached", which is safe.
READ_BUSY_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ObjectRow:
    """A cached object version as recorded in SQLite."""

    id: int
    key: str
    version: str
    size: int
    mtime: float
    chunk_size: int
    data_name: str
    bytes_cached: int
    complete: bool
    # The remote validator its chunks were fetched under; None: not known
    # (recorded by a version of cachefs that did not keep it).
    validator: str | None = None


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk whose bytes are durable, ready to be recorded."""

    object_id: int
    idx: int
    nbytes: int
    nchunks: int  # chunks in the whole object


class ListingUnreadable(Exception):
    """The database cannot give the rows of a stored listing right now."""


# A listing entry: (name as bytes, is_dir, size, mtime, version).
ListingRow = tuple[bytes, int, int, float, str]
_ENTRY_COLUMNS = "name, is_dir, size, mtime, version"
_UPSERT_ENTRY = (
    "INSERT INTO dir_entries (listing_id, name, is_dir, size, mtime, version) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (listing_id, name) DO UPDATE SET is_dir = excluded.is_dir, size = excluded.size,"
    " mtime = excluded.mtime, version = excluded.version WHERE excluded.is_dir >= dir_entries.is_dir"
)

_OBJECT_COLUMNS = "id, key, version, size, mtime, chunk_size, data_name, bytes_cached, complete, validator"


def _object_row(row: tuple) -> ObjectRow:
    return ObjectRow(*row[:8], complete=bool(row[8]), validator=row[9])


@dataclass(frozen=True)
class Usage:
    """Recorded cache contents: only durable chunks count (see `journal`)."""

    bytes_cached: int
    objects_complete: int
    objects_partial: int  # some bytes recorded, not all
    pinned: int  # pinned paths (`cachefs prefetch --pin`)

    def as_dict(self) -> dict:
        return asdict(self)


class Database(Protocol):
    """What a write is handed: its connection, `conn` (an sqlite-utils
    Database is one too; the cache needs no more than the connection, and
    loads sqlite-utils only to apply a migration)."""

    conn: sqlite3.Connection


@dataclass(frozen=True)
class Connection:
    """A plain connection as a `Database`."""

    conn: sqlite3.Connection


def _connect(path: Path, *, check_same_thread: bool, timeout: float = BUSY_TIMEOUT_S) -> Connection:
    conn = sqlite3.connect(path, check_same_thread=check_same_thread, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return Connection(conn)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the schema's pending migrations (see `cachefs.migrations`).

    A plain SELECT tells whether any is pending; only then is sqlite-utils,
    which applies them, imported: a known cache opens without it.
    """
    migrations.apply_pending(conn)


def _finish_listing(db: Database, listing_id: int, path: str) -> tuple[int, list[int]]:
    """Make listing `listing_id` the current one of `path`, in a write."""
    (count,) = db.conn.execute("SELECT COUNT(*) FROM dir_entries WHERE listing_id = ?", (listing_id,)).fetchone()
    old = [r[0] for r in db.conn.execute("SELECT id FROM dir_listings WHERE path = ? AND state = 1", (path,))]
    db.conn.execute("UPDATE dir_listings SET state = 2 WHERE path = ? AND state = 1", (path,))
    db.conn.execute("UPDATE dir_listings SET state = 1, entries = ? WHERE id = ?", (count, listing_id))
    return int(count), old


class OfflineDB:
    """A source folder's database as offline tools (fsck) see it, while they
    hold the folder's lock or only read: plain sqlite3, never migrated, so a
    check changes nothing a daemon of another version relies on."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise sqlite3.DatabaseError("no database")
        self._conn = sqlite3.connect(path, timeout=30)
        self._conn.execute("PRAGMA foreign_keys=ON")

    def __enter__(self) -> OfflineDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def quick_check(self) -> str:
        """SQLite's verdict on the file: "ok", or what is wrong."""
        return self._conn.execute("PRAGMA quick_check").fetchone()[0]

    def objects(self) -> list[ObjectRow]:
        """Every object row; validators are None in a database no daemon of
        this version has migrated yet."""
        columns = {c[1] for c in self._conn.execute("PRAGMA table_info(objects)")}
        select = _OBJECT_COLUMNS if "validator" in columns else _OBJECT_COLUMNS.replace("validator", "NULL")
        return [_object_row(r) for r in self._conn.execute(f"SELECT {select} FROM objects")]

    def chunks(self) -> list[tuple[int, int]]:
        """(object id, chunk index) of every chunk row."""
        return self._conn.execute("SELECT object_id, idx FROM chunks").fetchall()

    def source(self) -> str | None:
        """The source the folder caches, as the daemon recorded it."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        return row[0] if row else None

    def repair(self, drop_objects: Iterable[int], drop_chunks: dict[int, set[int]],
               recount: dict[int, tuple[int, bool]]) -> None:
        """In one transaction: delete objects and their chunks, delete single
        chunks, and set the (bytes_cached, complete) of objects."""
        with self._conn:
            for object_id in drop_objects:
                self._conn.execute("DELETE FROM chunks WHERE object_id = ?", (object_id,))
                self._conn.execute("DELETE FROM objects WHERE id = ?", (object_id,))
            for object_id, idxs in drop_chunks.items():
                self._conn.executemany("DELETE FROM chunks WHERE object_id = ? AND idx = ?",
                                       [(object_id, i) for i in idxs])
            for object_id, (bytes_cached, complete) in recount.items():
                self._conn.execute("UPDATE objects SET bytes_cached = ?, complete = ? WHERE id = ?",
                                   (bytes_cached, int(complete), object_id))


class CacheDB:
    """Reads on the caller's thread, writes on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Called (on the event loop) when a query fails as if the file were
        # lost; the cache then checks the files and rebuilds them if so.
        self.on_failure: Callable[[Exception], None] = lambda _e: None
        # Set while the cache rebuilds a lost database: reads find nothing
        # and writes fail, so that no row of the old one is used meanwhile.
        self.lost = False
        # Counts rebuilds: ids of rows read before one mean nothing after it.
        self.epoch = 0
        self._connect_all()
        self._write_limiter = trio.CapacityLimiter(1)
    def _connect_all(self) -> None:
        with self._opening():
            self._writer = _connect(self.path, check_same_thread=False, timeout=OPEN_BUSY_TIMEOUT_S)
            migrate(self._writer.conn)
            self._reader = _connect(self.path, check_same_thread=True, timeout=READ_BUSY_TIMEOUT_S)

    async def recreate(self, source: str) -> None:
        """Start over with an empty database at the same path (the old one is
        lost): every row, pin and listing is forgotten."""
        self.lost = True
        async with self._write_limiter:
            self.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._connect_all()
            self.set_meta("source", source)
        self.epoch += 1
        self.lost = False

    def _read(self, query: Callable[[], T], default: T) -> T:
        """Run a read; a failing database reads as "nothing cached", which
        is always safe (what is missing is fetched again)."""
        if self.lost:
            return default
        try:
            return query()
        except sqlite3.Error as e:
            if not is_transient(e):
                self.on_failure(e)
            return default

    @contextlib.contextmanager
    def _opening(self) -> Iterator[None]:
        """Turn SQLite's errors while opening into one-line ones."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise DatabaseLocked(
                    f"cache database {self.path} is locked by another process "
                    f"(still after {OPEN_BUSY_TIMEOUT_S:g} s)") from e
            raise CorruptDatabase(f"cache database {self.path} is unusable: {e}") from e
        except sqlite3.DatabaseError as e:
            raise CorruptDatabase(f"cache database {self.path} is unusable: {e}") from e

    def set_meta(self, key: str, value: str) -> None:
        """A setting of this cache; written once at start-up, before serving.
        Ends the opening: later writes wait longer for a lock."""
        with self._opening(), self._writer.conn:
            self._writer.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        self._writer.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")

    def close(self) -> None:
        self._reader.conn.close()
        self._writer.conn.close()

    async def write(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` in one transaction on the writer thread."""

        def run() -> T:
            if self.lost:
                raise StateLost("the cache database is being rebuilt")
            with self._writer.conn:
                return fn(self._writer)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._write_limiter)
        except sqlite3.Error as e:
            if is_transient(e) or isinstance(e, StateLost):
                raise
            self.on_failure(e)
            raise StateLost(str(e)) from e

    # --- objects -------------------------------------------------------------

    def find_object(self, key: str, version: str) -> ObjectRow | None:
        def query() -> ObjectRow | None:
            row = self._reader.conn.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE key = ? AND version = ?", (key, version)
            ).fetchone()
            return _object_row(row) if row else None

        return self._read(query, None)

    def chunks_of(self, object_id: int) -> set[int]:
        def query() -> set[int]:
            rows = self._reader.conn.execute("SELECT idx FROM chunks WHERE object_id = ?", (object_id,))
            return {r[0] for r in rows}

        return self._read(query, set())

    def bytes_cached(self) -> int:
        return self._read(lambda: self._reader.conn.execute(
            "SELECT COALESCE(SUM(bytes_cached), 0) FROM objects").fetchone()[0], 0)

    def usage(self) -> Usage:
        """Bytes and objects recorded, and the number of pins, for a status
        request: one pass over the objects table on the reader. A database
        that fails reads as an empty cache, as every other read does."""

        def query() -> Usage:
            conn = self._reader.conn
            total, complete, partial = conn.execute(
                "SELECT COALESCE(SUM(bytes_cached), 0),"
                " COALESCE(SUM(complete != 0), 0),"
                " COALESCE(SUM(complete = 0 AND bytes_cached > 0), 0)"
                " FROM objects"
            ).fetchone()
            (pinned,) = conn.execute("SELECT COUNT(*) FROM pins").fetchone()
            return Usage(int(total), int(complete), int(partial), int(pinned))

        return self._read(query, Usage(0, 0, 0, 0))

    def eviction_candidates(self, limit: int) -> list[ObjectRow]:
        """Cached objects not pinned, least recently opened first."""
        return self._read(lambda: [_object_row(r) for r in self._reader.conn.execute(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bytes_cached > 0"
            " AND key NOT IN (SELECT key FROM pins) ORDER BY last_access LIMIT ?",
            (limit,),
        )], [])

    def objects_under(self, path: str) -> list[ObjectRow]:
        """Objects at `path` or below it ('' is every object)."""
        if not path:
            rows = self._reader.conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects")
        else:
            # substr, not LIKE: paths may hold '%' and '_'.
            rows = self._reader.conn.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE key = ? OR substr(key, 1, ?) = ?",
                (path, len(path) + 1, path + "/"),
            )
        return [_object_row(r) for r in rows]

    async def delete_object(self, object_id: int) -> None:
        """Forget an object and its chunks (before its file is removed)."""
        await self.write(lambda db: db.conn.execute("DELETE FROM objects WHERE id = ?", (object_id,)))

    @staticmethod
    def touch(db: Database, accessed: dict[int, float]) -> None:
        """Record when objects were last opened; call through `write`."""
        db.conn.executemany(
            "UPDATE objects SET last_access = ? WHERE id = ?", [(t, i) for i, t in accessed.items()]
        )

    @staticmethod
    def insert_object(
        db: Database, key: str, version: str, size: int, mtime: float, chunk_size: int, data_name: str,
        validator: str | None = None,
    ) -> int:
        """Add an object row; call through `write`. Returns its id."""
        cur = db.conn.execute(
            "INSERT INTO objects (key, version, size, mtime, chunk_size, data_name, last_access, validator)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, version, size, mtime, chunk_size, data_name, time.time(), validator),
        )
        return int(cur.lastrowid)

    @staticmethod
    def set_validator(db: Database, object_id: int, validator: str) -> None:
        """Record the validator an object's chunks are pinned to; call through `write`."""
        db.conn.execute(
            "UPDATE objects SET validator = ? WHERE id = ? AND validator IS NOT ?", (validator, object_id, validator)
        )

    async def forget_chunks(self, object_id: int) -> None:
        """The data file no longer backs what was recorded: start over."""

        def forget(db: Database) -> None:
            db.conn.execute("DELETE FROM chunks WHERE object_id = ?", (object_id,))
            db.conn.execute(
                "UPDATE objects SET bytes_cached = 0, complete = 0, validator = NULL WHERE id = ?", (object_id,)
            )

        await self.write(forget)

    @staticmethod
    def record_chunks(db: Database, records: Iterable[ChunkRecord]) -> None:
        """Record durable chunks; call through `write` after the fdatasync."""
        now = time.time()
        records = list(records)
        for r in records:
            cur = db.conn.execute(
                "INSERT OR IGNORE INTO chunks (object_id, idx) VALUES (?, ?)", (r.object_id, r.idx)
            )
            if cur.rowcount:
                db.conn.execute(
                    "UPDATE objects SET bytes_cached = bytes_cached + ?, last_access = ? WHERE id = ?",
                    (r.nbytes, now, r.object_id),
                )
        # Complete only when every chunk is recorded as durable, whatever
        # the process believed: the database must never over-report.
        for object_id, nchunks in {(r.object_id, r.nchunks) for r in records}:
            db.conn.execute(
                "UPDATE objects SET complete = ((SELECT COUNT(*) FROM chunks WHERE object_id = ?) = ?)"
                " WHERE id = ?",
                (object_id, nchunks, object_id),
            )

    # --- pins ----------------------------------------------------------------

    async def pin(self, keys: list[str]) -> None:
        now = time.time()

        def pin(db: Database) -> None:
            db.conn.executemany(
                "INSERT OR REPLACE INTO pins (key, pinned_at) VALUES (?, ?)", [(k, now) for k in keys]
            )

        await self.write(pin)

    async def unpin(self, path: str) -> int:
        """Unpin `path` and everything under it ('' is everything); returns how many."""

        def unpin(db: Database) -> int:
            if not path:
                return db.conn.execute("DELETE FROM pins").rowcount
            # substr, not LIKE: paths may hold '%' and '_'.
            return db.conn.execute(
                "DELETE FROM pins WHERE key = ? OR substr(key, 1, ?) = ?",
                (path, len(path) + 1, path + "/"),
            ).rowcount

        return await self.write(unpin)

    def is_pinned(self, key: str) -> bool:
        # Unknown reads as pinned: kept from eviction, the safe side.
        return self._read(lambda: self._reader.conn.execute(
            "SELECT 1 FROM pins WHERE key = ?", (key,)).fetchone() is not None, True)

    # --- listings: one row per entry -----------------------------------------

    def _read_listing(self, query: Callable[[], T]) -> T:
        """Run a read of listing rows; ListingUnreadable if the database
        cannot answer (the caller then fetches the listing again)."""
        if self.lost:
            raise ListingUnreadable("the cache database is being rebuilt")
        try:
            return query()
        except sqlite3.Error as e:
            if not is_transient(e):
                self.on_failure(e)
            raise ListingUnreadable(str(e)) from e

    def current_listing(self, path: str) -> tuple[int, float, int] | None:
        """(id, fetched_at, number of entries) of the stored listing of `path`."""
        return self._read_listing(lambda: self._reader.conn.execute(
            "SELECT id, fetched_at, entries FROM dir_listings WHERE path = ? AND state = 1", (path,)
        ).fetchone())

    def listing_entry(self, listing_id: int, name: bytes) -> ListingRow | None:
        return self._read_listing(lambda: self._reader.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM dir_entries WHERE listing_id = ? AND name = ?", (listing_id, name)
        ).fetchone())

    def listing_page(self, listing_id: int, after: bytes | None, limit: int) -> list[ListingRow]:
        """Up to `limit` entries in name order, from the first name after `after` (None: the start)."""
        if after is None:
            sql, args = "", (listing_id, limit)
        else:
            sql, args = " AND name > ?", (listing_id, after, limit)
        return self._read_listing(lambda: self._reader.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM dir_entries WHERE listing_id = ?{sql} ORDER BY name LIMIT ?", args
        ).fetchall())

    def listing_page_at(self, listing_id: int, position: int, limit: int) -> list[ListingRow]:
        """Up to `limit` entries in name order from the `position`th (0: the first);
        slower than listing_page, for a reader that seeks."""
        return self._read_listing(lambda: self._reader.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM dir_entries WHERE listing_id = ? ORDER BY name LIMIT ? OFFSET ?",
            (listing_id, limit, position),
        ).fetchall())

    async def begin_listing(self, path: str, fetched_at: float) -> int:
        """A new listing of `path` to fill; invisible until finish_listing."""
        return await self.write(lambda db: int(db.conn.execute(
            "INSERT INTO dir_listings (path, fetched_at) VALUES (?, ?)", (path, fetched_at)).lastrowid))

    async def add_listing_entries(self, listing_id: int, rows: list[ListingRow]) -> None:
        """Add entries (name, is_dir, size, mtime, version) to a listing being filled.
        A name listed twice keeps its last entry, except that a directory
        is never replaced by a file of the same name."""
        await self.write(lambda db: db.conn.executemany(_UPSERT_ENTRY, [(listing_id, *r) for r in rows]))

    async def finish_listing(self, listing_id: int, path: str) -> tuple[int, list[int]]:
        """Make a filled listing the current one of its path; returns its
        number of entries and the ids of the listings it supersedes."""

        return await self.write(lambda db: _finish_listing(db, listing_id, path))

    async def store_listing(self, path: str, fetched_at: float,
                            rows: list[ListingRow]) -> tuple[int, int, list[int]]:
        """A whole listing in one transaction (begin_listing, add_listing_entries
        and finish_listing at once); returns its id, its number of entries and
        the ids of the listings it supersedes."""

        def store(db: Database) -> tuple[int, int, list[int]]:
            listing_id = int(db.conn.execute(
                "INSERT INTO dir_listings (path, fetched_at) VALUES (?, ?)", (path, fetched_at)).lastrowid)
            db.conn.executemany(_UPSERT_ENTRY, [(listing_id, *r) for r in rows])
            return (listing_id, *_finish_listing(db, listing_id, path))

        return await self.write(store)

    async def put_listing_entry(self, listing_id: int, row: ListingRow) -> None:
        """Record one entry of a current listing, as a stat found it."""

        def put(db: Database) -> None:
            db.conn.execute("DELETE FROM dir_entries WHERE listing_id = ? AND name = ?", (listing_id, row[0]))
            db.conn.execute(_UPSERT_ENTRY, (listing_id, *row))
            db.conn.execute("UPDATE dir_listings SET entries = (SELECT COUNT(*) FROM dir_entries"
                            " WHERE listing_id = ?) WHERE id = ?", (listing_id, listing_id))

        await self.write(put)

    async def delete_listing_entry(self, listing_id: int, name: bytes) -> None:
        def delete(db: Database) -> None:
            if db.conn.execute("DELETE FROM dir_entries WHERE listing_id = ? AND name = ?",
                               (listing_id, name)).rowcount:
                db.conn.execute("UPDATE dir_listings SET entries = entries - 1 WHERE id = ?", (listing_id,))

        await self.write(delete)

    def old_listings(self) -> list[int]:
        """Listings that are not current: superseded, or left half filled by a stopped daemon."""
        return self._read(lambda: [r[0] for r in self._reader.conn.execute(
            "SELECT id FROM dir_listings WHERE state != 1")], [])

    async def drop_listings(self, ids: list[int]) -> None:
        def drop(db: Database) -> None:
            for listing_id in ids:
                db.conn.execute("DELETE FROM dir_entries WHERE listing_id = ?", (listing_id,))
                db.conn.execute("DELETE FROM dir_listings WHERE id = ?", (listing_id,))

        await self.write(drop)
