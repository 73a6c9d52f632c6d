"""Prefetch: the daemon brings every file under some paths into the cache.

A job walks the listings under its paths and feeds the files to `jobs`
workers, each fetching one file's missing chunks at background priority, so
applications' reads keep going first (see cachefs.cache.slots). Chunks
already cached count as done without a request, which is what makes a job
resumable: run it again after an interruption and only what is missing is
fetched. Files a job completes are complete objects, so their next open is
answered in passthrough.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field

import trio

from cachefs.cache import Cache, Priority
from cachefs.remote import RemoteEntry, RemoteError

from .inodes import child_path
from .listings import Listings

log = logging.getLogger(__name__)

DEFAULT_JOBS = 4
MAX_JOBS = 64
# Chunks of one file requested at a time: enough to keep a worker's fetches
# overlapping, few enough that a cancelled job leaves little in flight.
CHUNK_WINDOW = 4
FINISHED_JOBS_KEPT = 32


class JobState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class Progress:
    """What a job has found and done so far; sent to `cachefs prefetch`."""

    job: int
    paths: list[str]
    state: JobState = JobState.RUNNING
    scanning: bool = True  # still walking listings: the totals may grow
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0  # cached bytes of the files found, fetched or not
    bytes_fetched: int = 0  # of those, fetched by this job
    failures: list[Failure] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["state"] = self.state.value
        d["elapsed"] = (self.finished or time.time()) - self.started
        return d


class PrefetchJob:
    """One `cachefs prefetch` request, running in the daemon."""

    def __init__(self, job_id: int, cache: Cache, listings: Listings, paths: list[str],
                 jobs: int, pin: bool) -> None:
        self.progress = Progress(job=job_id, paths=paths)
        self._cache = cache
        self._listings = listings
        self._jobs = max(1, min(jobs, MAX_JOBS))
        self._pin = pin
        self._pinned: list[str] = []
        self._cancel = trio.CancelScope()
        self.finished = trio.Event()

    def cancel(self) -> None:
        self._cancel.cancel()

    async def run(self) -> None:
        with self._cancel:
            send, receive = trio.open_memory_channel[tuple[str, RemoteEntry]](self._jobs * 4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._walk_all, send)
                for _ in range(self._jobs):
                    nursery.start_soon(self._worker, receive.clone())
                await receive.aclose()
        p = self.progress
        p.state = JobState.CANCELLED if self._cancel.cancelled_caught else JobState.DONE
        p.scanning = False
        p.finished = time.time()
        if self._pinned:
            with trio.CancelScope(shield=True):
                await self._cache.pin(self._pinned)
        log.info("prefetch %d %s: %d/%d files, %d bytes fetched, %d failed", p.job, p.state.value,
                 p.files_done, p.files_total, p.bytes_fetched, len(p.failures))
        self.finished.set()

    # --- walking -------------------------------------------------------------

    async def _walk_all(self, send: trio.MemorySendChannel[tuple[str, RemoteEntry]]) -> None:
        async with send:
            for path in self.progress.paths:
                await self._walk(path, send)
        self.progress.scanning = False

    async def _walk(self, path: str, send: trio.MemorySendChannel[tuple[str, RemoteEntry]]) -> None:
        try:
            entry = await self._entry(path)
            if entry is None:
                self._fail(path, "no such file or directory")
            elif not entry.is_dir:
                self.progress.files_total += 1
                self.progress.bytes_total += entry.size
                await send.send((path, entry))
            else:
                # In name order, a page at a time: a listing is never held whole.
                for child in await self._listings.get(path):
                    await self._walk(child_path(path, child.name), send)
        except RemoteError as e:
            self._fail(path, str(e))
        except Exception as e:
            # One bad path fails, not the job and the daemon it runs in.
            log.exception("prefetch %d: walking %r failed", self.progress.job, path)
            self._fail(path, f"internal error: {type(e).__name__}: {e}")

    async def _entry(self, path: str) -> RemoteEntry | None:
        if not path:
            return RemoteEntry(name="", is_dir=True)
        directory, _, name = path.rpartition("/")
        return await self._listings.lookup(directory, name)

    # --- fetching ------------------------------------------------------------

    async def _worker(self, receive: trio.MemoryReceiveChannel[tuple[str, RemoteEntry]]) -> None:
        async with receive:
            async for path, entry in receive:
                try:
                    await self._fetch_file(path, entry)
                except Exception as e:
                    log.exception("prefetch %d: fetching %r failed", self.progress.job, path)
                    self._fail(path, f"internal error: {type(e).__name__}: {e}")

    async def _fetch_file(self, path: str, entry: RemoteEntry) -> None:
        p = self.progress
        if self._pin:
            self._pinned.append(path)
        try:
            obj = await self._cache.acquire(path, entry.version, entry.size, entry.mtime)
        except OSError as e:
            self._fail(path, f"cache: {e.strerror or e}")
            return
        try:
            p.bytes_done += obj.bytes_present
            missing = [i for i in range(obj.nchunks) if i not in obj.present]
            for first in range(0, len(missing), CHUNK_WINDOW):
                window = missing[first : first + CHUNK_WINDOW]
                fetches = self._cache.fetch(obj, window, Priority.BACKGROUND)
                for idx, fetch in zip(window, fetches):
                    await fetch.done.wait()
                    if fetch.error is not None:
                        self._fail(path, str(fetch.error))
                        return
                    start, end = obj.chunk_span(idx)
                    p.bytes_done += end - start
                    p.bytes_fetched += end - start
            p.files_done += 1
        finally:
            self._cache.release(obj)

    def _fail(self, path: str, error: str) -> None:
        self.progress.failures.append(Failure(path or "/", error))


class Prefetcher:
    """The daemon's prefetch jobs: start, look up, cancel."""

    def __init__(self, cache: Cache, listings: Listings, nursery: trio.Nursery) -> None:
        self._cache = cache
        self._listings = listings
        self._nursery = nursery
        self._ids = itertools.count(1)
        self.jobs: dict[int, PrefetchJob] = {}

    def start(self, paths: list[str], jobs: int = DEFAULT_JOBS, pin: bool = False) -> PrefetchJob:
        job = PrefetchJob(next(self._ids), self._cache, self._listings, paths, jobs, pin)
        self._forget_old_jobs()
        self.jobs[job.progress.job] = job
        self._nursery.start_soon(job.run)
        return job

    def _forget_old_jobs(self) -> None:
        finished = [i for i, j in self.jobs.items() if j.progress.state is not JobState.RUNNING]
        for job_id in finished[:-FINISHED_JOBS_KEPT]:
            del self.jobs[job_id]

    def cancel(self, paths: list[str] | None = None) -> list[int]:
        """Cancel running jobs on any of `paths` (all jobs when None)."""
        cancelled = []
        for job in self.jobs.values():
            if job.progress.state is not JobState.RUNNING:
                continue
            if paths is None or any(_covers(p, q) for p in paths for q in job.progress.paths):
                job.cancel()
                cancelled.append(job.progress.job)
        return cancelled


def _covers(outer: str, inner: str) -> bool:
    """Whether path `outer` is `inner` or one of its ancestors ('' is the root)."""
    return not outer or inner == outer or inner.startswith(outer + "/")
