"""One cached object version: its data file and which chunks it holds.

The data file has the object's full size from the start and is sparse until
its chunks arrive. `present` is what this process knows is in the file (the
page cache counts); SQLite learns of a chunk only once it is durable.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cachefs.remote import Pin

from .slots import Ticket

# Reads up to this size are done inline whether or not the page cache has
# them: a 4 KiB read from disk takes about as long as a thread hop here.
INLINE_READ = 32 * 1024


class CacheState(enum.Enum):
    """Where an object version is on its way from the remote to the kernel."""

    ABSENT = "absent"
    PARTIAL = "partial"
    COMPLETE = "complete"


@dataclass
class ChunkFetch:
    """A fetch in flight; every reader of the chunk waits on the same one.

    Readers need not wait for the whole chunk: each says how many of its
    bytes it needs (`wait_for`) and is woken once `written` gets there, so
    it is answered as soon as its own range is in the data file.
    """

    ticket: Ticket  # its claim on a fetch slot, with its priority
    ahead: bool = False  # started by read-ahead or prefetch, not by a reader
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    written: int = 0  # bytes of the chunk in the data file, from its start
    _waiters: list[tuple[int, trio.Event]] = field(default_factory=list)

    def wrote(self, upto: int) -> None:
        """The chunk's first `upto` bytes are now in the data file."""
        if upto <= self.written:
            return  # a retry rewriting bytes already there
        self.written = upto
        if self._waiters:
            waiting = []
            for need, event in self._waiters:
                if need <= upto:
                    event.set()
                else:
                    waiting.append((need, event))
            self._waiters = waiting

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        for _need, event in self._waiters:
            event.set()
        self._waiters = []

    async def wait_for(self, upto: int) -> None:
        """Return once the chunk's first `upto` bytes are written; raise its error."""
        if self.written < upto and not self.done.is_set():
            event = trio.Event()
            self._waiters.append((upto, event))
            await event.wait()
        if self.written < upto and self.error is not None:
            raise self.error


@dataclass(eq=False)
class CachedObject:
    """An object version with an open data file, shared by all its readers."""

    key: str
    version: str
    size: int
    mtime: float
    chunk_size: int
    # The data file's path, a string: a Path costs an open of a warm file
    # more than its SQLite look-up; `path` makes one when it is wanted.
    file: str
    fd: int
    object_id: int | None = None
    present: set[int] = field(default_factory=set)
    inflight: dict[int, ChunkFetch] = field(default_factory=dict)
    # Chunks streamed into the file, whose pages the journal drops once
    # durable; reads of them from disk do not fill the page cache again.
    streamed: set[int] = field(default_factory=set)
    # The remote version every byte of the data file comes from; its
    # validator is set by the first answer when the file holds nothing yet.
    pin: Pin | None = None
    # The remote changed under it: no longer found by new opens, and its
    # record and file are being dropped (`Cache._discard`).
    stale: bool = False

    def __post_init__(self) -> None:
        if self.pin is None:
            self.pin = Pin(self.size)
    # Its database was lost and rebuilt while it was open: it goes on
    # serving from its open file, but nothing of it is recorded any more.
    detached: bool = False

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def name(self) -> str:
        """The data file's name (in its subfolder)."""
        return self.file.rpartition("/")[2]

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_span(self, idx: int) -> tuple[int, int]:
        start = idx * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def chunks_for(self, offset: int, length: int) -> range:
        """Indices of the chunks that hold bytes [offset, offset+length)."""
        end = min(self.size, offset + length)
        if end <= offset:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)

    @property
    def complete(self) -> bool:
        return len(self.present) == self.nchunks

    @property
    def bytes_present(self) -> int:
        return sum(e - s for s, e in map(self.chunk_span, self.present))

    @property
    def state(self) -> CacheState:
        if self.complete:
            return CacheState.COMPLETE
        return CacheState.PARTIAL if self.present else CacheState.ABSENT

    async def pread(self, offset: int, length: int) -> memoryview:
        """Up to `length` bytes at `offset`, fewer only past the end."""
        buf = memoryview(bytearray(min(length, max(0, self.size - offset))))
        # Streamed chunks that come from disk are not put back into the page cache.
        uncached = all(idx in self.streamed for idx in self.chunks_for(offset, len(buf)))
        if len(buf) <= INLINE_READ:
            # Even from disk this is about as quick as a thread hop.
            return buf[:_read_into(self.fd, buf, offset, uncached)]
        # What the page cache holds is read inline, which costs less than a
        # thread hop; what must come from disk is read in a worker thread.
        got = _read_cached(self.fd, buf, offset, uncached)
        if got < len(buf):
            got += await trio.to_thread.run_sync(_read_into, self.fd, buf[got:], offset + got, uncached)
        return buf[:got]

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor is gone all the same (close(2))


# preadv2 flag (linux/fs.h, 6.14+): pages a read has to bring in are dropped
# once it has copied them (so are those its read-ahead brings in, once read).
# Python 3.11's os module does not name it.
RWF_DONTCACHE = 0x80
# Until the file system says it cannot do them:
_nowait_reads = True
_uncached_reads = True


def _read_cached(fd: int, buf: memoryview, offset: int, uncached: bool) -> int:
    """Read what the page cache holds of `buf`'s range, without blocking."""
    global _nowait_reads
    if not _nowait_reads or not buf:
        return 0
    try:
        return _preadv(fd, buf, offset, os.RWF_NOWAIT, uncached)
    except BlockingIOError:
        return 0
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        _nowait_reads = False
        return 0


def _read_into(fd: int, buf: memoryview, offset: int, uncached: bool = False) -> int:
    """Fill `buf` from `offset`; stop early only at the end of the file."""
    got = 0
    while got < len(buf):
        n = _preadv(fd, buf[got:], offset + got, 0, uncached)
        if n == 0:
            break
        got += n
    return got


def _preadv(fd: int, buf: memoryview, offset: int, flags: int, uncached: bool) -> int:
    """preadv2; `uncached`: with RWF_DONTCACHE where the file system has it.

    The probe for cached pages is uncached too: on a miss it starts
    read-ahead, and only pages marked so are dropped once read.
    """
    global _uncached_reads
    if uncached and _uncached_reads:
        try:
            return os.preadv(fd, [buf], offset, flags | RWF_DONTCACHE)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        # RWF_DONTCACHE is to blame only if the same call works without it.
        try:
            n = os.preadv(fd, [buf], offset, flags)
        except BlockingIOError:
            _uncached_reads = False
            raise
        _uncached_reads = False
        return n
    return os.preadv(fd, [buf], offset, flags)
