"""The interface every remote store implements, and the errors it raises.

The cache and filesystem layers see a remote only through `Remote`: list a
directory, stat one object, and stream a byte range of one object version.
Paths are relative keys with '/' separators and no leading slash; the root
directory is the empty string.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


# The largest size a file can have (off_t, and SQLite's INTEGER).
MAX_OBJECT_SIZE = 2**63 - 1


@dataclass(frozen=True)
class RemoteEntry:
    """One name in a remote directory, or the result of a stat."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    # Identifies the object version: the ETag when the store gives one, else
    # derived from size and mtime. A different version means different bytes.
    version: str = ""

    @property
    def usable(self) -> bool:
        """Whether a file of this size can exist: servers may list any number."""
        return self.is_dir or (type(self.size) is int and 0 <= self.size <= MAX_OBJECT_SIZE)


class RemoteError(Exception):
    """A remote operation failed; `errno` is what a reader should see.

    `summary`, when given, is a one-line explanation for a person (e.g.
    "bucket 'x' does not exist"), shown instead of the technical message
    when a mount cannot be made.
    """

    errno: int = errno.EIO

    def __init__(self, message: str, *, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class NotFound(RemoteError):
    errno = errno.ENOENT


class AccessDenied(RemoteError):
    errno = errno.EACCES


class WrongCredentials(AccessDenied):
    """The store rejected the credentials themselves: an unknown access key,
    a bad signature (wrong secret), an expired token."""


class Unreachable(RemoteError):
    """Connecting failed, or the server kept failing after retries."""

    errno = errno.EIO


class VersionChanged(RemoteError):
    """The object no longer matches the version being read."""

    errno = errno.EIO


class BadResponse(RemoteError):
    """The server answered something we cannot trust (wrong range, length...)."""

    errno = errno.EIO


class Remote(Protocol):
    """A read-only object store."""

    #: Human-readable identity of the store, e.g. the base URL.
    source: str

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        """Entries directly under directory `path` ('' is the root).

        Raises NotFound when the directory does not exist. Names that cannot be
        file names are skipped (and logged) by the implementation.
        """
        ...

    async def stat(self, path: str) -> RemoteEntry:
        """Size, mtime and version of the object at `path`."""
        ...

    def read_range(
        self, path: str, start: int, end: int, version: str
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream bytes [start, end) of `path`.

        Used as `async with remote.read_range(...) as chunks: async for b in
        chunks`. Yields exactly end-start bytes in order, or raises. Raises
        VersionChanged when the server reports a version other than `version`
        (when `version` is non-empty and the server reports one).
        """
        ...

    async def aclose(self) -> None: ...
