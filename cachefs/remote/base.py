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


@dataclass
class Pin:
    """What one cached object version's bytes must all come from.

    `size` is the object's size as listed. `validator` is the strongest
    validator the store gave for the bytes already taken ("etag:..." or
    "lm:<seconds>"; "" when the store gives none); None until the first
    answer, whose validator every later answer must then carry. It lives
    with the cached object (and its database row), so chunks fetched days
    apart still come from one version.
    """

    size: int
    validator: str | None = None


def take_whole_object(body: AsyncIterator[bytes]) -> bool:
    """Have `body`, from `Remote.read_range`, yield the whole object from its
    first byte instead of the range asked for, if the server sent the whole
    object anyway; return whether it will. Call it before reading the body.
    Bodies that hold just the range have no `take_whole` and stay as they are.
    """
    take = getattr(body, "take_whole", None)
    return take is not None and bool(take())


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
    """The object no longer matches the version being read: its bytes must
    not be mixed with those already cached, which are to be dropped."""

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

    # Optional, and what `Listings` uses when a remote has it:
    #
    #     def list_dir_pages(self, path: str) -> AbstractAsyncContextManager[
    #             AsyncIterator[list[RemoteEntry]]]
    #
    # `list_dir` in batches as they arrive (S3 pages, a streamed JSON index),
    # so that a listing of millions of names is never held whole. Used as
    # `async with remote.list_dir_pages(path) as batches: async for batch in
    # batches`. A name may come twice (in different batches); a directory
    # then wins over a file of the same name.

    async def stat(self, path: str) -> RemoteEntry:
        """Size, mtime and version of the object at `path`."""
        ...

    def read_range(
        self, path: str, start: int, end: int, version: str, pin: Pin | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream bytes [start, end) of `path`.

        Used as `async with remote.read_range(...) as chunks: async for b in
        chunks`. Yields exactly end-start bytes in order, or raises. Raises
        VersionChanged when the server reports a version other than `version`
        (when `version` is non-empty and the server reports one), or, with
        `pin`, another size or validator than the pinned ones; an unset
        `pin.validator` is set from the answer, before any byte is yielded.

        A server may send the whole object instead of the range (it ignores
        Range): the body still yields only the range, unless the caller asks
        for all of it with `take_whole_object`.
        """
        ...

    async def aclose(self) -> None: ...
