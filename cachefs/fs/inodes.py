"""The inode table: kernel node ids for remote paths, and their lookup counts.

An inode is one version of one path. The kernel holds `nlookup` references
(from LOOKUP and READDIRPLUS) and drops them with FORGET; open handles hold
the inode too. When both reach zero the inode is forgotten.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field

from cachefs.kernel.wire import ROOT_ID, Attr
from cachefs.remote import RemoteEntry

from .openmode import HandleMode, KernelOps

FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555
# A directory's st_blksize is the buffer glibc's readdir asks getdents to
# fill (from 32 KiB up to 1 MiB), and the kernel passes that size on to
# READDIR and READDIRPLUS (up to max_pages): 1 MiB takes about 6,000
# entries with their attributes per round trip instead of 200.
DIR_BLKSIZE = 1024 * 1024
FILE_BLKSIZE = 4096
# Everything belongs to the user the daemon runs as.
_UID = os.getuid()
_GID = os.getgid()


@dataclass(eq=False, slots=True)
class Inode:
    ino: int
    path: str  # key in the remote; '' is the root
    is_dir: bool
    size: int
    mtime: float
    version: str
    nlookup: int = 0
    # When the remote last confirmed this version (listing or stat).
    validated_at: float = field(default_factory=time.time)
    # A fetch found the remote changed: the next open asks the remote
    # itself, not the listing, which may still show the old version.
    changed: bool = False
    # Open handles by mode (see `handles`); made at the first open, as most
    # inodes (every entry of a listed directory) are never opened.
    _handles: Counter[HandleMode] | None = None
    backing_id: int = 0  # registered while passthrough handles are open
    # The remote's bytes changed under this version: only the handles
    # already open use it; a new lookup gets a new inode.
    retired: bool = False
    kernel_ops: KernelOps = KernelOps.NONE
    # Which listing the kernel's cache of this directory's entries came
    # from (Listing.key); kept across opens while it is the same.
    listing_key: tuple[int, int] | None = None

    @property
    def handles(self) -> Counter[HandleMode]:
        """Open handles by mode; see openmode for the rule that keeps them apart."""
        if self._handles is None:
            self._handles = Counter()
        return self._handles

    @property
    def opens(self) -> int:
        return sum(self._handles.values()) if self._handles else 0

    def attr(self) -> Attr:
        return Attr(
            ino=self.ino,
            size=self.size,
            mode=DIR_MODE if self.is_dir else FILE_MODE,
            nlink=2 if self.is_dir else 1,
            mtime=self.mtime,
            uid=_UID,
            gid=_GID,
            blksize=DIR_BLKSIZE if self.is_dir else FILE_BLKSIZE,
        )


def child_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def is_under(path: str, paths: list[str]) -> bool:
    """Whether `path` is at or below one of `paths` ('' is everything)."""
    return any(p == "" or path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def split_path(path: str) -> tuple[str, str]:
    """(parent directory, name) of a non-root path."""
    parent, _, name = path.rpartition("/")
    return parent, name


class InodeTable:
    """Maps node ids to inodes and (path, version) back to node ids."""

    def __init__(self, root_mtime: float) -> None:
        self._ids = itertools.count(ROOT_ID + 1)
        root = Inode(ROOT_ID, "", True, 0, root_mtime, "", nlookup=1)
        self._by_ino: dict[int, Inode] = {ROOT_ID: root}
        self._by_path: dict[tuple[str, str], Inode] = {("", ""): root}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def files_under(self, paths: list[str]) -> list[Inode]:
        """File inodes at or below any of `paths` ('' is everything)."""
        return [i for i in self._by_ino.values() if not i.is_dir and is_under(i.path, paths)]

    def find_file(self, path: str, version: str) -> Inode | None:
        return self._by_path.get((path, version))

    def retire(self, inode: Inode) -> None:
        """From now on `inode` only serves what has it already (the kernel's
        references, open handles); lookups of its path make a new one."""
        inode.retired = True
        if self._by_path.get((inode.path, inode.version)) is inode:
            del self._by_path[(inode.path, inode.version)]

    def find_dir(self, path: str) -> Inode | None:
        """The directory inode of `path`, if the kernel knows it."""
        return self._by_path.get((path, ""))

    def find(self, parent: Inode, entry: RemoteEntry) -> Inode | None:
        """The inode of `entry` under `parent` if there is one already."""
        return self._by_path.get((child_path(parent.path, entry.name), "" if entry.is_dir else entry.version))

    def for_entry(self, parent: Inode, entry: RemoteEntry) -> Inode:
        """The inode of `entry` under `parent`: reused while its version holds."""
        path = child_path(parent.path, entry.name)
        version = "" if entry.is_dir else entry.version
        inode = self._by_path.get((path, version))
        if inode is None:
            inode = Inode(next(self._ids), path, entry.is_dir, entry.size, entry.mtime, version)
            self._by_ino[inode.ino] = inode
            self._by_path[(path, version)] = inode
        elif entry.is_dir:
            inode.mtime = entry.mtime
        return inode

    def forget(self, ino: int, nlookup: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None or ino == ROOT_ID:
            return
        inode.nlookup = max(0, inode.nlookup - nlookup)
        self.drop_if_unused(inode)

    def drop_if_unused(self, inode: Inode) -> None:
        if inode.nlookup == 0 and inode.opens == 0 and inode.ino != ROOT_ID:
            del self._by_ino[inode.ino]
            if self._by_path.get((inode.path, inode.version)) is inode:
                del self._by_path[(inode.path, inode.version)]
