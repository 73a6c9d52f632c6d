"""The source folder a running cache holds: taken, watched, made anew when lost.

`HeldFolder.take` makes the folder if need be (see `layout`), takes its lock
and opens its database. Someone may still remove or replace the files under
a running daemon (`rm -rf` of the cache dir, a restored backup, a truncated
state.db): `FolderWatch` notices it, says so once, and starts over with a
new, empty database and data folder; what was cached is fetched again.
Meanwhile nothing is read from or recorded in the lost files.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from .db import CacheDB, CorruptDatabase
from .fanout import make_data_dir, make_data_top, make_subfolders
from .layout import DATA_NAME, DB_NAME, LOCK_NAME, FolderBusy, prepare_dir, source_folder, take_lock

log = logging.getLogger(__name__)

# How often the daemon checks that its state.db and data folder are still
# there (a few stat calls).
STATE_CHECK_S = 1.0
SQLITE_MAGIC = b"SQLite format 3\0"
# SQLite errors after which the database is rebuilt, its files intact or not
# ("readonly": SQLite's word for a database file moved or removed under it).
DB_LOST_ERRORS = ("malformed", "not a database", "no such table", "readonly")


class CacheBusy(Exception):
    """Another daemon is using this source's cache folder."""


@dataclass
class HeldFolder:
    """A source folder taken by a cache: its lock held, its database open."""

    path: Path
    created: bool  # by this cache, so that a mount that fails can remove it
    lock_fd: int
    db: CacheDB

    @classmethod
    def take(cls, cache_dir: Path, source: str) -> HeldFolder:
        """Raises CacheBusy, CacheDirError or CorruptDatabase; then a folder
        made here is removed again."""
        path = source_folder(cache_dir, source)
        created = not path.exists()

        def remove_if_created() -> None:
            if created:
                shutil.rmtree(path, ignore_errors=True)

        try:
            prepare_dir(path)
            # Its subfolders come later (FolderWatch.run): not on the way to the mount.
            make_data_top(path / DATA_NAME)
            try:
                lock_fd = take_lock(path)
            except FolderBusy:
                raise CacheBusy(f"cache {path} is in use by another cachefs daemon") from None
        except BaseException:
            remove_if_created()
            raise
        try:
            db = CacheDB(path / DB_NAME)
            # The folder is named by a hash of the source: keep the source itself
            # so offline tools (fsck --verify-remote) can reach it.
            db.set_meta("source", source)
        except BaseException:
            os.close(lock_fd)
            remove_if_created()
            raise
        return cls(path, created, lock_fd, db)

    def close(self, *, remove: bool = False) -> None:
        """Close the database and let go of the lock; `remove`: and remove the
        folder if this cache made it."""
        self.db.close()
        os.close(self.lock_fd)
        if remove and self.created:
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class StateIdentity:
    """(st_dev, st_ino) of the cache's files when opened; None: missing."""

    root: tuple[int, int] | None
    db: tuple[int, int] | None
    data: tuple[int, int] | None
    lock: tuple[int, int] | None


class FolderWatch:
    """Notices that a held folder's files were lost, and makes them anew.

    `start_over` is called once the new folders are in place: the cache
    lets go of everything it knew about the old files (open objects, byte
    counts) and makes a new database.
    """

    def __init__(self, held: HeldFolder, start_over: Callable[[], Awaitable[None]]) -> None:
        self._held = held
        self.folder = held.path
        self.data_dir = held.path / DATA_NAME
        self._db = held.db
        self._start_over = start_over
        # Counts the rebuilds: work tied to the database of an earlier
        # generation stops (its ids mean nothing in the new one).
        self.generation = 0
        self._db.on_failure = self._db_failed
        self._broken_db: str | None = None
        # What the daemon opened, to notice it replaced or removed.
        self._identity = self._current_identity()
        self._check = trio.Event()

    def check_soon(self) -> None:
        """Look at the files now rather than at the next periodic check."""
        self._check.set()

    def _current_identity(self) -> StateIdentity:
        return StateIdentity(
            root=_file_id(self.folder), db=_file_id(self._db.path), data=_file_id(self.data_dir),
            lock=_file_id(self.folder / LOCK_NAME),
        )

    def _db_failed(self, error: Exception) -> None:
        log.debug("cache database query failed: %s", error)
        self._broken_db = str(error)
        self._check.set()

    def state_problem(self) -> str | None:
        """Why the cache's files are no longer those the daemon opened, if they are not."""
        now = self._current_identity()
        for name, was, is_ in (("the cache folder", self._identity.root, now.root),
                               ("state.db", self._identity.db, now.db),
                               ("the data folder", self._identity.data, now.data)):
            if is_ is None:
                return f"{name} was removed"
            if is_ != was:
                return f"{name} was replaced"
        if not _has_sqlite_header(self._db.path):
            return "state.db was truncated or overwritten"
        broken, self._broken_db = self._broken_db, None
        # Only errors that say the file itself is bad: an I/O error on
        # intact files (a full disk can cause one) is no reason to forget
        # the whole cache.
        if broken is not None and any(word in broken.lower() for word in DB_LOST_ERRORS):
            return f"state.db fails: {broken}"
        return None

    async def run(self) -> None:
        """Notice a lost state.db or data folder, say so once, and start over.

        Checked every STATE_CHECK_S and at once when SQLite fails or a data
        file cannot be created; the check is a few stat calls.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._make_subfolders)
            nursery.start_soon(self._remove_lost_data)
            failures = 0
            pending: str | None = None
            while True:
                with trio.move_on_after(STATE_CHECK_S):
                    await self._check.wait()
                self._check = trio.Event()
                # A rebuild that failed is tried again whatever the files say now.
                problem = self.state_problem() or (pending if failures else None)
                if problem is None:
                    continue
                pending = problem
                try:
                    await self._rebuild(problem, nursery)
                    failures = 0
                except (OSError, sqlite3.Error, CorruptDatabase, FolderBusy) as e:
                    # The disk may be full or gone too; try again at the next
                    # check, saying so once. Meanwhile nothing is cached or
                    # read from the cache (`db.lost`): reads go to the network.
                    failures += 1
                    log.log(logging.ERROR if failures == 1 else logging.DEBUG,
                            "cannot rebuild the cache in %s (%s): %s; serving from the network until it can",
                            self.folder, problem, e)
                    await trio.sleep(STATE_CHECK_S)

    async def _make_subfolders(self) -> None:
        """Make the data folder's subfolders, off the way to the mount's answer."""
        try:
            await trio.to_thread.run_sync(make_subfolders, self.data_dir)
        except OSError as e:
            # A full disk, say: each new data file makes its own (front._load).
            log.warning("cannot make the data subfolders in %s yet: %s", self.data_dir, e.strerror or e)

    async def _remove_lost_data(self) -> None:
        """Finish removing data folders set aside by a rebuild in a daemon
        that stopped before it was done (fsck looks only at `data`)."""
        for aside in self.folder.glob(f"{DATA_NAME}.lost-*"):
            await trio.to_thread.run_sync(shutil.rmtree, aside, True)

    async def _rebuild(self, problem: str, nursery: trio.Nursery) -> None:
        """A fresh state.db and data folder; what was cached is forgotten.

        Open objects keep their data files open and go on serving what this
        process wrote or read in them, unrecorded. Nothing of the old files is
        trusted again: the old data folder is removed, and rows come only
        from chunks written after this.
        """
        # From here on no row of the old database is read or written, and
        # no id of it is used (`generation`).
        self._db.lost = True
        self.generation += 1
        prepare_dir(self.folder)
        if _file_id(self.data_dir) is not None:
            # Data files the new database knows nothing of: out of the way
            # at once, removed in the background.
            aside = self.folder / f"{DATA_NAME}.lost-{os.getpid()}-{self.generation}"
            os.rename(self.data_dir, aside)
            nursery.start_soon(trio.to_thread.run_sync, shutil.rmtree, aside, True)
        make_data_dir(self.data_dir)
        if self._identity.lock != _file_id(self.folder / LOCK_NAME):
            old_fd = self._held.lock_fd
            try:
                self._held.lock_fd = take_lock(self.folder)
            finally:
                os.close(old_fd)
        await self._start_over()
        self._broken_db = None
        self._identity = self._current_identity()
        log.error("cache state in %s was lost (%s): started a new, empty cache there; "
                  "what was cached (and pinned) is fetched again", self.folder, problem)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _has_sqlite_header(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False
