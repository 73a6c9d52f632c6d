"""Fetches missing chunks of cached objects from the remote.

Every chunk is fetched at most once at a time: readers of the same range wait
on the same `ChunkFetch`. Fetches run in the fetcher's own nursery, not in
the reader's task, so a reader that is interrupted does not waste a download
another reader (or read-ahead) is waiting for.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable

import trio

from cachefs.remote import Remote, RemoteError
from cachefs.remote.base import BadResponse, Unreachable, VersionChanged, take_whole_object

from .evictor import Evictor
from .journal import Journal
from .objects import CachedObject, ChunkFetch
from .slots import FetchSlots, Priority
from .table import ObjectTable

log = logging.getLogger(__name__)

# Ranged GETs in flight at once, all objects together; read-ahead and
# background work together may hold 4 of them, background work alone 3, so
# fetches a reader waits for always find a slot soon.
MAX_INFLIGHT = 6
SLOT_CAPS = {Priority.READAHEAD: 4, Priority.BACKGROUND: 3}
# Bytes of a body gathered before they are written in one pwritev; the
# first write of a body is smaller, to answer a waiting reader sooner.
WRITE_BATCH = 1024 * 1024
FIRST_WRITE = 128 * 1024
# A chunk whose body broke off is tried again this many times in all.
ATTEMPTS = 3
RETRY_DELAY = 0.2


class ChunkFetcher:
    """Brings chunks into data files; see the module docstring."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        evictor: Evictor,
        nursery: trio.Nursery,
        objects: ObjectTable,
        discard: Callable[[CachedObject], None] | None = None,
    ) -> None:
        """`discard` is told of an object whose remote version changed."""
        self._remote = remote
        self._journal = journal
        self._evictor = evictor
        self._nursery = nursery
        self._objects = objects  # each running fetch holds a use of its object
        self._discard = discard
        self._slots = FetchSlots(MAX_INFLIGHT, SLOT_CAPS)
        self.bytes_fetched = 0

    def start(
        self, obj: CachedObject, chunks: Iterable[int], priority: Priority = Priority.DEMAND
    ) -> list[ChunkFetch]:
        """Start fetching those of `chunks` not present or in flight.

        A chunk already in flight at a lower priority is promoted.
        """
        waits = []
        for idx in chunks:
            if idx in obj.present:
                continue
            fetch = obj.inflight.get(idx)
            if fetch is None:
                fetch = obj.inflight[idx] = ChunkFetch(self._slots.ticket(priority),
                                                       ahead=priority is not Priority.DEMAND)
                self._objects.retain(obj)
                self._nursery.start_soon(self._fetch, obj, idx, fetch)
            else:
                self._slots.promote(fetch.ticket, priority)
            waits.append(fetch)
        return waits

    @staticmethod
    async def wait(fetches: Iterable[ChunkFetch]) -> None:
        """Return once all `fetches` are done; raise the first one's error."""
        for fetch in fetches:
            await fetch.done.wait()
            if fetch.error is not None:
                raise fetch.error

    async def _fetch(self, obj: CachedObject, idx: int, fetch: ChunkFetch) -> None:
        error: BaseException | None = None
        try:
            start, end = obj.chunk_span(idx)
            async with self._slots.hold(fetch.ticket):
                # Reserved only once it may start, so queued fetches hold no room.
                await self._evictor.make_room(end - start)
                written = 0
                try:
                    try:
                        await self._fetch_with_retries(obj, idx, fetch)
                    except OSError as e:
                        # The disk filled up (other programs, or a floor of 0):
                        # make room from the least recently used and try once more.
                        if e.errno != errno.ENOSPC or not await self._evictor.free(2 * (end - start)):
                            raise
                        log.warning("cache disk full; evicted old files to make room")
                        await self._fetch_with_retries(obj, idx, fetch)
                    written = end - start
                finally:
                    self._evictor.written(end - start, written)
            obj.present.add(idx)
            # Streamed: a chunk of a big object whose fetch started ahead of
            # any reader (journal.py says why that matters).
            streamed = fetch.ahead and obj.nchunks > 1
            if streamed:
                obj.streamed.add(idx)
            self._journal.add(obj, idx, uncache=streamed)
        except VersionChanged as e:
            error = e
            if self._discard is not None:
                self._discard(obj)
        except RemoteError as e:
            if fetch.ahead and not isinstance(e, Unreachable):
                # Nobody waits for it, so nobody else reports it; offline
                # is reported once, by the remote's health watch.
                log.warning("read-ahead of %s failed: %s", obj.key, e)
            error = e
        except OSError as e:
            log.error("writing %s to the cache failed: %s", obj.key, e)
            error = e
        except Exception as e:
            # A bug, or something the remote let through: this fetch fails
            # (its readers get EIO), the daemon and other fetches go on.
            log.exception("fetching %s bytes of chunk %d failed", obj.key, idx)
            error = RemoteError(f"{obj.key}: internal error: {type(e).__name__}: {e}")
        finally:
            del obj.inflight[idx]
            fetch.finish(error)
            self._objects.release(obj)

    async def _fetch_with_retries(self, obj: CachedObject, idx: int, fetch: ChunkFetch) -> None:
        start, end = obj.chunk_span(idx)
        # Chunks this fetch took on from a whole object sent for its range.
        adopted: dict[int, ChunkFetch] = {}
        changed: VersionChanged | None = None
        try:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await self._fetch_once(obj, idx, fetch, adopted)
                    return
                except BadResponse as e:
                    if attempt == ATTEMPTS:
                        raise
                    log.warning("%s bytes %d-%d: %s; retrying", obj.key, start, end, e)
                    await trio.sleep(RETRY_DELAY * attempt)
        except VersionChanged as e:
            changed = e
            raise
        finally:
            # Those a broken whole answer left (a retry may then have
            # answered with just the range).
            self._give_back(obj, adopted, changed)

    async def _fetch_once(
        self, obj: CachedObject, idx: int, fetch: ChunkFetch, adopted: dict[int, ChunkFetch]
    ) -> None:
        start, end = obj.chunk_span(idx)
        pos = start
        batch: list[bytes] = []
        batched = 0
        # The first bytes go out at once: a reader may be waiting for them.
        threshold = FIRST_WRITE
        async with self._remote.read_range(obj.key, start, end, obj.version, obj.pin) as body:
            if take_whole_object(body):
                await self._fetch_whole(obj, idx, fetch, adopted, body)
                return
            async for piece in body:
                batch.append(piece)
                batched += len(piece)
                if batched >= threshold:
                    if batched >= WRITE_BATCH:
                        # Copying into the page cache is most of a cold read's
                        # CPU (and slow on fresh memory in a VM): in a worker
                        # thread it runs beside the event loop and other fetches.
                        await trio.to_thread.run_sync(_write_all, obj.fd, batch, pos)
                    else:
                        _write_all(obj.fd, batch, pos)
                    pos += batched
                    batch, batched, threshold = [], 0, WRITE_BATCH
                    fetch.wrote(pos - start)
        if batch:
            # The tail, or a whole small file: too little for a thread hop.
            _write_all(obj.fd, batch, pos)
            pos += batched
            fetch.wrote(pos - start)
        self.bytes_fetched += pos - start
        if pos != end:
            raise BadResponse(f"got {pos - start} bytes, expected {end - start}")

    async def _fetch_whole(
        self, obj: CachedObject, idx: int, fetch: ChunkFetch, adopted: dict[int, ChunkFetch],
        body: AsyncIterator[bytes],
    ) -> None:
        """Write the whole object the server sent for chunk `idx`'s range (it
        ignores Range), from its first byte.

        Its other missing chunks that no fetch has yet become fetches of this
        one body (`adopted`), so their readers wait for it instead of each
        starting a download of the whole object; each is recorded as soon as
        its bytes are written. Only chunks this fetch owns are written.
        """
        missing = [j for j in range(obj.nchunks) if j not in obj.present and j not in obj.inflight]
        await self._evictor.make_room(sum(_span_length(obj, j) for j in missing))
        for j in missing:
            if j in obj.present or j in obj.inflight:  # started while room was made
                self._evictor.written(_span_length(obj, j), 0)
                continue
            adopted[j] = obj.inflight[j] = ChunkFetch(self._slots.ticket(Priority.READAHEAD), ahead=True)
            self._objects.retain(obj)
        owned = {idx: fetch, **adopted}
        pos = 0
        batch: list[bytes] = []
        batched = 0
        async for piece in body:
            batch.append(piece)
            batched += len(piece)
            if batched >= WRITE_BATCH:
                await trio.to_thread.run_sync(_write_owned, obj, list(owned), batch, pos)
                pos += batched
                batch, batched = [], 0
                self._progress(obj, owned, adopted, pos)
        if batch:
            await trio.to_thread.run_sync(_write_owned, obj, list(owned), batch, pos)
            pos += batched
            self._progress(obj, owned, adopted, pos)
        self.bytes_fetched += pos
        if pos != obj.size:
            raise BadResponse(f"got {pos} bytes of the whole object, expected {obj.size}")

    def _progress(
        self, obj: CachedObject, owned: dict[int, ChunkFetch], adopted: dict[int, ChunkFetch], pos: int
    ) -> None:
        """The whole object's first `pos` bytes are written: tell each owned
        chunk's readers, and record the adopted chunks now complete."""
        for j, chunk_fetch in list(owned.items()):
            start, end = obj.chunk_span(j)
            if pos <= start:
                continue
            chunk_fetch.wrote(min(pos, end) - start)
            if pos >= end and j in adopted:
                del owned[j], adopted[j], obj.inflight[j]
                self._evictor.written(end - start, end - start)
                obj.present.add(j)
                obj.streamed.add(j)
                self._journal.add(obj, j, uncache=True)
                chunk_fetch.finish(None)
                self._objects.release(obj)

    def _give_back(
        self, obj: CachedObject, adopted: dict[int, ChunkFetch], error: VersionChanged | None
    ) -> None:
        """The fetch that adopted these chunks ended without their bytes:
        with the version's change (`error`) they fail too, else each goes on
        as a fetch of its own."""
        for j, chunk_fetch in adopted.items():
            self._evictor.written(_span_length(obj, j), 0)
            if error is None:
                self._nursery.start_soon(self._fetch, obj, j, chunk_fetch)
            else:
                del obj.inflight[j]
                chunk_fetch.finish(error)
                self._objects.release(obj)
        adopted.clear()


def _span_length(obj: CachedObject, idx: int) -> int:
    start, end = obj.chunk_span(idx)
    return end - start


def _write_owned(obj: CachedObject, owned: list[int], pieces: list[bytes], offset: int) -> None:
    """Write the parts of `pieces`, the object's bytes from `offset` on, that
    fall in the chunks `owned`; the rest are present or another fetch's."""
    data = memoryview(b"".join(pieces))
    end = offset + len(data)
    for j in owned:
        start, stop = obj.chunk_span(j)
        lo, hi = max(start, offset), min(stop, end)
        if lo < hi:
            _write_all(obj.fd, [data[lo - offset : hi - offset]], lo)


def _write_all(fd: int, pieces: list[bytes], offset: int) -> None:
    """pwritev all of `pieces`. A nearly full disk writes short before it fails
    (ENOSPC); ignoring the count would record a hole of zeros as cached."""
    views = [memoryview(p) for p in pieces]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]
