"""The fetcher with a server that ignores Range (`python3 -m http.server`):
the whole object sent for one chunk's range fills every missing chunk from
that one answer, and a body that breaks off leaves no chunk waiting forever
and none of another version."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from cachefs.cache import Cache
from cachefs.remote.base import BadResponse, Pin, VersionChanged
from memory_remote import MemoryRemote

# One write batch of the fetcher (WRITE_BATCH): progress shows chunk by chunk.
CHUNK = 1024 * 1024
SIZE = 5 * CHUNK + 123  # six chunks, the last one short
LAST = 5 * CHUNK
KEY = "big.bin"
TIMEOUT_S = 30


class WholeBody:
    """Yields [start, end) of the whole object's pieces, or all of them once
    taken (what remote.http.client.WholeBody does)."""

    def __init__(self, pieces: AsyncIterator[bytes], start: int, end: int, cut: int | None) -> None:
        self._pieces = pieces
        self._start, self._end = start, end
        self._cut = cut
        self._whole = False

    def take_whole(self) -> bool:
        self._whole = True
        return True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pos = 0
        async for piece in self._pieces:
            if self._cut is not None and pos + len(piece) > self._cut:
                raise BadResponse(f"body cut short at {self._cut}")
            at, pos = pos, pos + len(piece)
            if self._whole:
                yield piece
            elif pos > self._start:
                yield piece[max(0, self._start - at):self._end - at]
                if pos >= self._end:
                    return


class RangeIgnoringRemote(MemoryRemote):
    """Every read answers with the whole object; `cuts` breaks the next
    answers' bodies off after that many bytes."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.cuts: list[int] = []
        self.asked: list[tuple[int, int]] = []

    @asynccontextmanager
    async def read_range(self, path: str, start: int, end: int, version: str,
                         pin: Pin | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        self.asked.append((start, end))
        size = len(self.objects[path].data)
        cut = self.cuts.pop(0) if self.cuts else None
        async with super().read_range(path, 0, size, version, pin) as pieces:
            yield WholeBody(pieces, start, end, cut)


async def with_cache(open_cache, remote: MemoryRemote, body) -> None:
    async with open_cache(remote, chunk_size=CHUNK) as cache:
        with trio.fail_after(TIMEOUT_S):  # a chunk left waiting fails, not hangs
            await body(cache)


def data_of(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


async def open_object(cache: Cache, remote: MemoryRemote):
    entry = await remote.stat(KEY)
    return await cache.acquire(KEY, entry.version, entry.size, entry.mtime)


def test_one_answer_fills_every_chunk(open_cache) -> None:
    data = data_of(3)
    remote = RangeIgnoringRemote({KEY: data})

    async def body(cache: Cache) -> None:
        obj = await open_object(cache, remote)
        # A read in the fourth chunk first, then one in the second.
        assert bytes(await cache.read(obj, 3 * CHUNK + 10, 100)) == data[3 * CHUNK + 10:3 * CHUNK + 110]
        assert bytes(await cache.read(obj, CHUNK - 5, 10)) == data[CHUNK - 5:CHUNK + 5]
        await cache.wait(list(obj.inflight.values()))
        assert obj.complete and not obj.inflight
        assert bytes(await obj.pread(0, SIZE)) == data
        assert remote.asked == [(3 * CHUNK, 4 * CHUNK)]
        cache.release(obj)

    trio.run(with_cache, open_cache, remote, body)


def test_a_broken_whole_answer_is_retried_and_leaves_nothing_waiting(open_cache) -> None:
    data = data_of(5)
    remote = RangeIgnoringRemote({KEY: data})
    remote.cuts = [int(2.5 * CHUNK)]

    async def body(cache: Cache) -> None:
        obj = await open_object(cache, remote)
        assert bytes(await cache.read(obj, LAST, SIZE)) == data[LAST:]
        for offset in range(0, SIZE, CHUNK):
            assert bytes(await cache.read(obj, offset, CHUNK)) == data[offset:offset + CHUNK]
        await cache.wait(list(obj.inflight.values()))
        assert obj.complete and not obj.inflight
        assert bytes(await obj.pread(0, SIZE)) == data
        # The first answer broke off; the retry of the same chunk brought the rest.
        assert remote.asked == [(LAST, SIZE), (LAST, SIZE)]
        cache.release(obj)

    trio.run(with_cache, open_cache, remote, body)


def test_another_version_after_a_break_fails_every_waiting_chunk(open_cache) -> None:
    old, new = data_of(7), data_of(11)
    remote = RangeIgnoringRemote({KEY: old})
    remote.cuts = [int(2.5 * CHUNK)]

    async def body(cache: Cache) -> None:
        obj = await open_object(cache, remote)
        fetches = cache.fetch(obj, [0])
        await fetches[0].wait_for(CHUNK)
        assert len(obj.inflight) == 6  # the other five were adopted
        waiting = dict(obj.inflight)
        # Replaced before the broken answer is retried.
        remote.put(KEY, new)
        for fetch in waiting.values():
            await fetch.done.wait()
        assert not obj.inflight
        assert obj.present == {1}
        assert all(isinstance(waiting[i].error, VersionChanged) for i in (0, 2, 3, 4, 5))
        # What it holds is of the old version, and it is being dropped.
        assert bytes(await obj.pread(CHUNK, CHUNK)) == old[CHUNK:2 * CHUNK]
        assert obj.stale
        cache.release(obj)

    trio.run(with_cache, open_cache, remote, body)



def test_chunks_of_an_answer_that_keeps_breaking_are_fetched_on_their_own(open_cache) -> None:
    data = data_of(13)
    remote = RangeIgnoringRemote({KEY: data})
    remote.cuts = [int(2.5 * CHUNK)] * 3  # every try of the first fetch

    async def body(cache: Cache) -> None:
        obj = await open_object(cache, remote)
        fetches = cache.fetch(obj, [5])
        with pytest.raises(BadResponse):
            await cache.wait(fetches)
        # Chunks 0 and 1 came with the broken answers; 2-4, taken on from
        # them, went on by themselves without the error (one of them took
        # on chunk 5 in turn).
        assert obj.present == {0, 1} and set(obj.inflight) == {2, 3, 4}
        await cache.wait(list(obj.inflight.values()))
        assert obj.complete and not obj.inflight
        assert bytes(await obj.pread(0, SIZE)) == data
        cache.release(obj)

    trio.run(with_cache, open_cache, remote, body)
