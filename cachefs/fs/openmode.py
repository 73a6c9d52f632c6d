"""How each open of a file is answered: daemon reads, page cache, or passthrough.

The kernel enforces one I/O mode per inode (fs/fuse/iomode.c), and every
conflict reaches the application as EIO:

- a PASSTHROUGH open fails while a page-cached handle is open on the inode;
- any non-passthrough open fails while a PASSTHROUGH handle is open;
- a PASSTHROUGH open fails while a DIRECT_IO handle has a MAP_SHARED mapping.

The daemon sees opens and releases, never mmaps, so the rule is conservative:

    an open is answered PASSTHROUGH only when the object is complete and no
    handle other than a passthrough one is open on the inode.

A mapping keeps its file open (RELEASE comes after the last munmap), so "no
other handle open" also means "no mapping of another handle". With the rule,
an inode never has passthrough and other handles at the same time, so none of
the conflicts above can arise. The price: a file that completes while a
DIRECT_IO handle stays open flips only once that handle is closed; until then
later opens are DIRECT_IO too, served from the complete cache file.

Without passthrough, complete files are answered KEEP_CACHE (repeated reads
come from the page cache) and partial ones DIRECT_IO; those two can coexist.
"""

from __future__ import annotations

import enum
from collections import Counter

from cachefs.kernel.wire import OpenFlag


class HandleMode(enum.Enum):
    """How reads of one open handle are served."""

    DAEMON = "daemon"  # FOPEN_DIRECT_IO: every read reaches the daemon
    PAGE_CACHE = "page-cache"  # FOPEN_KEEP_CACHE: the daemon fills the page cache
    PASSTHROUGH = "passthrough"  # FOPEN_PASSTHROUGH: the kernel reads the cache file

    @property
    def open_flags(self) -> OpenFlag:
        return _FLAGS[self]


_FLAGS = {
    HandleMode.DAEMON: OpenFlag.DIRECT_IO,
    HandleMode.PAGE_CACHE: OpenFlag.KEEP_CACHE,
    HandleMode.PASSTHROUGH: OpenFlag.PASSTHROUGH,
}


class KernelOps(enum.Flag):
    """The operations the kernel performs itself on an inode (its mode).

    Empty while the daemon serves the file; READ | MMAP once the complete
    object is registered as a backing file and opens go through it.
    """

    NONE = 0
    READ = enum.auto()
    MMAP = enum.auto()


PASSTHROUGH_OPS = KernelOps.READ | KernelOps.MMAP


def choose_mode(complete: bool, passthrough: bool, open_handles: Counter[HandleMode]) -> HandleMode:
    """The mode for a new open; see the module docstring for why."""
    if not complete:
        return HandleMode.DAEMON
    if not passthrough:
        return HandleMode.PAGE_CACHE
    others = sum(n for mode, n in open_handles.items() if mode is not HandleMode.PASSTHROUGH)
    return HandleMode.PASSTHROUGH if others == 0 else HandleMode.DAEMON
