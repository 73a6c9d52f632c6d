"""What the daemon does for each control request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from cachefs.fs import Filesystem
from cachefs.fs.prefetch import DEFAULT_JOBS, Prefetcher

from .server import Handler, RequestError

PROGRESS_INTERVAL = 0.25  # seconds between progress lines to a waiting client


def _paths(request: dict) -> list[str]:
    paths = request.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise RequestError("'paths' must be a non-empty list of paths in the mount")
    return paths


class Commands:
    """Control requests served by one mount's daemon."""

    def __init__(self, fs: Filesystem, prefetcher: Prefetcher) -> None:
        self._fs = fs
        self._prefetcher = prefetcher

    def handlers(self) -> dict[str, Handler]:
        return {"prefetch": self.prefetch, "cancel": self.cancel, "unpin": self.unpin, "stats": self.stats,
                "status": self.status, "evict": self.evict}

    async def prefetch(self, request: dict) -> AsyncIterator[dict]:
        jobs = request.get("jobs", DEFAULT_JOBS)
        if not isinstance(jobs, int) or jobs < 1:
            raise RequestError("'jobs' must be a positive whole number")
        job = self._prefetcher.start(_paths(request), jobs, bool(request.get("pin")))
        yield {"event": "started", **job.progress.as_dict()}
        if not request.get("wait", True):
            return
        while not job.finished.is_set():
            with trio.move_on_after(PROGRESS_INTERVAL):
                await job.finished.wait()
            if not job.finished.is_set():
                yield {"event": "progress", **job.progress.as_dict()}
        yield {"event": "done", **job.progress.as_dict()}

    async def cancel(self, request: dict) -> AsyncIterator[dict]:
        paths = None if request.get("all") else _paths(request)
        yield {"cancelled": self._prefetcher.cancel(paths)}

    async def unpin(self, request: dict) -> AsyncIterator[dict]:
        count = 0
        for path in _paths(request):
            count += await self._fs.cache.unpin(path)
        yield {"unpinned": count}

    async def stats(self, request: dict) -> AsyncIterator[dict]:
        yield self._fs.stats.as_dict()

    async def status(self, request: dict) -> AsyncIterator[dict]:
        """The daemon's counters and the cache's figures, for `cachefs status`."""
        cache = self._fs.cache
        figures = cache.stats()
        yield {
            "source": cache.source,
            "cache_dir": str(cache.folder),
            "stats": {**self._fs.stats.as_dict(), "bytes_fetched": figures.bytes_fetched},
            "cache": {
                **cache.usage().as_dict(),
                "cap_bytes": figures.cap_bytes,
                "min_free_bytes": figures.min_free_bytes,
            },
        }

    async def evict(self, request: dict) -> AsyncIterator[dict]:
        """Drop the cached data of paths (directories: everything below)."""
        # Each path drops what is at or under it ('' is all).
        result = await self._fs.evict(_paths(request))
        yield {"files": result.files, "bytes": result.bytes, "skipped": list(result.skipped)}
