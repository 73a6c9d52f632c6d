"""Keeps the cache under its size cap and the disk above its free-space floor.

The evictor is the cache's accountant: bytes in data files, plus bytes
reserved by chunk downloads in flight. A download reserves its chunk before
it starts (`make_room`), evicting first if needed, so the cap holds within
one chunk per active download. Victims are the least recently opened
objects; an object in use (open handle, backing id, fetch or unflushed
record) or pinned is never evicted. Files closed a moment ago are still held
by their unflushed records; when only they stand between a download and the
cap, the download waits for that flush (a fraction of a second) rather than
push the cache past its cap. An object's record is deleted before
its file, so a crash can leave an orphan file (fsck removes it) but never a
record of data that is gone.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .db import CacheDB, ObjectRow

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between checks of the free-space floor
CANDIDATES_PER_ROUND = 256
# Free space when it cannot be measured: no eviction for the floor; a disk
# that is really full still answers ENOSPC, which the fetcher handles.
UNKNOWN_FREE = 1 << 62


@dataclass
class EvictResult:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # open or pinned


class Evictor:
    """See the module docstring."""

    def __init__(
        self,
        db: CacheDB,
        data_path: Callable[[ObjectRow], Path],
        in_use: Callable[[str, str], bool],
        cap_bytes: int | None,
        min_free_bytes: int,
        settle: Callable[[], Awaitable[bool]] | None = None,
        relieve: Callable[[], bool] | None = None,
    ) -> None:
        self._db = db
        self._data_path = data_path
        self._in_use = in_use
        # Waits until closed objects held by unflushed records are free to
        # go; says whether there were any.
        self._settle = settle
        # Closes objects kept open only for speed (kept backing ids of the
        # filesystem); says whether there were any.
        self._relieve = relieve
        self._settle_useless = False
        self.cap_bytes = cap_bytes
        self.min_free_bytes = min_free_bytes
        self.used_bytes = db.bytes_cached()
        self._reserved = 0
        self._lock = trio.Lock()
        self._wakeup = trio.Event()
        self._warned_stuck = False
        # Objects being evicted now, by (key, version); opens wait for them.
        self.evicting: dict[tuple[str, str], trio.Event] = {}

    # --- accounting ----------------------------------------------------------

    def _free_disk(self) -> int:
        # The cache folder may be gone for a moment (removed under a running
        # daemon, which rebuilds it): ask its parent, on the same disk as a
        # rule, rather than fail the download.
        for folder in (self._db.path.parent, self._db.path.parent.parent):
            try:
                st = os.statvfs(folder)
            except OSError:
                continue
            return st.f_bavail * st.f_frsize
        return UNKNOWN_FREE

    def _excess(self, incoming: int = 0) -> int:
        """Bytes to free before `incoming` more bytes may be written."""
        over_cap = 0
        if self.cap_bytes is not None:
            over_cap = self.used_bytes + self._reserved + incoming - self.cap_bytes
        under_floor = self.min_free_bytes - (self._free_disk() - self._reserved - incoming)
        return max(over_cap, under_floor, 0)

    async def make_room(self, nbytes: int) -> None:
        """Reserve `nbytes` for a download, evicting first if needed."""
        if self._excess(nbytes):
            short = await self._evict_lru(nbytes)
            if short and self._settle is not None and not self._settle_useless and await self._settle():
                before, short = short, await self._evict_lru(nbytes)
                # Nothing came free (what closed is pinned, say): do not cut
                # every later batch short too, until eviction catches up.
                self._settle_useless = short >= before
            if not short:
                self._settle_useless = False
            self._note_shortfall(short)
        self._reserved += nbytes

    def written(self, reserved: int, actual: int) -> None:
        """A download ended: turn its reservation into `actual` cached bytes."""
        self._reserved -= reserved
        self.used_bytes += actual

    # --- eviction ------------------------------------------------------------

    async def run(self) -> None:
        """Check the cap and the floor now and then: other programs fill disks too."""
        while True:
            try:
                if self._excess():
                    self._note_shortfall(await self._evict_lru(0))
            except (OSError, sqlite3.Error) as e:
                # A failing disk must not take the daemon down; try again later.
                log.error("eviction failed: %s", e)
            with trio.move_on_after(CHECK_INTERVAL):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    def closed(self) -> None:
        """An object was closed: if the cache is over its cap, evict now
        rather than at the next check (what was open could not go before)."""
        if self.cap_bytes is not None and self.used_bytes > self.cap_bytes:
            self._wakeup.set()

    async def _evict_lru(self, incoming: int) -> int:
        """Evict least recently used objects until `incoming` bytes fit;
        return how many bytes are still missing. When what is open stands
        in the way, objects kept open only for speed are closed, and it
        tries once more."""
        short = await self._evict_lru_once(incoming)
        if short and self._relieve is not None and self._relieve():
            short = await self._evict_lru_once(incoming)
        return short

    async def _evict_lru_once(self, incoming: int) -> int:
        async with self._lock:
            # Measured under the lock: another eviction may just have made room.
            need = self._excess(incoming)
            freed = 0
            for row in self._db.eviction_candidates(CANDIDATES_PER_ROUND):
                if freed >= need:
                    break
                if not self._in_use(row.key, row.version):
                    freed += await self._drop(row)
            return max(0, need - freed)

    def _note_shortfall(self, short: int) -> None:
        # Once per episode: a cap smaller than what is open would otherwise
        # log on every chunk.
        if short and not self._warned_stuck:
            self._warned_stuck = True
            log.warning("cannot free %d bytes: what is left is open or pinned; "
                        "the cache stays over its limit until files are closed", short)
        elif not short:
            self._warned_stuck = False

    async def free(self, nbytes: int) -> int:
        """Evict at least `nbytes` whatever the limits say (the disk is full);
        returns how much was freed."""
        freed = await self._free_once(nbytes)
        if freed < nbytes and self._relieve is not None and self._relieve():
            freed += await self._free_once(nbytes - freed)
        return freed

    async def _free_once(self, nbytes: int) -> int:
        async with self._lock:
            freed = 0
            for row in self._db.eviction_candidates(CANDIDATES_PER_ROUND):
                if freed >= nbytes:
                    break
                if not self._in_use(row.key, row.version):
                    freed += await self._drop(row)
            return freed

    async def evict_keys(self, keys: list[str]) -> EvictResult:
        """Evict every object at or under each of `keys` ('' is everything)."""
        result = EvictResult()
        async with self._lock:
            for key in keys:
                for row in self._db.objects_under(key):
                    if self._in_use(row.key, row.version) or self._db.is_pinned(row.key):
                        result.skipped.append(row.key)
                        continue
                    result.bytes += await self._drop(row)
                    result.files += 1
        return result

    async def drop(self, row: ObjectRow) -> int:
        """Evict one object whatever the limits say (its remote version is
        gone); returns the bytes freed."""
        async with self._lock:
            return await self._drop(row)

    async def _drop(self, row: ObjectRow) -> int:
        ident = (row.key, row.version)
        done = self.evicting[ident] = trio.Event()
        path = self._data_path(row)
        try:
            try:
                await self._db.delete_object(row.id)
            except sqlite3.OperationalError:
                # Too full even to record the eviction. Removing the file
                # first is safe too: a record whose data file is gone is
                # caught when the object is next opened (the new file has
                # the wrong size) and fetched again. Then record it.
                await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
                await self._db.delete_object(row.id)
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        except (OSError, sqlite3.Error) as e:
            # Record kept means file kept (or an orphan for fsck): consistent.
            log.error("could not evict %s: %s", row.key, e)
            return 0
        finally:
            del self.evicting[ident]
            done.set()
        self.used_bytes -= row.bytes_cached
        log.debug("evicted %s (%d bytes)", row.key, row.bytes_cached)
        return row.bytes_cached
