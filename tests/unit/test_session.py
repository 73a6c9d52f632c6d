"""The kernel session's dispatch, fed through an in-memory channel.

Each test plays the kernel (tests/support/fake_kernel.py): it sends requests
packed with `cachefs.kernel.wire`'s structs to a `Session` serving a small
scripted filesystem, and checks the replies with the same structs. No
/dev/fuse, no mount, no root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from cachefs.kernel import Connection, DevFuseChannel, DirEntry, Entry, FuseError, Opened, Session, StatFs
from cachefs.kernel import wire
from cachefs.kernel.channel import MAX_PAGES
from cachefs.kernel.wire import ROOT_ID, Attr, DirentType, InitFlag, Opcode, OpenFlag
from fake_kernel import (
    KERNEL_FLAGS,
    FakeBackingFiles,
    MemoryChannel,
    access_in,
    batch_forget_in,
    forget_in,
    getxattr_in,
    interrupt_in,
    listxattr_in,
    name_in,
    open_in,
    parse_attr_out,
    parse_dirents,
    parse_entry,
    parse_init_out,
    parse_open_out,
    read_in,
    release_in,
)

FILE_INO = 5
DATA = bytes(range(256)) * 64


def file_attr(ino: int = FILE_INO, size: int = len(DATA)) -> Attr:
    return Attr(ino=ino, size=size, mode=stat.S_IFREG | 0o444, nlink=1, mtime=1_700_000_000.5)


class ScriptedFs:
    """An `Operations` over one directory of files named by node id.

    `names` maps a name in the root to a node id; `ready` names are
    answered by `lookup_now`, the rest only by `lookup` (as when a
    listing must be fetched). `gate`, when set, holds reads until it is.
    """

    def __init__(self) -> None:
        self.names = {b"a.bin": FILE_INO, b"b.bin": 6, b"c.bin": 7}
        self.ready: set[bytes] = {b"a.bin"}
        self.calls: Counter[str] = Counter()
        self.forgotten: list[tuple[int, int]] = []
        self.released: list[int] = []
        self.connection: Connection | None = None
        self.gate: trio.Event | None = None
        self.reads_cancelled = 0
        self.destroyed = False
        self.fail_getattr: Exception | None = None
        self.xattrs = {b"user.cachefs.state": b"complete"}

    def init(self, conn: Connection) -> None:
        self.connection = conn

    def _entry(self, name: bytes) -> Entry:
        ino = self.names.get(name)
        if ino is None:
            raise FuseError(errno.ENOENT)
        return Entry(file_attr(ino), entry_ttl=2.5, attr_ttl=1.0)

    def lookup_now(self, parent: int, name: bytes) -> Entry | None:
        self.calls["lookup_now"] += 1
        if parent != ROOT_ID:
            raise FuseError(errno.ENOTDIR)
        return self._entry(name) if name in self.ready else None

    async def lookup(self, parent: int, name: bytes) -> Entry:
        self.calls["lookup"] += 1
        await trio.lowlevel.checkpoint()
        return self._entry(name)

    def forget(self, ino: int, nlookup: int) -> None:
        self.forgotten.append((ino, nlookup))

    def getattr(self, ino: int) -> tuple[Attr, float]:
        if self.fail_getattr is not None:
            raise self.fail_getattr
        if ino == ROOT_ID:
            return Attr(ino=ROOT_ID, size=0, mode=stat.S_IFDIR | 0o555, nlink=2, mtime=0.0), 1.0
        return file_attr(ino), 1.0

    def open_now(self, ino: int, flags: int) -> Opened | None:
        self.calls["open_now"] += 1
        return Opened(fh=100 + ino, flags=OpenFlag.KEEP_CACHE) if ino == FILE_INO else None

    async def open(self, ino: int, flags: int) -> Opened:
        self.calls["open"] += 1
        await trio.lowlevel.checkpoint()
        return Opened(fh=100 + ino, flags=OpenFlag.PASSTHROUGH, backing_id=3)

    async def read(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        self.calls["read"] += 1
        if self.gate is not None:
            try:
                await self.gate.wait()
            except trio.Cancelled:
                self.reads_cancelled += 1
                raise
        if offset > len(DATA):
            raise FuseError(errno.EINVAL)
        return DATA[offset:offset + size]

    def release(self, ino: int, fh: int) -> None:
        self.released.append(fh)

    async def opendir(self, ino: int) -> Opened:
        return Opened(42)

    async def readdir(self, ino: int, fh: int, offset: int, plus: bool = False) -> list[DirEntry]:
        entries = [DirEntry(b".", ROOT_ID, DirentType.DIR, 1), DirEntry(b"..", ROOT_ID, DirentType.DIR, 2)]
        entries += [DirEntry(name, ino, DirentType.REG, i)
                    for i, (name, ino) in enumerate(sorted(self.names.items()), start=3)]
        entries.append(DirEntry(b"gone.bin", 99, DirentType.REG, len(entries) + 1))
        return entries[offset:]

    def releasedir(self, ino: int, fh: int) -> None:
        self.released.append(fh)

    def statfs(self) -> StatFs:
        return StatFs(blocks=10, bfree=2, files=7)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if name not in self.xattrs:
            raise FuseError(errno.ENODATA)
        return self.xattrs[name]

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self.xattrs)

    def destroy(self) -> None:
        self.destroyed = True


@asynccontextmanager
async def serving(fs: ScriptedFs | None = None, *, init: bool = True, **options) -> AsyncIterator[
        tuple[MemoryChannel, ScriptedFs, Session]]:
    """A session serving `fs` over a MemoryChannel, INIT done unless `init` is False."""
    fs = fs or ScriptedFs()
    kernel = MemoryChannel(options.pop("backing", None))
    session = Session(kernel, fs, **options)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            if init:
                reply = await kernel.init()
                assert reply.error == 0
            yield kernel, fs, session
            kernel.unmount()


def run(test: Callable[[], object]) -> None:
    trio.run(test)


# -- INIT ------------------------------------------------------------------------


def test_init_grants_what_both_sides_want_and_never_writeback_cache() -> None:
    connections: list[Connection] = []

    async def main() -> None:
        async with serving(init=False, on_init=connections.append) as (kernel, fs, session):
            reply = await kernel.init(max_readahead=65536)
            assert reply.error == 0
            out = parse_init_out(reply.body)
            assert (out.major, out.minor) == (wire.KERNEL_VERSION, wire.KERNEL_MINOR_VERSION)
            assert out.max_readahead == 65536
            assert out.max_pages == MAX_PAGES
            assert out.flags & InitFlag.ASYNC_READ and out.flags & InitFlag.DO_READDIRPLUS
            assert out.flags & InitFlag.MAX_PAGES and out.flags & InitFlag.INIT_EXT
            assert not out.flags & InitFlag.WRITEBACK_CACHE
            assert not out.flags & InitFlag.AUTO_INVAL_DATA
            assert not out.flags & InitFlag.PASSTHROUGH  # not asked for
            assert out.max_stack_depth == 0
            assert out.time_gran == 1
            assert fs.connection is session.connection is connections[0]
            assert fs.connection.passthrough is False and fs.connection.backing is None

    run(main)


def test_init_with_passthrough_hands_the_channels_backing_files_to_the_fs() -> None:
    backing = FakeBackingFiles()

    async def main() -> None:
        async with serving(init=False, want_passthrough=True, max_stack_depth=2,
                           backing=backing) as (kernel, fs, _):
            out = parse_init_out((await kernel.init()).body)
            assert out.flags & InitFlag.PASSTHROUGH
            assert out.max_stack_depth == 2
            assert fs.connection.passthrough and fs.connection.backing is backing

    run(main)


def test_init_offers_only_what_the_kernel_has() -> None:
    async def main() -> None:
        async with serving(init=False, want_passthrough=True) as (kernel, fs, _):
            # Without INIT_EXT the second flags word is not read: no passthrough.
            flags = KERNEL_FLAGS & ~InitFlag.INIT_EXT & ~InitFlag.ASYNC_DIO
            out = parse_init_out((await kernel.init(flags=flags, minor=38)).body)
            assert out.minor == 38
            assert out.flags & ~int(flags) == 0  # nothing the kernel did not offer
            assert out.flags & InitFlag.ASYNC_READ and not out.flags & InitFlag.ASYNC_DIO
            assert not out.flags & InitFlag.PASSTHROUGH
            assert out.max_stack_depth == 0
            assert fs.connection.passthrough is False

    run(main)


def test_init_refuses_an_old_major_and_answers_a_newer_with_its_own() -> None:
    async def main() -> None:
        async with serving(init=False) as (kernel, fs, _):
            assert (await kernel.init(major=6)).error == errno.EPROTO
            newer = parse_init_out((await kernel.init(major=8)).body)
            assert newer.major == wire.KERNEL_VERSION
            assert fs.connection is None  # the kernel retries with 7
            assert (await kernel.init()).error == 0
            assert fs.connection is not None

    run(main)


def test_an_init_the_fs_fails_still_mounts() -> None:
    class Failing(ScriptedFs):
        def init(self, conn: Connection) -> None:
            raise RuntimeError("no passthrough for you")

    async def main() -> None:
        async with serving(Failing()) as (kernel, _, session):
            assert session.connection is not None
            assert (await kernel.call(Opcode.GETATTR, ROOT_ID)).error == 0

    run(main)


# -- look-ups, attributes, opens ------------------------------------------------------


def test_lookup_is_answered_at_once_when_the_fs_can_and_in_a_task_otherwise() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            reply = await kernel.call(Opcode.LOOKUP, ROOT_ID, name_in(b"a.bin"))
            assert reply.error == 0
            entry = parse_entry(reply.body)
            assert entry.nodeid == entry.attr.ino == FILE_INO
            assert entry.entry_valid == 2.5 and entry.attr_valid == 1.0
            assert entry.attr.size == len(DATA) and stat.S_ISREG(entry.attr.mode)
            assert entry.attr.mtime == 1_700_000_000 and entry.attr.mtime_nsec == 500_000_000
            assert (fs.calls["lookup_now"], fs.calls["lookup"]) == (1, 0)

            reply = await kernel.call(Opcode.LOOKUP, ROOT_ID, name_in(b"b.bin"))
            assert parse_entry(reply.body).nodeid == 6
            assert (fs.calls["lookup_now"], fs.calls["lookup"]) == (2, 1)

            assert (await kernel.call(Opcode.LOOKUP, ROOT_ID, name_in(b"nope"))).error == errno.ENOENT
            # An error raised by the immediate half answers without a task.
            assert (await kernel.call(Opcode.LOOKUP, FILE_INO, name_in(b"x"))).error == errno.ENOTDIR
            assert fs.calls["lookup"] == 2

    run(main)


def test_getattr_replies_with_the_ttl_and_errors_become_errnos() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            ttl, attr = parse_attr_out((await kernel.call(Opcode.GETATTR, ROOT_ID)).body)
            assert ttl == 1.0 and attr.ino == ROOT_ID and stat.S_ISDIR(attr.mode) and attr.nlink == 2
            fs.fail_getattr = FuseError(errno.ESTALE)
            assert (await kernel.call(Opcode.GETATTR, 9)).error == errno.ESTALE
            # A bug in the filesystem is EIO, and the session goes on.
            fs.fail_getattr = KeyError(9)
            assert (await kernel.call(Opcode.GETATTR, 9)).error == errno.EIO
            fs.fail_getattr = None
            assert (await kernel.call(Opcode.GETATTR, 9)).error == 0

    run(main)


def test_open_read_only_at_once_or_in_a_task_and_writes_are_refused() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            fh, flags, backing_id = parse_open_out((await kernel.call(Opcode.OPEN, FILE_INO, open_in())).body)
            assert (fh, flags, backing_id) == (105, OpenFlag.KEEP_CACHE, 0)
            fh, flags, backing_id = parse_open_out((await kernel.call(Opcode.OPEN, 6, open_in())).body)
            assert (fh, flags, backing_id) == (106, OpenFlag.PASSTHROUGH, 3)
            assert (fs.calls["open_now"], fs.calls["open"]) == (2, 1)
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
                assert (await kernel.call(Opcode.OPEN, FILE_INO, open_in(flags))).error == errno.EROFS
            assert fs.calls["open_now"] == 2  # refused before the filesystem is asked

            assert (await kernel.call(Opcode.RELEASE, FILE_INO, release_in(105))).body == b""
            assert fs.released == [105]

    run(main)


def test_read_returns_the_bytes_the_fs_gives() -> None:
    async def main() -> None:
        async with serving() as (kernel, _, _s):
            reply = await kernel.call(Opcode.READ, FILE_INO, read_in(105, 1000, 5000))
            assert reply.error == 0 and reply.body == DATA[1000:6000]
            reply = await kernel.call(Opcode.READ, FILE_INO, read_in(105, len(DATA) - 10, 4096))
            assert reply.body == DATA[-10:]
            assert (await kernel.call(Opcode.READ, FILE_INO, read_in(105, len(DATA) + 1, 1))).error == errno.EINVAL

    run(main)


# -- concurrency and interrupts -----------------------------------------------------------


def test_a_waiting_read_holds_up_nothing_and_interrupt_cancels_it() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            fs.gate = trio.Event()
            slow = kernel.send(Opcode.READ, FILE_INO, read_in(105, 0, 10))
            other = kernel.send(Opcode.READ, FILE_INO, read_in(105, 10, 10))
            # Requests behind the held reads are answered meanwhile.
            assert (await kernel.call(Opcode.GETATTR, FILE_INO)).error == 0
            assert (await kernel.call(Opcode.LOOKUP, ROOT_ID, name_in(b"c.bin"))).error == 0
            assert not kernel.answered(slow) and not kernel.answered(other)

            kernel.send(Opcode.INTERRUPT, 0, interrupt_in(slow))
            assert (await kernel.answer(slow)).error == errno.EINTR
            assert fs.reads_cancelled == 1
            # An interrupt of a request already answered, or never sent, is ignored.
            kernel.send(Opcode.INTERRUPT, 0, interrupt_in(slow))
            kernel.send(Opcode.INTERRUPT, 0, interrupt_in(12345))
            fs.gate.set()
            assert (await kernel.answer(other)).body == DATA[10:20]

    run(main)


def test_stop_cancels_requests_in_flight_and_ends_the_session() -> None:
    async def main() -> None:
        fs = ScriptedFs()
        kernel = MemoryChannel()
        session = Session(kernel, fs)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run)
                await kernel.init()
                fs.gate = trio.Event()
                kernel.send(Opcode.READ, FILE_INO, read_in(105, 0, 10))
                while fs.calls["read"] == 0:
                    await trio.sleep(0.001)
                session.stop()
            assert fs.reads_cancelled == 1
            assert kernel.served

    run(main)


def test_the_session_ends_when_the_channel_does_and_on_destroy() -> None:
    async def main() -> None:
        fs = ScriptedFs()
        kernel = MemoryChannel()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Session(kernel, fs).run)
                await kernel.init()
                unique = kernel.send(Opcode.DESTROY, 0)
                # Queued behind DESTROY: never read.
                late = kernel.send(Opcode.GETATTR, ROOT_ID)
        assert (await kernel.answer(unique)).error == 0
        assert fs.destroyed and not kernel.answered(late)

        kernel = MemoryChannel()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Session(kernel, ScriptedFs()).run)
                await kernel.init()
                kernel.unmount()
        assert kernel.served

    run(main)


# -- forgetting -----------------------------------------------------------------


def test_forget_and_batch_forget_reach_the_fs_without_a_reply() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            first = kernel.send(Opcode.FORGET, FILE_INO, forget_in(3))
            second = kernel.send(Opcode.BATCH_FORGET, 0, batch_forget_in([(6, 1), (7, 2)]))
            await kernel.call(Opcode.GETATTR, ROOT_ID)  # served after both
            assert fs.forgotten == [(FILE_INO, 3), (6, 1), (7, 2)]
            assert not kernel.answered(first) and not kernel.answered(second)

    run(main)


# -- directories -------------------------------------------------------------------------


def test_readdir_packs_what_fits_and_resumes_at_the_offset() -> None:
    async def main() -> None:
        async with serving() as (kernel, _, _s):
            fh, _flags, _ = parse_open_out((await kernel.call(Opcode.OPENDIR, ROOT_ID, open_in())).body)
            assert fh == 42
            everything = parse_dirents((await kernel.call(Opcode.READDIR, ROOT_ID, read_in(fh, 0, 4096))).body)
            assert [d.name for d in everything] == [b".", b"..", b"a.bin", b"b.bin", b"c.bin", b"gone.bin"]
            assert [d.offset for d in everything] == [1, 2, 3, 4, 5, 6]
            assert everything[2].dtype == DirentType.REG and everything[0].dtype == DirentType.DIR
            # Room for three entries of up to 8 name bytes (24 + 8 each).
            some = parse_dirents((await kernel.call(Opcode.READDIR, ROOT_ID, read_in(fh, 0, 3 * 32 + 8))).body)
            assert [d.name for d in some] == [b".", b"..", b"a.bin"]
            rest = parse_dirents((await kernel.call(Opcode.READDIR, ROOT_ID, read_in(fh, 3, 4096))).body)
            assert [d.name for d in rest] == [b"b.bin", b"c.bin", b"gone.bin"]
            assert (await kernel.call(Opcode.RELEASEDIR, ROOT_ID, release_in(fh))).error == 0

    run(main)


def test_readdirplus_looks_up_each_entry_it_returns_and_skips_vanished_ones() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            reply = await kernel.call(Opcode.READDIRPLUS, ROOT_ID, read_in(42, 0, 64 * 1024))
            entries = parse_dirents(reply.body, plus=True)
            # gone.bin is listed but its look-up fails: left out, not an error.
            assert [d.name for d in entries] == [b".", b"..", b"a.bin", b"b.bin", b"c.bin"]
            assert entries[0].entry.nodeid == 0 and entries[1].entry.nodeid == 0  # no reference taken
            assert [d.entry.nodeid for d in entries[2:]] == [FILE_INO, 6, 7]
            assert all(d.entry.attr.size == len(DATA) for d in entries[2:])
            assert fs.calls["lookup"] == 3  # b.bin, c.bin and gone.bin needed the waiting half

            # A buffer for two entries looks up only those (each counts as a lookup).
            before = fs.calls["lookup_now"]
            size = 2 * (wire.ENTRY_OUT.size + wire.ATTR.size + wire.align8(wire.DIRENT.size + 5))
            reply = await kernel.call(Opcode.READDIRPLUS, ROOT_ID, read_in(42, 2, size))
            assert [d.name for d in parse_dirents(reply.body, plus=True)] == [b"a.bin", b"b.bin"]
            assert fs.calls["lookup_now"] - before == 2

    run(main)


# -- the rest of the protocol -------------------------------------------------------------


def test_xattrs_answer_size_queries_and_range_errors() -> None:
    async def main() -> None:
        async with serving() as (kernel, _, _s):
            name = b"user.cachefs.state"
            size_reply = await kernel.call(Opcode.GETXATTR, FILE_INO, getxattr_in(name, 0))
            assert wire.GETXATTR_OUT.unpack(size_reply.body) == (len(b"complete"), 0)
            assert (await kernel.call(Opcode.GETXATTR, FILE_INO, getxattr_in(name, 100))).body == b"complete"
            assert (await kernel.call(Opcode.GETXATTR, FILE_INO, getxattr_in(name, 3))).error == errno.ERANGE
            assert (await kernel.call(Opcode.GETXATTR, FILE_INO, getxattr_in(b"user.x", 100))).error == errno.ENODATA
            listed = await kernel.call(Opcode.LISTXATTR, FILE_INO, listxattr_in(100))
            assert listed.body == name + b"\0"
            size_reply = await kernel.call(Opcode.LISTXATTR, FILE_INO, listxattr_in(0))
            assert wire.GETXATTR_OUT.unpack(size_reply.body)[0] == len(name) + 1

    run(main)


def test_statfs_access_and_the_requests_a_read_only_mount_refuses() -> None:
    async def main() -> None:
        async with serving() as (kernel, _, _s):
            statfs = wire.KSTATFS.unpack((await kernel.call(Opcode.STATFS)).body)
            assert statfs[:5] == (10, 2, 0, 7, 0) and statfs[5] == 4096
            assert (await kernel.call(Opcode.ACCESS, FILE_INO, access_in(os.R_OK))).error == 0
            assert (await kernel.call(Opcode.ACCESS, FILE_INO, access_in(os.W_OK))).error == errno.EROFS
            for op in (Opcode.WRITE, Opcode.MKDIR, Opcode.UNLINK, Opcode.SETATTR, Opcode.CREATE, Opcode.RENAME2):
                assert (await kernel.call(op, FILE_INO, bytes(64))).error == errno.EROFS, op
            assert (await kernel.call(Opcode.FLUSH, FILE_INO, bytes(24))).error == errno.ENOSYS
            assert (await kernel.call(Opcode.IOCTL, FILE_INO, bytes(32))).error == errno.ENOTTY
            assert (await kernel.call(Opcode.LSEEK, FILE_INO, bytes(24))).error == errno.ENOSYS
            assert (await kernel.call(Opcode.POLL, FILE_INO, bytes(24))).error == errno.ENOSYS

    run(main)


# -- notifications ---------------------------------------------------------------------


def test_notifications_go_through_the_channel_with_unique_zero() -> None:
    async def main() -> None:
        async with serving() as (kernel, fs, _):
            conn = fs.connection
            await conn.notify_inval_entry(ROOT_ID, b"a.bin")
            await conn.notify_inval_inode(FILE_INO)
            await conn.notify_store(FILE_INO, 4096, memoryview(b"abc"))
        entry, inode, store = kernel.notifications
        length, code, unique = wire.OUT_HEADER.unpack_from(entry)
        assert (length, code, unique) == (len(entry), wire.NotifyCode.INVAL_ENTRY, 0)
        assert wire.NOTIFY_INVAL_ENTRY_OUT.unpack_from(entry, 16) == (ROOT_ID, 5, 0)
        assert entry[16 + wire.NOTIFY_INVAL_ENTRY_OUT.size:] == b"a.bin\0"
        assert wire.OUT_HEADER.unpack_from(inode)[1] == wire.NotifyCode.INVAL_INODE
        assert wire.NOTIFY_INVAL_INODE_OUT.unpack_from(inode, 16) == (FILE_INO, 0, -1)
        assert wire.OUT_HEADER.unpack_from(store)[:2] == (len(store), wire.NotifyCode.STORE)
        assert wire.NOTIFY_STORE_OUT.unpack_from(store, 16) == (FILE_INO, 4096, 3, 0)
        assert store.endswith(b"abc")

    run(main)


def test_a_descriptor_stands_for_the_dev_fuse_channel() -> None:
    r, w = os.pipe()
    try:
        session = Session(r, ScriptedFs())
        assert isinstance(session.channel, DevFuseChannel) and session.channel.fd == r
    finally:
        os.close(r)
        os.close(w)
