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
the conflicts above can arise.

Every other open is answered KEEP_CACHE: the kernel's page cache of the inode
serves what it holds, and only a miss reaches the daemon. A handle opened
while its file was partial therefore stops asking the daemon once its pages
are in (the daemon also pushes the pages around a random reader's miss,
see `pagepush`): a database opened cold reads at page-cache speed once warm,
instead of paying a daemon round trip per read for the handle's life. A
file that completes while such a handle stays open flips to passthrough for
new opens once that handle is closed; until then later opens share the page
cache. DIRECT_IO (the daemon serves every read) is left for a file whose
backing file could not be registered while passthrough handles are open.

Why not passthrough from the first byte, filling holes on fanotify
pre-content events: Linux 6.18 raises those events for read() through a
passthrough handle, but an mmap through one maps the backing file with no
event at all (backing_file_mmap has no pre-content hook), so a mapping of a
partial file would show its holes as zeros.
"""

from __future__ import annotations

import enum
from collections import Counter

from cachefs.kernel.wire import OpenFlag


class HandleMode(enum.Enum):
    """How reads of one open handle are served."""

    DAEMON = "daemon"  # FOPEN_DIRECT_IO: every read reaches the daemon
    PAGE_CACHE = "page-cache"  # FOPEN_KEEP_CACHE: the daemon fills the page cache, misses only
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
    if not complete or not passthrough:
        return HandleMode.PAGE_CACHE
    if open_handles[HandleMode.DAEMON]:
        # Left to the daemon only because registering the backing file
        # failed: passthrough handles may still be open.
        return HandleMode.DAEMON
    others = open_handles[HandleMode.PAGE_CACHE]
    return HandleMode.PASSTHROUGH if others == 0 else HandleMode.PAGE_CACHE
