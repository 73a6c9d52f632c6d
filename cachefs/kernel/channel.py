"""Channels: how a session's requests arrive and its replies leave.

A `Session` (see `session`) decodes requests and encodes replies; a channel
moves those bytes between the kernel and the session. `DevFuseChannel` is
the /dev/fuse I/O loop: one read per request, one writev per reply. Another
transport of the same messages (io_uring on /dev/fuse, or an in-memory fake
in the unit tests) is another class with the four methods of `Channel`.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from .passthrough import BackingFiles

log = logging.getLogger(__name__)

MAX_PAGES = 256  # fs.fuse.max_pages_limit on these kernels: 1 MiB requests
PAGE_SIZE = 4096
# The read buffer must hold the largest request the kernel may send.
READ_BUFFER = MAX_PAGES * PAGE_SIZE + 64 * 1024

# One request as it came from the kernel: header and body; True to go on.
RequestHandler = Callable[[bytes], bool]
# A message to the kernel in pieces, written as one.
Parts = Sequence[bytes | memoryview]


class Channel(Protocol):
    """The kernel's end of a session: requests in, replies and notifications out."""

    async def serve(self, handle: RequestHandler) -> None:
        """Pass each request to `handle` as it arrives, until `handle` returns
        False or the kernel ends the connection (the filesystem was unmounted).

        `handle` never waits; between requests the loop yields to other tasks.
        """
        ...

    def reply(self, parts: Parts) -> None:
        """Send one reply. A reply the kernel no longer wants (its request was
        interrupted, or the filesystem is unmounted) is dropped."""
        ...

    def notify(self, parts: Parts) -> None:
        """Send one notification. It may block while the kernel takes locks
        that a request being answered holds, so call it from a worker thread.
        A failure is logged, never raised."""
        ...

    def backing_files(self) -> BackingFiles | None:
        """Registers backing files for passthrough on this connection; None
        when the channel cannot."""
        ...


class DevFuseChannel:
    """A mounted FUSE connection's /dev/fuse descriptor, read on trio."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def serve(self, handle: RequestHandler) -> None:
        fd = self.fd
        os.set_blocking(fd, False)
        while True:
            try:
                buf = os.read(fd, READ_BUFFER)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as e:
                if e.errno == errno.ENODEV:
                    log.info("filesystem unmounted")
                    return
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue
                raise
            if not buf:
                # /dev/fuse never reads empty; a socket (the unit tests) does at its end.
                return
            if not handle(buf):
                return
            await trio.lowlevel.checkpoint()

    def reply(self, parts: Parts) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as e:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def notify(self, parts: Parts) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as e:
            # ENOENT: the kernel had no such entry (or inode) cached; nothing to undo.
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("kernel notification failed: %s", os.strerror(e.errno))

    def backing_files(self) -> BackingFiles:
        return BackingFiles(self.fd)
