"""A FUSE session on trio: dispatch the kernel's requests, answer them.

The requests arrive through a channel (`channel`: /dev/fuse, or a fake in
the unit tests), read by one task. A request the filesystem can answer
without waiting (a getattr, a release, a look-up in a listing it has, an
open of a complete file) is answered right there; every other request runs
in its own task in the session's nursery, so a slow cold read never holds up
a getattr or a read of another file. INTERRUPT cancels the task of the
request it names. The session ends when the filesystem is unmounted (the
channel ends), on DESTROY, or when `stop()` is called.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from . import wire
from .channel import MAX_PAGES, Channel, DevFuseChannel
from .ops import Connection, DirEntry, Entry, FuseError, Opened, Operations
from .wire import InitFlag, InHeader, Opcode

log = logging.getLogger(__name__)

MAX_WRITE = 128 * 1024  # we never take writes; the kernel still wants a value
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48

# No AUTO_INVAL_DATA: an inode is one object version, whose bytes never
# change, so its page cache never goes stale; with it, every page-cache read
# first checks the attributes (0.77x native reads/s from memory, 0.93x without).
_WANTED_FLAGS = (
    InitFlag.ASYNC_READ
    | InitFlag.DO_READDIRPLUS
    | InitFlag.READDIRPLUS_AUTO
    | InitFlag.PARALLEL_DIROPS
    | InitFlag.MAX_PAGES
    | InitFlag.ASYNC_DIO
    | InitFlag.INIT_EXT
    | InitFlag.DIRECT_IO_ALLOW_MMAP
)

# A direntplus entry for '.' and '..' carries no attributes: nodeid 0 tells
# the kernel not to take a reference.
_EMPTY_ENTRY = bytes(wire.ENTRY_OUT.size + wire.ATTR.size)


class Session:
    """Serves one mounted FUSE connection with an `Operations` object.

    `channel` carries the connection's messages; a /dev/fuse descriptor
    stands for `DevFuseChannel(fd)`.
    """

    def __init__(
        self,
        channel: Channel | int,
        ops: Operations,
        *,
        want_passthrough: bool = False,
        max_stack_depth: int = 1,
        on_init: Callable[[Connection], None] | None = None,
    ) -> None:
        self.channel: Channel = DevFuseChannel(channel) if isinstance(channel, int) else channel
        # Bound once: every reply goes through it.
        self._send = self.channel.reply
        self.ops = ops
        self._want_passthrough = want_passthrough
        self._max_stack_depth = max_stack_depth
        self._on_init = on_init
        self._inflight: dict[int, trio.CancelScope] = {}
        self._stopped = False
        self._cancel = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.connection: Connection | None = None
        # Answered as each request is read, with no task: these never wait,
        # or return None when they would, and then go to `_handlers`.
        self._immediate: dict[int, Callable[[InHeader, memoryview], list[bytes] | None]] = {
            Opcode.LOOKUP: self._lookup_now,
            Opcode.GETATTR: self._getattr,
            Opcode.OPEN: self._open_now,
            Opcode.RELEASE: self._release,
            Opcode.RELEASEDIR: self._releasedir,
            Opcode.STATFS: self._statfs,
            Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr,
            Opcode.ACCESS: self._access,
        }
        # Each of these runs in a task of its own, so it may wait.
        self._handlers: dict[int, Callable[[InHeader, memoryview], Awaitable[list[bytes]]]] = {
            Opcode.LOOKUP: self._lookup,
            Opcode.OPEN: self._open,
            Opcode.READ: self._read,
            Opcode.OPENDIR: self._opendir,
            Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus,
        }

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Serve until unmounted or stopped."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not self._stopped:
                    await self.channel.serve(self._dispatch)
                nursery.cancel_scope.cancel()
        self._nursery = None
        log.debug("session ended")

    def stop(self) -> None:
        """End the session: in-flight requests are cancelled."""
        self._stopped = True
        self._cancel.cancel()

    # --- dispatch ------------------------------------------------------------

    def _dispatch(self, buf: bytes) -> bool:
        """Answer or start one request; False once the session should end."""
        hdr = InHeader.parse(buf)
        body = memoryview(buf)[wire.IN_HEADER.size : hdr.length]
        op = hdr.opcode
        # The requests of every file opened come first: LOOKUP, OPEN, RELEASE.
        if op in self._immediate and self._answer_now(hdr, body):
            return not self._stopped
        if op in self._handlers:
            self._nursery.start_soon(self._run_request, hdr, body)
            return not self._stopped
        if op == Opcode.FORGET:
            (nlookup,) = wire.FORGET_IN.unpack_from(body)
            self.ops.forget(hdr.nodeid, nlookup)
        elif op == Opcode.BATCH_FORGET:
            count, _ = wire.BATCH_FORGET_IN.unpack_from(body)
            for i in range(count):
                nodeid, nlookup = wire.FORGET_ONE.unpack_from(
                    body, wire.BATCH_FORGET_IN.size + i * wire.FORGET_ONE.size
                )
                self.ops.forget(nodeid, nlookup)
        elif op == Opcode.INTERRUPT:
            (target,) = wire.INTERRUPT_IN.unpack_from(body)
            scope = self._inflight.get(target)
            if scope is not None:
                scope.cancel()
        elif op == Opcode.INIT:
            self._init(hdr, body)
        elif op == Opcode.DESTROY:
            self.ops.destroy()
            self._reply(hdr.unique, [])
            self._stopped = True
        elif op == Opcode.FLUSH:
            # Nothing to flush on a read-only mount; ENOSYS tells the kernel
            # never to send FLUSH again, saving a round trip per close.
            self._reply_error(hdr.unique, errno.ENOSYS)
        elif op in wire.MODIFYING_OPS:
            self._reply_error(hdr.unique, errno.EROFS)
        elif op == Opcode.IOCTL:
            # isatty() and friends ask every file; "not a terminal" is right.
            self._reply_error(hdr.unique, errno.ENOTTY)
        else:
            log.debug("opcode %d not implemented", op)
            self._reply_error(hdr.unique, errno.ENOSYS)
        return not self._stopped

    def _answer_now(self, hdr: InHeader, body: memoryview) -> bool:
        """Answer the request without a task if its handler can; True if answered."""
        try:
            reply = self._immediate[hdr.opcode](hdr, body)
        except FuseError as e:
            self._reply_error(hdr.unique, e.errno)
            return True
        except Exception:
            log.exception("%s on inode %d failed", Opcode(hdr.opcode).name, hdr.nodeid)
            self._reply_error(hdr.unique, errno.EIO)
            return True
        if reply is None:
            return False
        self._reply(hdr.unique, reply)
        return True

    async def _run_request(self, hdr: InHeader, body: memoryview) -> None:
        handler = self._handlers[hdr.opcode]
        with trio.CancelScope() as scope:
            self._inflight[hdr.unique] = scope
            try:
                reply = await handler(hdr, body)
            except FuseError as e:
                self._reply_error(hdr.unique, e.errno)
                return
            except Exception:
                log.exception("%s on inode %d failed", Opcode(hdr.opcode).name, hdr.nodeid)
                self._reply_error(hdr.unique, errno.EIO)
                return
            finally:
                del self._inflight[hdr.unique]
            self._reply(hdr.unique, reply)
        if scope.cancelled_caught:
            self._reply_error(hdr.unique, errno.EINTR)

    # --- notifications -------------------------------------------------------

    async def notify_inval_entry(self, parent: int, name: bytes) -> None:
        """Make the kernel forget its cached dentry `name` in directory `parent`.

        Written from a worker thread: the kernel takes the directory's lock
        for this, and a LOOKUP in that directory may hold it while it waits
        for our answer, which this thread must stay free to send.
        """
        body = wire.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0"
        header = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(body), wire.NotifyCode.INVAL_ENTRY, 0)
        await trio.to_thread.run_sync(self.channel.notify, [header, body])

    async def notify_inval_inode(self, ino: int) -> None:
        """Make the kernel drop its page cache (and attributes) of inode `ino`.

        From a worker thread, like the other notifications that lock pages.
        """
        body = wire.NOTIFY_INVAL_INODE_OUT.pack(ino, 0, -1)
        header = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(body), wire.NotifyCode.INVAL_INODE, 0)
        await trio.to_thread.run_sync(self.channel.notify, [header, body])

    async def notify_store(self, ino: int, offset: int, data: bytes | memoryview) -> None:
        """Put `data` into the kernel's page cache of inode `ino` at `offset`.

        From a worker thread: the kernel locks each page it fills, and a
        READ of one of them holds that lock until we answer it.
        """
        body = wire.NOTIFY_STORE_OUT.pack(ino, offset, len(data), 0)
        header = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(body) + len(data), wire.NotifyCode.STORE, 0)
        await trio.to_thread.run_sync(self.channel.notify, [header, body, data])

    # --- replies -------------------------------------------------------------

    def _reply(self, unique: int, body: list[bytes]) -> None:
        length = sum(len(b) for b in body)
        self._send([wire.reply_header(unique, 0, length), *body])

    def _reply_error(self, unique: int, err: int) -> None:
        self._send([wire.reply_header(unique, -err, 0)])

    # --- INIT ----------------------------------------------------------------

    def _init(self, hdr: InHeader, body: memoryview) -> None:
        major, minor, max_readahead, flags = wire.INIT_IN.unpack_from(body)
        if major < wire.KERNEL_VERSION:
            log.error("kernel FUSE protocol %d.%d is too old", major, minor)
            self._reply_error(hdr.unique, errno.EPROTO)
            return
        if major > wire.KERNEL_VERSION:
            # The kernel retries INIT with our major version.
            self._reply(hdr.unique, [wire.INIT_OUT.pack(wire.KERNEL_VERSION, wire.KERNEL_MINOR_VERSION, *([0] * 11))])
            return
        if flags & InitFlag.INIT_EXT and len(body) >= wire.INIT_IN.size + wire.INIT_IN_FLAGS2.size:
            (flags2,) = wire.INIT_IN_FLAGS2.unpack_from(body, wire.INIT_IN.size)
            flags |= flags2 << 32
        wanted = _WANTED_FLAGS | (InitFlag.PASSTHROUGH if self._want_passthrough else 0)
        granted = int(wanted) & flags
        passthrough = bool(granted & InitFlag.PASSTHROUGH)
        out = wire.INIT_OUT.pack(
            wire.KERNEL_VERSION,
            min(minor, wire.KERNEL_MINOR_VERSION),
            max_readahead,
            granted & 0xFFFFFFFF,
            MAX_BACKGROUND,
            CONGESTION_THRESHOLD,
            MAX_WRITE,
            1,  # time_gran: nanosecond timestamps
            MAX_PAGES,
            0,  # map_alignment
            granted >> 32,
            self._max_stack_depth if passthrough else 0,
            0,  # request_timeout: none
        )
        self._reply(hdr.unique, [out])
        self.connection = Connection(
            major=major, minor=minor, flags=granted, max_readahead=max_readahead,
            max_pages=MAX_PAGES, passthrough=passthrough,
            backing=self.channel.backing_files() if passthrough else None,
            notify_inval_entry=self.notify_inval_entry,
            notify_store=self.notify_store,
            notify_inval_inode=self.notify_inval_inode,
        )
        log.debug("INIT: kernel %d.%d, granted flags %#x", major, minor, granted)
        try:
            self.ops.init(self.connection)
        except Exception:
            # The mount is up; a filesystem that fails to set up extras
            # (such as passthrough) still serves.
            log.exception("filesystem init failed")
        if self._on_init is not None:
            self._on_init(self.connection)

    # --- request handlers ----------------------------------------------------

    @staticmethod
    def _name(body: memoryview) -> bytes:
        raw = bytes(body)
        return raw[: raw.index(b"\0")] if b"\0" in raw else raw

    def _lookup_now(self, hdr: InHeader, body: memoryview) -> list[bytes] | None:
        entry = self.ops.lookup_now(hdr.nodeid, self._name(body))
        return None if entry is None else [self._pack_entry(entry)]

    async def _lookup(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        entry = await self.ops.lookup(hdr.nodeid, self._name(body))
        return [self._pack_entry(entry)]

    @staticmethod
    def _pack_entry(entry: Entry) -> bytes:
        return wire.pack_entry(entry.attr.ino, entry.attr, entry.entry_ttl, entry.attr_ttl)

    def _getattr(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        attr, ttl = self.ops.getattr(hdr.nodeid)
        return [wire.pack_attr_out(attr, ttl)]

    @staticmethod
    def _open_flags(body: memoryview) -> int:
        flags, _ = wire.OPEN_IN.unpack_from(body)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FuseError(errno.EROFS)
        return flags

    @staticmethod
    def _pack_opened(opened: Opened) -> list[bytes]:
        return [wire.OPEN_OUT.pack(opened.fh, int(opened.flags), opened.backing_id)]

    def _open_now(self, hdr: InHeader, body: memoryview) -> list[bytes] | None:
        opened = self.ops.open_now(hdr.nodeid, self._open_flags(body))
        return None if opened is None else self._pack_opened(opened)

    async def _open(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        return self._pack_opened(await self.ops.open(hdr.nodeid, self._open_flags(body)))

    async def _read(self, hdr: InHeader, body: memoryview) -> list[bytes | memoryview]:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(body)
        return [await self.ops.read(hdr.nodeid, fh, offset, size)]

    def _release(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        fh, *_ = wire.RELEASE_IN.unpack_from(body)
        self.ops.release(hdr.nodeid, fh)
        return []

    async def _opendir(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        return self._pack_opened(await self.ops.opendir(hdr.nodeid))

    def _releasedir(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        fh, *_ = wire.RELEASE_IN.unpack_from(body)
        self.ops.releasedir(hdr.nodeid, fh)
        return []

    async def _readdir(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(body)
        out, used = [], 0
        for e in await self.ops.readdir(hdr.nodeid, fh, offset):
            packed = wire.pack_dirent(e.ino, e.offset, e.dtype, e.name)
            if used + len(packed) > size:
                break
            out.append(packed)
            used += len(packed)
        # One buffer: a reply of many entries would exceed writev's IOV_MAX pieces.
        return [b"".join(out)]

    async def _readdirplus(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(body)
        out, used = [], 0
        for e in await self.ops.readdir(hdr.nodeid, fh, offset, plus=True):
            need = len(_EMPTY_ENTRY) + wire.align8(wire.DIRENT.size + len(e.name))
            if used + need > size:
                break
            # Each entry we return with a nodeid counts as a lookup, so look
            # up only what fits.
            entry_bytes = await self._plus_entry(hdr.nodeid, e)
            if entry_bytes is None:
                continue
            out.append(wire.pack_direntplus(entry_bytes, e.ino, e.offset, e.dtype, e.name))
            used += need
        return [b"".join(out)]

    async def _plus_entry(self, parent: int, e: DirEntry) -> bytes | None:
        if e.name in (b".", b".."):
            return _EMPTY_ENTRY
        try:
            entry = self.ops.lookup_now(parent, e.name) or await self.ops.lookup(parent, e.name)
            return self._pack_entry(entry)
        except FuseError:
            return None  # vanished since the listing; leave it out

    def _statfs(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        s = self.ops.statfs()
        return [wire.KSTATFS.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize)]

    def _getxattr(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        value = self.ops.getxattr(hdr.nodeid, self._name(body[wire.GETXATTR_IN.size :]))
        return self._sized(size, value)

    def _listxattr(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        names = self.ops.listxattr(hdr.nodeid)
        return self._sized(size, b"".join(n + b"\0" for n in names))

    @staticmethod
    def _sized(size: int, value: bytes) -> list[bytes]:
        # size 0 asks only how big the value is.
        if size == 0:
            return [wire.GETXATTR_OUT.pack(len(value), 0)]
        if size < len(value):
            raise FuseError(errno.ERANGE)
        return [value]

    def _access(self, hdr: InHeader, body: memoryview) -> list[bytes]:
        mask, _ = wire.ACCESS_IN.unpack_from(body)
        if mask & os.W_OK:
            raise FuseError(errno.EROFS)
        return []
