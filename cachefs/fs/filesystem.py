"""The read-only filesystem: kernel operations on top of the cache.

Directories come from remote listings (see `listings`); files are cached
object versions (see `cachefs.cache`). A file not yet complete is opened with
DIRECT_IO so that every read reaches us and we can fetch what is missing;
that also keeps its page cache empty, which the passthrough flip needs. How
each open is answered is decided in `openmode`.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from cachefs.cache import Cache, CachedObject, CacheState, EvictResult
from cachefs.kernel.ops import Connection, DirEntry, Entry, FuseError, Opened, StatFs
from cachefs.kernel.passthrough import BackingError, BackingFiles
from cachefs.kernel.wire import ROOT_ID, Attr, DirentType, OpenFlag
from cachefs.remote import NotFound, Remote, RemoteEntry, RemoteError, VersionChanged

from .dirahead import DirectoryReadahead, ListingReadahead
from .inodes import Inode, InodeTable, child_path, is_under, split_path
from .kept import KeptBacking, KeptBackings
from .listings import Listing, Listings, ListingUnreadable, name_bytes
from .openmode import PASSTHROUGH_OPS, HandleMode, KernelOps, choose_mode
from .pagepush import WINDOW, PagePusher
from .stats import Stats

log = logging.getLogger(__name__)

# Chunks fetched ahead of a sequential reader: enough to keep several ranged
# GETs in flight while the reader consumes the current chunk.
READAHEAD_CHUNKS = 4
STATE_XATTR = b"user.cachefs.state"
STATS_XATTR = b"user.cachefs.stats"  # on the root directory
# Namespaces cachefs has nothing in: security labels, ACLs, trusted. Asked
# for them, "not supported" (not "no such attribute") lets programs that
# ask of every file, as `ls -l` does, remember it per filesystem and stop
# asking: the kernel caches no extended attributes, so each question would
# be a round trip to the daemon (two per file for `ls -l`).
UNSUPPORTED_XATTR_PREFIXES = (b"security.", b"system.", b"trusted.")
# The d_ino of a READDIR entry whose inode the kernel does not know yet; as
# libfuse does, for the inode number comes with the LOOKUP.
UNKNOWN_INO = 0xFFFFFFFF
# Cookies of the entries '.' and '..'; entry i of a listing (from 0) has i + 3.
FIRST_COOKIE = 3
# Rows read from a listing per step while filling one READDIR reply.
READDIR_STEP = 64
# Entries in the first READDIRPLUS of a handle, though 1 MiB (DIR_BLKSIZE)
# would take some 6,000: the kernel asks for the rest with READDIRPLUS only
# when the program looks at the entries it got (`ls -l` does, `find` and
# `ls` do not), so a program that only wants names gets them without an
# inode made per entry, here and in the kernel.
FIRST_PLUS_ENTRIES = 256
# Backing ids of closed small files kept registered (see `kept`): each holds
# a descriptor of its data file, so at most a quarter of the daemon's
# descriptor limit, and the bytes they keep from eviction are bounded too.
KEPT_MAX_COUNT = 4096
KEPT_MAX_BYTES = 128 * 1024 * 1024


@dataclass(eq=False)
class FileHandle:
    inode: Inode
    obj: CachedObject
    mode: HandleMode
    next_offset: int = 0  # where a sequential reader reads next


@dataclass(eq=False)
class DirHandle:
    """An open directory: it reads the listing it was opened on to the end,
    whatever refreshes meanwhile, so offsets stay meaningful."""

    inode: Inode
    listing: Listing
    # Cookie -> name of the entries the last READDIR returned: the next one
    # resumes after one of them by name, which is cheap; any other cookie
    # (a seekdir) is a position to count to.
    resume: dict[int, bytes] = dataclasses.field(default_factory=dict)
    # Whether every entry went out with its attributes (READDIRPLUS), from
    # the first to the last: then the kernel has them all cached.
    from_start: bool = False
    plain: bool = False
    to_end: bool = False


class Filesystem:
    """Implements `cachefs.kernel.ops.Operations` over a cache and a remote."""

    def __init__(self, cache: Cache, remote: Remote, metadata_ttl: float, passthrough: bool = True) -> None:
        self.cache = cache
        self._remote = remote
        self._want_passthrough = passthrough
        self._backing: BackingFiles | None = None
        self.stats = Stats()
        self.ttl = metadata_ttl
        self.listings = Listings(remote, cache.listings, metadata_ttl)
        self.inodes = InodeTable(root_mtime=time.time())
        self.dirahead = DirectoryReadahead(small_size=cache.chunk_size)
        self.listahead = ListingReadahead()
        self._handles: dict[int, FileHandle] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self.connection: Connection | None = None
        self.pages = PagePusher(cache, self.stats)
        self._nursery: trio.Nursery | None = None
        self._changed_paths: set[str] = set()  # see _changed
        self.kept = KeptBackings(_kept_count(), KEPT_MAX_BYTES)
        cache.on_discard.append(self._version_gone)
        cache.on_pressure.append(self._let_go_of_kept)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work of the filesystem (page pushes, kernel
        notifications) until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pages.run)
            self._nursery = nursery
            task_status.started()

    # --- helpers -------------------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise FuseError(errno.ESTALE)
        return inode

    async def _listing(self, inode: Inode) -> Listing:
        if not inode.is_dir:
            raise FuseError(errno.ENOTDIR)
        try:
            return await self.listings.get(inode.path)
        except RemoteError as e:
            log.warning("listing %r: %s", inode.path, e)
            raise FuseError(e.errno) from e

    # --- kernel operations ---------------------------------------------------

    def init(self, conn: Connection) -> None:
        self.connection = conn
        self.pages.connect(conn.notify_store)
        if not self._want_passthrough:
            reason = "turned off by --no-passthrough"
        elif conn.backing is None:
            reason = "the kernel did not grant FUSE_PASSTHROUGH (needs Linux 6.9 or later)"
        else:
            probe = conn.backing.probe(self.cache.data_dir)
            reason = probe.reason
            if probe.available:
                self._backing = conn.backing
        self.stats.passthrough = self._backing is not None
        self.stats.passthrough_reason = reason
        if self._backing is not None:
            log.info("passthrough on: complete files are read by the kernel")
        else:
            log.info("passthrough off: %s; complete files are served from the page cache", reason)

    def destroy(self) -> None:
        pass

    def lookup_now(self, parent: int, name: bytes) -> Entry | None:
        pinode = self._inode(parent)
        if not pinode.is_dir:
            raise FuseError(errno.ENOTDIR)
        listing = self.listings.fresh(pinode.path)
        if listing is None:
            return None
        try:
            entry = listing.entry_named(name)
        except ListingUnreadable:
            self.listings.forget(pinode.path, listing)
            return None  # lookup() fetches it again
        return self._entry(pinode, entry)

    async def lookup(self, parent: int, name: bytes) -> Entry:
        pinode = self._inode(parent)
        if not pinode.is_dir:
            raise FuseError(errno.ENOTDIR)
        try:
            entry = await self.listings.lookup(pinode.path, name.decode("utf-8", "surrogateescape"))
        except RemoteError as e:
            log.warning("listing %r: %s", pinode.path, e)
            raise FuseError(e.errno) from e
        return self._entry(pinode, entry)

    def _entry(self, pinode: Inode, entry: RemoteEntry | None) -> Entry:
        if entry is None:
            raise FuseError(errno.ENOENT)
        inode = self.inodes.for_entry(pinode, entry)
        inode.nlookup += 1
        return Entry(inode.attr(), self.ttl, self.ttl)

    def forget(self, ino: int, nlookup: int) -> None:
        self.inodes.forget(ino, nlookup)
        if self.inodes.get(ino) is None:
            self.pages.forget(ino)

    def getattr(self, ino: int) -> tuple[Attr, float]:
        return self._inode(ino).attr(), self.ttl

    def open_now(self, ino: int, flags: int) -> Opened | None:
        inode = self._inode(ino)
        if inode.is_dir:
            raise FuseError(errno.EISDIR)
        if inode.retired:
            return None  # open() asks the remote what is there now
        if self._needs_revalidation(inode):
            return None
        try:
            obj = self.cache.acquire_complete(inode.path, inode.version, inode.size, inode.mtime)
        except OSError as e:
            log.error("cannot open the cache file of %r: %s", inode.path, e)
            raise FuseError(errno.EIO) from e
        if obj is None:
            return None
        self.stats.hits += 1
        if obj.nchunks <= 1:
            # Keeps the directory's read-ahead going: its cursor follows every open.
            self._read_ahead_siblings(inode)
        return self._opened(inode, obj)

    async def open(self, ino: int, flags: int) -> Opened:
        inode = self._inode(ino)
        if inode.is_dir:
            raise FuseError(errno.EISDIR)
        if inode.retired:
            # The kernel repeats the path walk once, on ESTALE; its lookup
            # must then find the inode of what the remote has now.
            await self._refresh_entry(inode)
            raise FuseError(errno.ESTALE)
        await self._revalidate(inode)
        try:
            obj = await self.cache.acquire(inode.path, inode.version, inode.size, inode.mtime)
        except OSError as e:
            log.error("cannot open the cache file of %r: %s", inode.path, e)
            raise FuseError(errno.EIO) from e
        try:
            if obj.complete:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
            if obj.nchunks <= 1:
                # Small files come whole: one request, and later opens are
                # served from the complete file. Its own fetch is queued
                # before any read-ahead of its siblings.
                fetches = self.cache.fetch(obj, range(obj.nchunks))
                self._read_ahead_siblings(inode)
                await self.cache.wait(fetches)
        except RemoteError as e:
            log.warning("opening %r: %s", inode.path, e)
            self.cache.release(obj)
            self._note_changed(inode, e)
            if isinstance(e, VersionChanged):
                # The listing was behind the remote. Nothing was read through
                # this open yet, so it may still get the new version: record
                # it and answer ESTALE (the kernel then walks the path again
                # and opens the new inode), as after the TTL.
                await self._revalidate(inode)
            raise FuseError(e.errno) from e
        except OSError as e:
            # Logged where it happened (the fetcher); the disk is full or failing.
            self.cache.release(obj)
            raise FuseError(errno.EIO) from e
        except BaseException:
            self.cache.release(obj)
            raise
        return self._opened(inode, obj)

    def _opened(self, inode: Inode, obj: CachedObject) -> Opened:
        """A handle on `obj`, whose use the caller acquired; nothing here waits,
        so the mode chosen and the handle count it depends on change together."""
        mode = choose_mode(obj.complete, self._backing is not None, inode.handles)
        if mode is HandleMode.PASSTHROUGH and not self._register_backing(inode, obj):
            mode = HandleMode.DAEMON
        fh = next(self._fh)
        self._handles[fh] = FileHandle(inode, obj, mode)
        inode.handles[mode] += 1
        self.stats.opens[mode.value] += 1
        return Opened(fh, mode.open_flags, inode.backing_id if mode is HandleMode.PASSTHROUGH else 0)

    def _needs_revalidation(self, inode: Inode) -> bool:
        return self._changed(inode) or time.time() - inode.validated_at >= self.ttl

    def _changed(self, inode: Inode) -> bool:
        """A fetch found the remote's bytes changed at this path: the listing
        may still show the old version, so only the remote itself can tell."""
        return inode.changed or inode.path in self._changed_paths

    @staticmethod
    def _note_changed(inode: Inode, error: RemoteError) -> None:
        """After a version change the next open asks the remote what is there now."""
        if isinstance(error, VersionChanged):
            inode.changed = True

    async def _revalidate(self, inode: Inode) -> None:
        """After the TTL, check with the remote that `inode`'s version is current.

        A changed object is a new inode: we record the new version, drop the
        kernel's dentry and answer ESTALE, on which the kernel repeats the
        path walk once with a forced LOOKUP and opens the new inode. Handles
        on the old inode keep reading the old version's data file.
        """
        if not self._needs_revalidation(inode):
            return
        now = time.time()
        directory, name = split_path(inode.path)
        listing = None if self._changed(inode) else self.listings.fresh(directory)
        try:
            current = listing.entry(name) if listing is not None else None
        except ListingUnreadable:
            current = None  # asks the remote
        if current is None or current.version != inode.version:
            try:
                current = await self._stat_remote(inode.path)
            except RemoteError as e:
                # Offline or failing: keep serving the version we have.
                log.debug("cannot revalidate %r: %s", inode.path, e)
                return
        if current is not None and current.version == inode.version:
            # Even after a change: the next open starts a new cached version.
            inode.validated_at = now
            inode.changed = False
            self._changed_paths.discard(inode.path)
            return
        log.info("%r changed on the remote; new opens get the new version", inode.path)
        self._close_kept(self.kept.take_key(inode.path))
        await self._record_entry(inode, current)
        raise FuseError(errno.ESTALE if current is not None else errno.ENOENT)

    async def _stat_remote(self, path: str) -> RemoteEntry | None:
        """What the remote has at `path` now (None: nothing); RemoteError if it cannot tell."""
        try:
            return await self._remote.stat(path)
        except NotFound:
            return None

    async def _record_entry(self, inode: Inode, current: RemoteEntry | None) -> None:
        """Put `current` (what the remote has at `inode`'s path) into its listing,
        and drop the kernel's dentry, so the next lookup sees it."""
        directory, name = split_path(inode.path)
        await self.listings.update_entry(directory, name, current and _renamed(current, name))
        self._changed_paths.discard(inode.path)
        await self._invalidate_dentry(directory, name)

    async def _invalidate_dentry(self, directory: str, name: str) -> None:
        parent = self.inodes.find_dir(directory)
        notify = self.connection.notify_inval_entry if self.connection else None
        if parent is not None and notify is not None:
            await notify(parent.ino, name.encode("utf-8", "surrogateescape"))

    async def evict(self, paths: list[str]) -> EvictResult:
        """Drop what is cached at or under `paths`: the cache's files, and the
        kernel's page cache of files no handle has open (an open one keeps
        both, and is named in the result)."""
        self._close_kept(self.kept.take_where(lambda key: is_under(key, paths)))
        result = await self.cache.evict(paths)
        inval = self.connection.notify_inval_inode if self.connection else None
        if inval is not None:
            for inode in self.inodes.files_under(paths):
                if not inode.opens:
                    await inval(inode.ino)
                    self.pages.forget(inode.ino)
        return result

    async def _refresh_entry(self, inode: Inode) -> None:
        """Put what the remote has now at `inode`'s path into its listing, and
        drop the kernel's dentry; ENOENT if the remote has nothing there."""
        try:
            current = await self._stat_remote(inode.path)
        except RemoteError as e:
            log.warning("cannot ask the remote about %r: %s", inode.path, e)
            raise FuseError(e.errno) from e
        await self._record_entry(inode, current)
        if current is None:
            raise FuseError(errno.ENOENT)

    def _version_gone(self, key: str, version: str) -> None:
        """The remote's bytes of `key` changed under `version` (the cache found
        out while fetching). The kernel's page cache of the inode holds bytes
        of the old ones, and handles open on it may add more: so the inode
        stays with those handles, and the next open gets a new one."""
        self._changed_paths.add(key)
        self._close_kept(self.kept.take_key(key))
        inode = self.inodes.find_file(key, version)
        if inode is None:
            return
        self.inodes.retire(inode)
        self.pages.forget(inode.ino)
        if self._nursery is not None:
            directory, name = split_path(key)
            self._nursery.start_soon(self._invalidate_dentry, directory, name)

    def _read_ahead_siblings(self, inode: Inode) -> None:
        directory, _, name = inode.path.rpartition("/")
        listing = self.listings.cached(directory)
        if listing is None:
            return
        try:
            siblings = self.dirahead.on_open(directory, listing, name)
        except ListingUnreadable:
            return
        for entry in siblings:
            self.cache.fetch_in_background(child_path(directory, entry.name), entry.version, entry.size, entry.mtime)

    def _read_ahead_listings(self, inode: Inode) -> None:
        """List the next sibling directories early when directories are
        opened one after another in listing order (find, ls -R, du)."""
        if not inode.path or self._nursery is None:
            return
        directory, name = split_path(inode.path)
        parent = self.listings.cached(directory)
        if parent is None:
            return
        try:
            siblings = self.listahead.on_open(directory, parent, name)
        except ListingUnreadable:
            return
        for entry in siblings:
            self._nursery.start_soon(self._list_early, child_path(directory, entry.name))

    async def _list_early(self, path: str) -> None:
        try:
            await self.listings.get(path)
        except RemoteError as e:
            log.debug("listing %r ahead of the reader: %s", path, e)

    def _register_backing(self, inode: Inode, obj: CachedObject) -> bool:
        """Give the inode its backing id at its first passthrough open: the
        one kept for its version if there is one, else a new one."""
        if inode.backing_id:
            return True
        assert self._backing is not None
        kept = self.kept.take(obj.key, obj.version)
        if kept is not None and kept.obj is not obj:
            # Another object of the same version (the cache started over): not this file.
            self._close_kept([kept])
            kept = None
        if kept is not None:
            # The handle holds a use of its own.
            self.cache.release(kept.obj)
            self.stats.backing_ids_kept -= 1
            self.stats.kept_reopens += 1
            inode.backing_id = kept.backing_id
            inode.kernel_ops = PASSTHROUGH_OPS
            self.stats.backing_ids_open += 1
            return True
        try:
            # The daemon's own descriptor: the same file even when the cache
            # folder was removed or rebuilt under us since. The kernel takes
            # a reference to it, but reads through a file of its own, opened
            # read-only by path at each passthrough open.
            inode.backing_id = self._backing.open(obj.fd)
        except BackingError as e:
            log.warning("passthrough for %r failed (%s); serving it from the daemon", inode.path, e)
            return False
        inode.kernel_ops = PASSTHROUGH_OPS
        self.stats.backing_ids_open += 1
        return True

    def _release_backing(self, inode: Inode, obj: CachedObject) -> None:
        """Let go of the inode's backing id with its last passthrough handle,
        never earlier, and of the handle's use of `obj`: both are kept for
        the next open when the object is a complete small one (`kept`)."""
        if inode.handles[HandleMode.PASSTHROUGH] or not inode.backing_id:
            self.cache.release(obj)
            return
        backing_id, inode.backing_id = inode.backing_id, 0
        inode.kernel_ops = KernelOps.NONE
        self.stats.backing_ids_open -= 1
        keep = not (inode.retired or obj.stale or obj.detached) and obj.complete and obj.nchunks <= 1
        if keep and self.kept.fits(obj):
            self.stats.backing_ids_kept += 1
            self._close_kept(self.kept.keep(KeptBacking(obj, backing_id)))
            return
        self.cache.release(obj)
        self._close_backing(backing_id, inode.path)

    def _close_backing(self, backing_id: int, path: str) -> None:
        assert self._backing is not None
        try:
            self._backing.close(backing_id)
        except BackingError as e:
            log.warning("closing backing id %d of %r: %s", backing_id, path, e)

    def _close_kept(self, kept: list[KeptBacking]) -> int:
        """Close kept backing ids and let go of their objects; returns how many."""
        for k in kept:
            self.stats.backing_ids_kept -= 1
            self._close_backing(k.backing_id, k.obj.key)
            self.cache.release(k.obj)
        return len(kept)

    def _let_go_of_kept(self) -> int:
        """The cache needs the objects kept open here (for room, or it starts over)."""
        return self._close_kept(self.kept.take_all())

    async def read(self, ino: int, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._handles.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        sequential = offset == handle.next_offset
        handle.next_offset = offset + size
        self.stats.fuse_reads += 1
        try:
            data = await self.cache.read(handle.obj, offset, size, READAHEAD_CHUNKS if sequential else 0)
            self.stats.bytes_served += len(data)
            if handle.mode is HandleMode.PAGE_CACHE and not sequential and handle.obj.size > WINDOW:
                self.pages.after_miss(ino, handle.obj, offset)
            return data
        except RemoteError as e:
            log.warning("reading %r at %d: %s", handle.inode.path, offset, e)
            self._note_changed(handle.inode, e)
            raise FuseError(e.errno) from e
        except OSError as e:
            raise FuseError(errno.EIO) from e

    def release(self, ino: int, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.inode.handles[handle.mode] -= 1
        if handle.mode is HandleMode.PASSTHROUGH:
            self._release_backing(handle.inode, handle.obj)
        else:
            self.cache.release(handle.obj)
        self.inodes.drop_if_unused(handle.inode)

    async def opendir(self, ino: int) -> Opened:
        inode = self._inode(ino)
        listing = await self._listing(inode)
        self._read_ahead_listings(inode)
        self.listings.hold(listing)
        fh = next(self._fh)
        self._dir_handles[fh] = DirHandle(inode, listing)
        # The kernel keeps the entries it read in its page cache and, while
        # the listing stays the one they came from, answers readdir from
        # there: a second `ls -l` of a big directory costs us one OPENDIR.
        # Only if it also has every entry's attributes (all were read with
        # READDIRPLUS, see releasedir): else each would cost a LOOKUP, and
        # a READDIRPLUS of them all, as a new read brings, is far cheaper.
        flags = OpenFlag.CACHE_DIR
        if inode.listing_key == listing.key:
            flags |= OpenFlag.KEEP_CACHE
        else:
            inode.listing_key = None
        return Opened(fh, flags)

    async def readdir(self, ino: int, fh: int, offset: int, plus: bool = False) -> Iterator[DirEntry]:
        """The entries after cookie `offset`, read from the listing as the
        caller takes them: it stops when the kernel's buffer is full."""
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        if offset == 0:
            handle.from_start = True
        if not plus:
            handle.plain = True
        position = max(offset - FIRST_COOKIE + 1, 0)
        after = handle.resume.get(offset) if offset >= FIRST_COOKIE else None
        try:
            first = self._readdir_page(handle, position, after)
        except ListingUnreadable:
            # The database lost it: read on in a listing fetched again.
            self.listings.forget(handle.inode.path, handle.listing)
            self.listings.release(handle.listing)
            handle.listing = await self._listing(handle.inode)
            self.listings.hold(handle.listing)
            handle.inode.listing_key = None
            first = self._readdir_page(handle, position, None)
        limit = FIRST_PLUS_ENTRIES if plus and offset == 0 else None
        return self._dirents(handle, offset, position, first, limit)

    @staticmethod
    def _readdir_page(handle: DirHandle, position: int, after: bytes | None) -> list[RemoteEntry]:
        if after is not None:
            return handle.listing.page(after, READDIR_STEP)
        return handle.listing.page_at(position, READDIR_STEP)

    def _dirents(self, handle: DirHandle, offset: int, position: int,
                 page: list[RemoteEntry], limit: int | None) -> Iterator[DirEntry]:
        inode = handle.inode
        if offset < 1:
            yield DirEntry(b".", inode.ino, DirentType.DIR, 1)
        if offset < 2:
            yield DirEntry(b"..", inode.ino, DirentType.DIR, 2)
        resume: dict[int, bytes] = {}
        handle.resume = resume
        cookie = position + FIRST_COOKIE
        end = cookie + limit if limit is not None else None
        while page:
            for e in page:
                if cookie == end:
                    return
                name = name_bytes(e.name)
                resume[cookie] = name
                known = self.inodes.find(inode, e)
                yield DirEntry(name, known.ino if known is not None else UNKNOWN_INO,
                               DirentType.DIR if e.is_dir else DirentType.REG, cookie)
                cookie += 1
            if len(page) < READDIR_STEP:
                break
            try:
                page = handle.listing.page(name, READDIR_STEP)
            except ListingUnreadable:
                return  # the next READDIR, from here, reads a listing fetched again
        handle.to_end = True

    def releasedir(self, ino: int, fh: int) -> None:
        handle = self._dir_handles.pop(fh, None)
        if handle is None:
            return
        self.listings.release(handle.listing)
        if handle.from_start and handle.to_end and not handle.plain:
            handle.inode.listing_key = handle.listing.key

    def statfs(self) -> StatFs:
        return StatFs()

    def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = self._inode(ino)
        if name == STATE_XATTR and not inode.is_dir:
            return self._state_text(inode).encode()
        if name == STATS_XATTR and ino == ROOT_ID:
            return json.dumps(self.stats.as_dict()).encode()
        if name.startswith(UNSUPPORTED_XATTR_PREFIXES):
            raise FuseError(errno.EOPNOTSUPP)
        raise FuseError(errno.ENODATA)

    def listxattr(self, ino: int) -> list[bytes]:
        if ino == ROOT_ID:
            return [STATS_XATTR]
        return [] if self._inode(ino).is_dir else [STATE_XATTR]

    def _state_text(self, inode: Inode) -> str:
        """absent, partial BYTES/SIZE, complete, or passthrough opens=N."""
        if inode.kernel_ops:
            return f"passthrough opens={inode.handles[HandleMode.PASSTHROUGH]}"
        if inode.size == 0:
            return CacheState.COMPLETE.value  # nothing to fetch, nothing recorded
        state, cached = self.cache.state(inode.path, inode.version)
        if state is CacheState.PARTIAL:
            return f"partial {cached}/{inode.size}"
        return state.value


def _kept_count() -> int:
    """How many backing ids `kept` may hold: each holds a descriptor."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return KEPT_MAX_COUNT
    return max(0, min(KEPT_MAX_COUNT, soft // 4))


def _renamed(entry: RemoteEntry, name: str) -> RemoteEntry:
    """A stat result under the name its listing uses."""
    return dataclasses.replace(entry, name=name)
