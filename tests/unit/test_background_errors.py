"""Issue 14: an unexpected exception in one background fetch ends that fetch,
never the daemon.

Fetches and prefetches run in the cache's nursery, beside every other fetch;
before, any exception but RemoteError and OSError escaped into that nursery
and took the daemon with it. A remote that raises a plain bug (RuntimeError)
for one path stands in for whatever may still slip through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from cachefs.cache import Cache
from cachefs.fs.prefetch import Prefetcher
from cachefs.remote import RemoteEntry, RemoteError

GOOD = b"fine bytes\n" * 50


class BuggyRemote:
    """Serves GOOD for every path but "bad", where reading raises a bug."""

    source = "buggy://test/"

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        return []

    async def stat(self, path: str) -> RemoteEntry:
        return RemoteEntry(path, False, len(GOOD), 0.0, "v1")

    @asynccontextmanager
    async def read_range(self, path: str, start: int, end: int, version: str,
                         pin: object = None) -> AsyncIterator[AsyncIterator[bytes]]:
        if path == "bad":
            raise RuntimeError("a bug in the remote layer")

        async def body() -> AsyncIterator[bytes]:
            yield GOOD[start:end]

        yield body()

    async def aclose(self) -> None:
        pass


async def read_whole(cache: Cache, key: str) -> bytes:
    obj = await cache.acquire(key, "v1", len(GOOD), 0.0)
    try:
        return bytes(await cache.read(obj, 0, len(GOOD)))
    finally:
        cache.release(obj)


def run_with_cache(open_cache, job) -> None:
    async def main() -> None:
        async with open_cache(BuggyRemote()) as cache:
            with trio.fail_after(30):
                await job(cache)

    trio.run(main)


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Return once `text` was logged: background work nobody waits for."""
    while text not in caplog.text:
        await trio.sleep(0.01)


def test_a_bug_in_one_fetch_fails_only_that_read(open_cache) -> None:
    async def job(cache: Cache) -> None:
        with pytest.raises(RemoteError, match="a bug in the remote layer"):
            await read_whole(cache, "bad")
        assert await read_whole(cache, "good") == GOOD

    run_with_cache(open_cache, job)


def test_a_bug_in_a_prefetch_is_logged_and_survived(open_cache, caplog: pytest.LogCaptureFixture) -> None:
    async def job(cache: Cache) -> None:
        cache.fetch_in_background("bad", "v1", len(GOOD), 0.0)  # nobody waits for this one
        await logged(caplog, "a bug in the remote layer")
        assert await read_whole(cache, "good") == GOOD

    run_with_cache(open_cache, job)
    assert "a bug in the remote layer" in caplog.text


def test_a_bug_before_a_prefetch_starts_is_logged_and_survived(
    open_cache, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def job(cache: Cache) -> None:
        real_acquire = cache.acquire

        async def broken_acquire(key: str, *args: object) -> object:
            if key == "bad":
                raise RuntimeError("a bug while opening the data file")
            return await real_acquire(key, *args)

        monkeypatch.setattr(cache, "acquire", broken_acquire)
        cache.fetch_in_background("bad", "v1", len(GOOD), 0.0)
        await logged(caplog, "a bug while opening the data file")
        assert await read_whole(cache, "good") == GOOD

    run_with_cache(open_cache, job)
    assert "a bug while opening the data file" in caplog.text


class BuggyListings:
    """Listings whose every look-up hits a bug."""

    async def get(self, path: str) -> dict[str, RemoteEntry]:
        raise RuntimeError("a bug in the listings")

    async def lookup(self, directory: str, name: str) -> RemoteEntry | None:
        raise RuntimeError("a bug in the listings")


def test_a_bug_in_a_prefetch_job_fails_its_path_not_the_daemon(open_cache) -> None:
    async def job(cache: Cache) -> None:
        async with trio.open_nursery() as nursery:
            prefetcher = Prefetcher(cache, BuggyListings(), nursery)  # type: ignore[arg-type]
            started = prefetcher.start(["some/dir"])
            await started.finished.wait()
        failures = started.progress.failures
        assert [f.path for f in failures] == ["some/dir"] and "internal error" in failures[0].error
        assert await read_whole(cache, "good") == GOOD

    run_with_cache(open_cache, job)
