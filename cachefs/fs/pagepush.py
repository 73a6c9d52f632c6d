"""Pushing pages: after a random reader's miss, its neighbours go into the kernel's page cache.

A handle in page-cache mode (see `openmode`) asks the daemon only for pages
the kernel does not hold. A random reader misses each page once: a SQLite
integrity check of a 149 MB database opened cold made 36,000 reads of 4 KiB,
each a round trip through the daemon, and took 4x as long as warm. So after
answering a miss at a random offset, the daemon puts the aligned window
around it into the kernel's page cache (FUSE_NOTIFY_STORE) once its bytes
are cached, and the reader's next reads there are page-cache hits. A later
miss in a window already pushed means the kernel evicted it (drop_caches,
or memory pressure): it is pushed again, but not within REPUSH_AFTER_S of
the last push, so a kernel short of memory is not fought page for page.
Sequential readers are left to the kernel's own read-ahead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from cachefs.cache import Cache, CachedObject, Priority
from cachefs.remote import RemoteError

from .stats import Stats

log = logging.getLogger(__name__)

WINDOW = 1024 * 1024  # one maximal FUSE read (256 pages)
# Pushes under way at once: each holds a window in memory and a worker thread.
CONCURRENT = 2
REPUSH_AFTER_S = 1.0

Store = Callable[[int, int, bytes | memoryview], Awaitable[None]]


class PagePusher:
    """Pushes windows around misses; `run` must be serving in a nursery."""

    def __init__(self, cache: Cache, stats: Stats) -> None:
        self._cache = cache
        self._stats = stats
        self._store: Store | None = None
        self._pushed: dict[int, dict[int, float]] = {}  # ino -> window -> when
        self._limit = trio.Semaphore(CONCURRENT)
        self._nursery: trio.Nursery | None = None

    def connect(self, store: Store | None) -> None:
        """The kernel connection's page-cache store, once INIT is done."""
        self._store = store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def after_miss(self, ino: int, obj: CachedObject, offset: int) -> None:
        """A random read of `obj` at `offset` missed the kernel's page cache."""
        if self._store is None or self._nursery is None:
            return
        window = offset // WINDOW
        pushed = self._pushed.setdefault(ino, {})
        now = time.monotonic()
        if now - pushed.get(window, -REPUSH_AFTER_S) < REPUSH_AFTER_S:
            return
        pushed[window] = now
        # The push holds its own use: the data file's fd stays ours even if
        # the handle is closed before the push is done.
        self._nursery.start_soon(self._push, ino, self._cache.retain(obj), window)

    def forget(self, ino: int) -> None:
        """The inode is gone from the kernel: its page cache went with it."""
        self._pushed.pop(ino, None)

    async def _push(self, ino: int, obj: CachedObject, window: int) -> None:
        start = window * WINDOW
        length = min(obj.size, start + WINDOW) - start
        try:
            async with self._limit:
                await self._cache.ensure(obj, start, length, priority=Priority.READAHEAD)
                data = await obj.pread(start, length)
                assert self._store is not None
                await self._store(ino, start, data)
            self._stats.bytes_pushed += len(data)
        except (RemoteError, OSError) as e:
            # Only an optimisation: the reader's own reads still work.
            log.debug("pushing %s at %d: %s", obj.key, start, e)
        except Exception:
            # A bug here must not end the daemon: the reads go on without it.
            log.exception("pushing %s at %d failed", obj.key, start)
        finally:
            self._cache.release(obj)
