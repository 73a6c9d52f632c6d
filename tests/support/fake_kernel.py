"""The kernel's side of a FUSE session, in memory, for unit tests.

`MemoryChannel` is a `cachefs.kernel.channel.Channel` that plugs into a
`Session` where /dev/fuse would: the test plays the kernel, sending requests
built from the structs of `cachefs.kernel.wire` and reading the replies
(`Reply`) and notifications the session writes. The `parse_*` helpers
decode reply bodies with the same structs.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from cachefs.kernel import wire
from cachefs.kernel.passthrough import BackingFiles, ProbeResult
from cachefs.kernel.wire import InitFlag, Opcode

# What a kernel of protocol 7.45 offers at INIT (Linux 6.18, with passthrough).
KERNEL_FLAGS = (
    InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DONT_MASK | InitFlag.AUTO_INVAL_DATA
    | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.ASYNC_DIO
    | InitFlag.WRITEBACK_CACHE | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES
    | InitFlag.INIT_EXT | InitFlag.DIRECT_IO_ALLOW_MMAP | InitFlag.PASSTHROUGH
)
TIMEOUT_S = 10.0  # no unit test waits this long for one reply


@dataclass(frozen=True)
class Reply:
    unique: int
    error: int  # a positive errno, 0 for success
    body: bytes


class FakeBackingFiles(BackingFiles):
    """Backing ids without the ioctls: open hands out 1, 2, ...; close forgets them."""

    def __init__(self, *, available: bool = True) -> None:
        super().__init__(-1)
        self._available = available
        self._ids = itertools.count(1)
        self.open_ids: set[int] = set()

    def open(self, fd: int) -> int:
        os.fstat(fd)  # a real descriptor, as the kernel would insist
        backing_id = next(self._ids)
        self.open_ids.add(backing_id)
        return backing_id

    def close(self, backing_id: int) -> None:
        self.open_ids.remove(backing_id)

    def probe(self, directory) -> ProbeResult:
        return ProbeResult(True, "") if self._available else ProbeResult(False, "refused by the test")


class MemoryChannel:
    """A Channel whose kernel is the test; see the module docstring."""

    def __init__(self, backing: BackingFiles | None = None) -> None:
        self._requests, self._incoming = trio.open_memory_channel[bytes](math.inf)
        self._uniques = itertools.count(2, 2)  # the kernel's are even
        self._replies: dict[int, Reply] = {}
        self._replied: dict[int, trio.Event] = {}
        self.notifications: list[bytes] = []  # written from worker threads
        self.backing = backing
        self.served = False  # serve() has returned

    # -- the Channel interface --------------------------------------------------

    async def serve(self, handle) -> None:
        try:
            async for buf in self._incoming:
                if not handle(buf):
                    return
                await trio.lowlevel.checkpoint()
        finally:
            self.served = True

    def reply(self, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(bytes(p) for p in parts)
        length, error, unique = wire.OUT_HEADER.unpack_from(data)
        assert length == len(data), f"reply header says {length} bytes, {len(data)} written"
        assert unique not in self._replies, f"request {unique} answered twice"
        self._replies[unique] = Reply(unique, -error, data[wire.OUT_HEADER.size:])
        self._replied.setdefault(unique, trio.Event()).set()

    def notify(self, parts: Sequence[bytes | memoryview]) -> None:
        self.notifications.append(b"".join(bytes(p) for p in parts))

    def backing_files(self) -> BackingFiles | None:
        return self.backing

    # -- the kernel's side --------------------------------------------------------

    def send(self, opcode: Opcode, nodeid: int = wire.ROOT_ID, body: bytes = b"",
             unique: int | None = None) -> int:
        """Queue one request; returns its unique id."""
        if unique is None:
            unique = next(self._uniques)
        length = wire.IN_HEADER.size + len(body)
        header = wire.IN_HEADER.pack(length, opcode, unique, nodeid, os.getuid(), os.getgid(), os.getpid(), 0, 0)
        self._requests.send_nowait(header + body)
        return unique

    async def answer(self, unique: int) -> Reply:
        """The reply to request `unique`, once the session has written it."""
        with trio.fail_after(TIMEOUT_S):
            await self._replied.setdefault(unique, trio.Event()).wait()
        return self._replies[unique]

    def answered(self, unique: int) -> bool:
        return unique in self._replies

    async def call(self, opcode: Opcode, nodeid: int = wire.ROOT_ID, body: bytes = b"") -> Reply:
        """Send a request and wait for its reply."""
        return await self.answer(self.send(opcode, nodeid, body))

    async def init(self, flags: int = KERNEL_FLAGS, major: int = wire.KERNEL_VERSION,
                   minor: int = wire.KERNEL_MINOR_VERSION, max_readahead: int = 128 * 1024) -> Reply:
        return await self.call(Opcode.INIT, 0, init_in(major, minor, max_readahead, flags))

    def unmount(self) -> None:
        """The end of the connection: serve() returns once the queue is read."""
        self._requests.close()


# -- request bodies -----------------------------------------------------------------


def init_in(major: int, minor: int, max_readahead: int, flags: int) -> bytes:
    return (wire.INIT_IN.pack(major, minor, max_readahead, flags & 0xFFFFFFFF)
            + wire.INIT_IN_FLAGS2.pack(flags >> 32) + bytes(44))


def name_in(name: bytes) -> bytes:
    return name + b"\0"


def open_in(flags: int = os.O_RDONLY) -> bytes:
    return wire.OPEN_IN.pack(flags, 0)


def read_in(fh: int, offset: int, size: int) -> bytes:
    return wire.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)


def release_in(fh: int) -> bytes:
    return wire.RELEASE_IN.pack(fh, 0, 0, 0)


def forget_in(nlookup: int) -> bytes:
    return wire.FORGET_IN.pack(nlookup)


def batch_forget_in(items: list[tuple[int, int]]) -> bytes:
    return wire.BATCH_FORGET_IN.pack(len(items), 0) + b"".join(wire.FORGET_ONE.pack(*i) for i in items)


def interrupt_in(unique: int) -> bytes:
    return wire.INTERRUPT_IN.pack(unique)


def getxattr_in(name: bytes, size: int) -> bytes:
    return wire.GETXATTR_IN.pack(size, 0) + name + b"\0"


def listxattr_in(size: int) -> bytes:
    return wire.GETXATTR_IN.pack(size, 0)


def access_in(mask: int) -> bytes:
    return wire.ACCESS_IN.pack(mask, 0)


# -- reply bodies -------------------------------------------------------------------


@dataclass(frozen=True)
class AttrOut:
    ino: int
    size: int
    blocks: int
    mtime: int
    mtime_nsec: int
    mode: int
    nlink: int
    uid: int
    gid: int


def parse_attr(data: bytes, offset: int = 0) -> AttrOut:
    (ino, size, blocks, _atime, mtime, _ctime, _atimensec, mtimensec, _ctimensec,
     mode, nlink, uid, gid, _rdev, _blksize, _flags) = wire.ATTR.unpack_from(data, offset)
    return AttrOut(ino, size, blocks, mtime, mtimensec, mode, nlink, uid, gid)


@dataclass(frozen=True)
class EntryOut:
    nodeid: int
    entry_valid: float
    attr_valid: float
    attr: AttrOut


def parse_entry(data: bytes, offset: int = 0) -> EntryOut:
    nodeid, _gen, es, as_, ens, ans = wire.ENTRY_OUT.unpack_from(data, offset)
    return EntryOut(nodeid, es + ens / 1e9, as_ + ans / 1e9, parse_attr(data, offset + wire.ENTRY_OUT.size))


def parse_attr_out(data: bytes) -> tuple[float, AttrOut]:
    secs, nsec, _ = wire.ATTR_OUT.unpack_from(data)
    return secs + nsec / 1e9, parse_attr(data, wire.ATTR_OUT.size)


def parse_open_out(data: bytes) -> tuple[int, int, int]:
    """(fh, open flags, backing id)"""
    return wire.OPEN_OUT.unpack(data)


@dataclass(frozen=True)
class DirentOut:
    ino: int
    offset: int
    dtype: int
    name: bytes
    entry: EntryOut | None = None  # READDIRPLUS only


def parse_dirents(data: bytes, plus: bool = False) -> list[DirentOut]:
    out, at = [], 0
    while at < len(data):
        entry = None
        if plus:
            entry = parse_entry(data, at)
            at += wire.ENTRY_OUT.size + wire.ATTR.size
        ino, off, namelen, dtype = wire.DIRENT.unpack_from(data, at)
        name = data[at + wire.DIRENT.size: at + wire.DIRENT.size + namelen]
        out.append(DirentOut(ino, off, dtype, name, entry))
        at += wire.align8(wire.DIRENT.size + namelen)
    return out


@dataclass(frozen=True)
class InitOut:
    major: int
    minor: int
    max_readahead: int
    flags: int  # flags and flags2 together
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    max_stack_depth: int


def parse_init_out(data: bytes) -> InitOut:
    (major, minor, readahead, flags, max_bg, congestion, max_write, time_gran, max_pages,
     _align, flags2, max_stack_depth, _timeout) = wire.INIT_OUT.unpack(data)
    return InitOut(major, minor, readahead, flags | flags2 << 32, max_bg, congestion, max_write,
                   time_gran, max_pages, max_stack_depth)
