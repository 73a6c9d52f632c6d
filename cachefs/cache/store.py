"""The cache of one remote source: data files, SQLite state, fetching.

Layout under the cache directory, one folder per source so that several
mounts can share a cache directory without sharing state:

    <cache-dir>/<host-path>-<hash>/
        lock          held (flock) by the one daemon using this folder
        state.db      SQLite: objects, chunks, listings
        data/ab/ab12… one sparse file per object version
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from cachefs.remote import Pin, Remote

from .db import CacheDB, CorruptDatabase, ObjectRow
from .evictor import EvictResult, Evictor
from .fanout import data_path, make_data_dir
from .fetcher import CHUNK_SIZE, ChunkFetcher
from .folders import DATA_NAME
from .journal import Journal
from .objects import CachedObject
from .slots import Priority

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
DEFAULT_MIN_FREE = 1 << 30  # keep 1 GiB free on the cache's disk
# How often the daemon checks that its state.db and data folder are still
# there (a few stat calls).
STATE_CHECK_S = 1.0
SQLITE_MAGIC = b"SQLite format 3\0"
FORGET_RETRY_S = 5.0
# SQLite errors after which the database is rebuilt, its files intact or not
# ("readonly": SQLite's word for a database file moved or removed under it).
DB_LOST_ERRORS = ("malformed", "not a database", "no such table", "readonly")


class CacheBusy(Exception):
    """Another daemon is using this source's cache folder."""


class CacheDirError(Exception):
    """The cache directory cannot be created or written."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cachefs"


def source_dir(cache_dir: Path, source: str) -> Path:
    """The folder of `source` inside `cache_dir`: readable, and unique by hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", source.split("://", 1)[-1]).strip("_")[:48]
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return cache_dir / f"{readable}-{digest}"


def prepare_dir(path: Path) -> None:
    """Create `path` (mode 0700) and check that we can write in it."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CacheDirError(f"cache dir {path} is not writable: {e.strerror or e}") from e


class Cache:
    """Cached objects of one source; `run()` must be running in a nursery to fetch."""

    def __init__(
        self,
        cache_dir: Path,
        remote: Remote,
        *,
        cap_bytes: int | None = None,
        min_free_bytes: int = DEFAULT_MIN_FREE,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.root = source_dir(cache_dir, remote.source)
        # A mount that fails removes the folder it made (`discard_new`).
        self.created = not self.root.exists()
        try:
            prepare_dir(self.root)
            self.data_dir = self.root / DATA_NAME
            make_data_dir(self.data_dir)
            self._lock_fd = self._take_lock()
        except BaseException:
            self._remove_if_created()
            raise
        try:
            self.db = CacheDB(self.root / "state.db")
            # The folder is named by a hash of the source: keep the source itself
            # so offline tools (fsck --verify-remote) can reach it.
            self.db.set_meta("source", remote.source)
        except BaseException:
            os.close(self._lock_fd)
            self._remove_if_created()
            raise
        self.remote = remote
        self.db.on_failure = self._db_failed
        # What the daemon opened, to notice it replaced or removed (`_watch_state`).
        self._identity = self._current_identity()
        self._state_check = trio.Event()
        self.rebuilds = 0
        self.chunk_size = chunk_size
        self._objects: dict[tuple[str, str], CachedObject] = {}
        self._forgetting: set[int] = set()  # object ids whose chunk rows are being deleted
        # Object versions being dropped because the remote changed under
        # them (discard); opens of the same (key, version) wait for it.
        self._discarding: dict[tuple[str, str], trio.Event] = {}
        # Told (key, version) of every object discarded because the remote's
        # bytes changed: the layer above must stop serving that version.
        self.on_discard: list[Callable[[str, str], None]] = []
        self.journal = Journal(self.db, self.release)
        self.evictor = Evictor(self.db, self._data_path, self._in_use, cap_bytes, min_free_bytes, self._settle)
        self._fetcher: ChunkFetcher | None = None
        self._nursery: trio.Nursery | None = None

    def _take_lock(self) -> int:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheBusy(f"cache {self.root} is in use by another cachefs daemon") from None
        return fd

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run fetches and the journal until cancelled, then flush what is fetched."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._fetcher = ChunkFetcher(
                    self.remote, self.journal, self.evictor, nursery, self.release, self.discard)
                nursery.start_soon(self.journal.run)
                nursery.start_soon(self.evictor.run)
                nursery.start_soon(self._watch_state)
                nursery.start_soon(self._remove_lost_data)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.journal.flush()

    def close(self) -> None:
        for obj in self._objects.values():
            obj.close()
        self._objects.clear()
        self.db.close()
        os.close(self._lock_fd)

    def discard_new(self) -> None:
        """After `close`: remove the folder if this cache made it, for a
        mount that failed to start (it holds nothing worth keeping)."""
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self.created:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- lost state ----------------------------------------------------------

    def _current_identity(self) -> StateIdentity:
        return StateIdentity(
            root=_file_id(self.root), db=_file_id(self.db.path), data=_file_id(self.data_dir),
            lock=_file_id(self.root / "lock"),
        )

    def _db_failed(self, error: Exception) -> None:
        log.debug("cache database query failed: %s", error)
        self._broken_db = str(error)
        self._state_check.set()

    _broken_db: str | None = None

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
        if not _has_sqlite_header(self.db.path):
            return "state.db was truncated or overwritten"
        broken, self._broken_db = self._broken_db, None
        # Only errors that say the file itself is bad: an I/O error on
        # intact files (a full disk can cause one) is no reason to forget
        # the whole cache.
        if broken is not None and any(word in broken.lower() for word in DB_LOST_ERRORS):
            return f"state.db fails: {broken}"
        return None

    async def _watch_state(self) -> None:
        """Notice a lost state.db or data folder, say so once, and start over.

        Checked every STATE_CHECK_S and at once when SQLite fails or a data
        file cannot be created; the check is a few stat calls.
        """
        failures = 0
        pending: str | None = None
        while True:
            with trio.move_on_after(STATE_CHECK_S):
                await self._state_check.wait()
            self._state_check = trio.Event()
            # A rebuild that failed is tried again whatever the files say now.
            problem = self.state_problem() or (pending if failures else None)
            if problem is None:
                continue
            pending = problem
            try:
                await self._rebuild(problem)
                failures = 0
            except (OSError, sqlite3.Error, CorruptDatabase, CacheBusy) as e:
                # The disk may be full or gone too; try again at the next
                # check, saying so once. Meanwhile nothing is cached or
                # read from the cache (`db.lost`): reads go to the network.
                failures += 1
                log.log(logging.ERROR if failures == 1 else logging.DEBUG,
                        "cannot rebuild the cache in %s (%s): %s; serving from the network until it can",
                        self.root, problem, e)
                await trio.sleep(STATE_CHECK_S)

    async def _remove_lost_data(self) -> None:
        """Finish removing data folders set aside by a rebuild in a daemon
        that stopped before it was done (fsck looks only at `data`)."""
        for aside in self.root.glob(f"{DATA_NAME}.lost-*"):
            await trio.to_thread.run_sync(shutil.rmtree, aside, True)

    async def _rebuild(self, problem: str) -> None:
        """A fresh state.db and data folder; what was cached is forgotten.

        Open objects keep their data files open and go on serving what this
        process wrote or read in them, unrecorded. Nothing of the old files is
        trusted again: the old data folder is removed, and rows come only
        from chunks written after this.
        """
        # From here on no row of the old database is read or written, and
        # no id of it is used (`_forget_chunks`).
        self.db.lost = True
        self.rebuilds += 1
        prepare_dir(self.root)
        if _file_id(self.data_dir) is not None:
            # Data files the new database knows nothing of: out of the way
            # at once, removed in the background.
            aside = self.root / f"{DATA_NAME}.lost-{os.getpid()}-{self.rebuilds}"
            os.rename(self.data_dir, aside)
            assert self._nursery is not None
            self._nursery.start_soon(trio.to_thread.run_sync, shutil.rmtree, aside, True)
        make_data_dir(self.data_dir)
        if self._identity.lock != _file_id(self.root / "lock"):
            old_fd = self._lock_fd
            try:
                self._lock_fd = self._take_lock()
            finally:
                os.close(old_fd)
        for obj in self._objects.values():
            obj.detached = True
            obj.object_id = None
        self._forgetting.clear()
        await self.db.recreate(self.remote.source)
        self.evictor.used_bytes = 0
        self._broken_db = None
        self._identity = self._current_identity()
        log.error("cache state in %s was lost (%s): started a new, empty cache there; "
                  "what was cached (and pinned) is fetched again", self.root, problem)

    @property
    def fetcher(self) -> ChunkFetcher:
        assert self._fetcher is not None, "Cache.run() is not running"
        return self._fetcher

    # --- objects -------------------------------------------------------------

    async def acquire(self, key: str, version: str, size: int, mtime: float) -> CachedObject:
        """The cached object for this version, opened; pair with `release`."""
        ident = (key, version)
        while (obj := self._objects.get(ident)) is None:
            busy = self.evictor.evicting.get(ident)
            if busy is None:
                busy = self._discarding.get(ident)
            if busy is None:
                obj = self._objects[ident] = self._load(key, version, size, mtime)
                break
            await busy.wait()  # then look again
        obj.uses += 1
        self.journal.opened(obj)
        return obj

    def acquire_complete(self, key: str, version: str, size: int, mtime: float) -> CachedObject | None:
        """Like `acquire`, but only for a complete object that needs no wait;
        otherwise None, and nothing is acquired."""
        ident = (key, version)
        obj = self._objects.get(ident)
        if obj is None:
            if ident in self.evictor.evicting or ident in self._discarding:
                return None
            row = self.db.find_object(key, version)
            if row is None or not row.complete:
                return None
            obj = self._objects[ident] = self._load(key, version, size, mtime, row)
        obj.uses += 1
        if not obj.complete:
            # Loaded from a row that promised more than the file holds.
            self.release(obj)
            return None
        self.journal.opened(obj)
        return obj

    def _in_use(self, key: str, version: str) -> bool:
        """Whether an object is open, being fetched or recorded."""
        return (key, version) in self._objects

    async def _settle(self) -> bool:
        """Wait for the journal if it alone keeps closed objects from eviction;
        return whether it did."""
        if not any(obj.uses == self.journal.holding(obj) for obj in self._objects.values()):
            return False
        await self.journal.settle()
        return True

    def _data_path(self, row: ObjectRow) -> Path:
        return data_path(self.data_dir, row.data_name)

    async def evict_keys(self, keys: list[str]) -> EvictResult:
        """Evict what is cached at or under `keys` (`cachefs evict`)."""
        return await self.evictor.evict_keys(keys)

    def peek(self, key: str, version: str) -> CachedObject | None:
        """The object if some handle or fetch has it open, without a new use."""
        return self._objects.get((key, version))

    def retain(self, obj: CachedObject) -> CachedObject:
        """One more use of an object someone already holds; pair with `release`.
        Its data file stays open (and its fd number ours) until then."""
        assert obj.uses > 0, "retain needs a holder"
        obj.uses += 1
        return obj

    def release(self, obj: CachedObject) -> None:
        obj.uses -= 1
        if obj.uses == 0:
            obj.close()
            if obj.stale:
                return  # discard took it out and removes its record and file
            del self._objects[(obj.key, obj.version)]
            self.evictor.closed()
            if obj.object_id is None:
                # Nothing of it was ever recorded, so nothing in the file
                # will be trusted: remove it rather than leave an orphan. Done
                # here, before any other task runs, so no new open can race it.
                try:
                    obj.path.unlink(missing_ok=True)
                except OSError as e:
                    # An orphan for fsck; release runs inside the journal's
                    # flush, which an exception would end, and the daemon with it.
                    log.warning("cannot remove the unrecorded data file of %s: %s", obj.key, e.strerror)

    def _load(
        self, key: str, version: str, size: int, mtime: float, row: ObjectRow | None = None
    ) -> CachedObject:
        """Open (or create) the data file of an object and learn what it holds.

        Nothing here waits, so no other task can see the object half loaded.
        """
        row = row or self.db.find_object(key, version)
        name = row.data_name if row else hashlib.sha256(f"{key}\0{version}".encode()).hexdigest()[:40]
        path = data_path(self.data_dir, name)
        # Inline, not in a worker thread: with the data folder spread over
        # block groups (fanout.py) creating a file takes ~20 µs, less than
        # the thread hop would.
        try:
            fd, found_size = _open_data_file(path, size)
        except FileNotFoundError:
            # Its subfolder is gone (the data folder was emptied or removed):
            # make the folders again so this open works, and have the
            # watcher look at the rest. A new file's size (0) never
            # matches a row, so nothing recorded is trusted below.
            self._state_check.set()
            prepare_dir(self.root)
            make_data_dir(self.data_dir)
            fd, found_size = _open_data_file(path, size)
        present: set[int] = set()
        if row is not None and row.id not in self._forgetting:
            present = self.db.chunks_of(row.id)
            why = ""
            if present and found_size != size:
                why = "data file of %s had the wrong size; fetching it again"
            elif present and row.validator is None and not row.complete:
                # Recorded before validators were kept: the rest could only be
                # fetched without knowing which version the chunks held are of.
                why = "cached part of %s has no recorded version; fetching it again"
            if why:
                # The file no longer matches what was recorded: trust neither.
                log.warning(why, key)
                present = set()
                self._forgetting.add(row.id)
                assert self._nursery is not None
                self._nursery.start_soon(self._forget_chunks, row.id, self.rebuilds)
        chunk_size = row.chunk_size if row else self.chunk_size
        # Only chunks held bind the version later chunks must be of.
        pin = Pin(size, row.validator if row is not None and present else None)
        return CachedObject(
            key=key, version=version, size=size, mtime=mtime, chunk_size=chunk_size,
            path=path, fd=fd, object_id=row.id if row else None, present=present, pin=pin,
        )

    def discard(self, obj: CachedObject) -> None:
        """The remote no longer has the version `obj` holds (a fetch found
        another): take it away from new opens, and drop its record and data
        file, so that the next open starts a new version from nothing.

        Handles already open keep reading the chunks it has, all of the one
        version pinned; a fetch for them of another version fails.
        """
        if obj.stale:
            return
        obj.stale = True
        ident = (obj.key, obj.version)
        if self._objects.get(ident) is obj:
            del self._objects[ident]
        log.info("%s changed on the remote; dropping what is cached of the old version", obj.key)
        for listener in self.on_discard:
            listener(obj.key, obj.version)
        done = trio.Event()
        previous = self._discarding.get(ident)
        self._discarding[ident] = done
        obj.uses += 1  # keeps its file open until it is dropped
        assert self._nursery is not None
        self._nursery.start_soon(self._drop_stale, obj, ident, done, previous)

    async def _drop_stale(
        self, obj: CachedObject, ident: tuple[str, str], done: trio.Event, previous: trio.Event | None
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()
            # Chunks queued before it went stale may be recording its row now.
            await self.journal.settle()
            if obj.object_id is not None:
                row = self.db.find_object(obj.key, obj.version)
                if row is not None and row.id == obj.object_id:
                    await self.evictor.drop(row)
        except (OSError, sqlite3.Error) as e:
            # Kept, the record still holds one version only: a later fetch of
            # another fails and discards it again.
            log.error("could not drop the stale cached part of %s: %s", obj.key, e)
        finally:
            if obj.object_id is None:
                # Nothing of it is recorded (the journal skips stale objects),
                # so its file goes, even when the daemon is stopping; no new
                # object of this ident exists while it is being discarded.
                try:
                    obj.path.unlink(missing_ok=True)
                except OSError as e:
                    log.error("could not remove %s: %s", obj.path, e)
            if self._discarding.get(ident) is done:
                del self._discarding[ident]
            done.set()
            self.release(obj)

    async def _forget_chunks(self, object_id: int, generation: int) -> None:
        # Until the rows are gone, a new load must not trust them: the file
        # was already cut to the new size, so its size no longer tells.
        # A failure (the disk is full) must neither end the daemon nor let
        # the rows be trusted again: keep trying while this process runs.
        while generation == self.rebuilds:  # else the id is of a lost database
            try:
                await self.db.forget_chunks(object_id)
            except sqlite3.Error as e:
                log.warning("cannot forget the chunks of object %d yet: %s", object_id, e)
                await trio.sleep(FORGET_RETRY_S)
                continue
            self._forgetting.discard(object_id)
            return

    async def ensure(self, obj: CachedObject, offset: int, size: int, ahead: int = 0,
                     priority: Priority = Priority.DEMAND) -> None:
        """Return once bytes [offset, offset+size) of `obj` are in its data
        file, fetching what is missing; raise the fetch's error if one failed.

        `ahead` chunks after the requested ones are fetched in the background.
        """
        chunks = obj.chunks_for(offset, size)
        waits = self.fetcher.start(obj, chunks, priority)
        end = min(offset + size, obj.size)
        for idx in chunks:
            fetch = obj.inflight.get(idx)
            if fetch is not None:
                # Only as far into the chunk as this read needs.
                chunk_start, chunk_end = obj.chunk_span(idx)
                await fetch.wait_for(min(end, chunk_end) - chunk_start)
            elif idx not in obj.present:
                await self.fetcher.wait(waits)  # it failed: raise its error
        if ahead and chunks:
            # Only once this read's own bytes are here: read-ahead bodies
            # arriving at the same moment would delay the first byte (a cold
            # open's first read waited 9 ms behind four of them, not 3).
            self.fetcher.start(obj, range(chunks.stop, min(obj.nchunks, chunks.stop + ahead)), Priority.READAHEAD)

    async def read(self, obj: CachedObject, offset: int, size: int, ahead: int = 0) -> memoryview:
        """Bytes [offset, offset+size) of `obj`, fetching what is missing (see `ensure`)."""
        await self.ensure(obj, offset, size, ahead)
        return await obj.pread(offset, size)

    def prefetch(self, key: str, version: str, size: int, mtime: float) -> None:
        """Start fetching a whole object in the background, unless cached."""
        if size == 0:
            return  # nothing to fetch, and an empty object keeps no data file
        row = self.db.find_object(key, version)
        if row is None or not row.complete:
            assert self._nursery is not None
            self._nursery.start_soon(self._prefetch, key, version, size, mtime)

    async def _prefetch(self, key: str, version: str, size: int, mtime: float) -> None:
        try:
            obj = await self.acquire(key, version, size, mtime)
        except OSError as e:
            log.warning("cannot cache %s: %s", key, e)
            return
        except Exception:
            # Background work nobody waits for: it must not end the daemon.
            log.exception("prefetching %s failed", key)
            return
        try:
            # The fetches hold their own uses of the object.
            self.fetcher.start(obj, range(obj.nchunks), Priority.BACKGROUND)
        finally:
            self.release(obj)


@dataclass(frozen=True)
class StateIdentity:
    """(st_dev, st_ino) of the cache's files when opened; None: missing."""

    root: tuple[int, int] | None
    db: tuple[int, int] | None
    data: tuple[int, int] | None
    lock: tuple[int, int] | None


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


def _size_to(fd: int, size: int) -> int:
    """Make the data file `size` bytes long (sparse); return the size it had."""
    found = os.fstat(fd).st_size
    if found != size:
        os.ftruncate(fd, size)
    return found


def _open_data_file(path: Path, size: int) -> tuple[int, int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    return fd, _size_to(fd, size)
