"""What the kernel session asks of a filesystem, in Python terms.

`cachefs.kernel.session` decodes requests into calls on an `Operations`
object and encodes what it returns; a filesystem never sees bytes of the wire
format. Raising `FuseError(errno)` answers a request with that error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from .passthrough import BackingFiles
from .wire import Attr, DirentType, OpenFlag


class FuseError(Exception):
    """Answer the current request with this errno."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(errno, message)
        self.errno = errno


# Not frozen: 6x faster to make, and one is made per request or entry.
@dataclass(slots=True)
class Entry:
    """A LOOKUP result: the kernel takes one reference on `attr.ino`."""

    attr: Attr
    entry_ttl: float
    attr_ttl: float


# Not frozen: 6x faster to make, and one is made per request or entry.
@dataclass(slots=True)
class Opened:
    """An OPEN result."""

    fh: int
    flags: OpenFlag = OpenFlag(0)
    backing_id: int = 0


# Not frozen: 6x faster to make, and one is made per request or entry.
@dataclass(slots=True)
class DirEntry:
    """One directory entry; `offset` is the cookie that resumes after it."""

    name: bytes
    ino: int
    dtype: DirentType
    offset: int


@dataclass(frozen=True, slots=True)
class StatFs:
    blocks: int = 0
    bfree: int = 0
    bavail: int = 0
    files: int = 0
    ffree: int = 0
    bsize: int = 4096
    namelen: int = 255
    frsize: int = 4096


@dataclass
class Connection:
    """What INIT negotiated, handed to the filesystem once."""

    major: int
    minor: int
    flags: int
    max_readahead: int
    max_pages: int
    passthrough: bool = False  # the kernel granted FUSE_PASSTHROUGH
    backing: BackingFiles | None = None  # set when passthrough was granted
    # Drop the kernel's cached dentry (parent node id, name).
    notify_inval_entry: Callable[[int, bytes], Awaitable[None]] | None = None
    # Fill the kernel's page cache of an inode (node id, offset, bytes).
    notify_store: Callable[[int, int, bytes | memoryview], Awaitable[None]] | None = None
    # Drop the kernel's page cache of an inode (node id).
    notify_inval_inode: Callable[[int], Awaitable[None]] | None = None


class Operations(Protocol):
    """A read-only filesystem.

    The plain methods never wait: the session calls them as it reads each
    request and answers at once. The async ones run in a task per request.
    `lookup_now` and `open_now` are the waiting-free halves of `lookup` and
    `open`: they answer when they can without waiting (the common warm
    case) and return None otherwise, and then the async method is called.
    """

    def init(self, conn: Connection) -> None: ...

    def lookup_now(self, parent: int, name: bytes) -> Entry | None: ...

    async def lookup(self, parent: int, name: bytes) -> Entry: ...

    def forget(self, ino: int, nlookup: int) -> None: ...

    def getattr(self, ino: int) -> tuple[Attr, float]: ...

    def open_now(self, ino: int, flags: int) -> Opened | None: ...

    async def open(self, ino: int, flags: int) -> Opened: ...

    async def read(self, ino: int, fh: int, offset: int, size: int) -> bytes | memoryview: ...

    def release(self, ino: int, fh: int) -> None: ...

    async def opendir(self, ino: int) -> Opened:
        """A directory handle; CACHE_DIR and KEEP_CACHE in its flags let the
        kernel keep (and keep using) the entries it reads."""
        ...

    async def readdir(self, ino: int, fh: int, offset: int, plus: bool = False) -> Iterable[DirEntry]:
        """Entries after cookie `offset` (0 = from the start), '.' and '..' included.
        The session takes only what fits its reply: a lazy iterable is read no further.
        `plus`: for READDIRPLUS, which looks up each entry it returns."""
        ...

    def releasedir(self, ino: int, fh: int) -> None: ...

    def statfs(self) -> StatFs: ...

    def getxattr(self, ino: int, name: bytes) -> bytes: ...

    def listxattr(self, ino: int) -> list[bytes]: ...

    def destroy(self) -> None: ...
