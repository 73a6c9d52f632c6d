"""The filesystem core, called as the kernel session calls it, over an
in-memory remote and a real cache in tmp_path: no mount, no server.

What a test may see is what the kernel would: entries and attributes,
handles and their open flags, bytes, errnos, notifications, xattrs, and
what the remote was asked (`MemoryRemote.calls`).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat

import pytest
import trio

from cachefs.fs.filesystem import STATE_XATTR, STATS_XATTR
from cachefs.kernel import FuseError, Session
from cachefs.kernel.wire import ROOT_ID, DirentType, Opcode, OpenFlag
from cachefs.remote import Unreachable
from fake_kernel import FakeBackingFiles, MemoryChannel, name_in, open_in, parse_dirents, parse_entry, read_in
from memory_remote import MemoryRemote

CHUNK = 64 * 1024  # files of a few hundred KiB span several chunks
BIG = (bytes(range(251)) * (5 * CHUNK // 251 + 1))[:5 * CHUNK] + b"tail"  # 6 chunks, the last of 4 bytes
SMALL = b"small file\n" * 100
TIMEOUT_S = 20


@pytest.fixture
def stack(open_stack):
    """`open_stack` with this file's chunk size."""
    return functools.partial(open_stack, chunk_size=CHUNK)


def tree() -> MemoryRemote:
    return MemoryRemote({"big.bin": BIG, "small.txt": SMALL, "dir/inner.txt": b"inner", "dir/sub/deep.txt": b"d"})


def run(main) -> None:
    async def bounded() -> None:
        with trio.fail_after(TIMEOUT_S):
            await main()

    trio.run(bounded)


async def read_all(fs, ino: int, fh: int, size: int, piece: int = 50_000) -> bytes:
    out = bytearray()
    for offset in range(0, size, piece):
        out += await fs.read(ino, fh, offset, piece)
    return bytes(out)


def fuse_errno(excinfo: pytest.ExceptionInfo[FuseError]) -> int:
    return excinfo.value.errno


# -- look-ups and attributes --------------------------------------------------


def test_lookup_and_getattr_describe_what_the_remote_lists(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote, metadata_ttl=30) as daemon:
            fs = daemon.fs
            # No listing yet: only the waiting half can answer.
            assert fs.lookup_now(ROOT_ID, b"big.bin") is None
            entry = await fs.lookup(ROOT_ID, b"big.bin")
            assert entry.entry_ttl == entry.attr_ttl == 30
            attr = entry.attr
            assert attr.size == len(BIG) and attr.mode == stat.S_IFREG | 0o444 and attr.nlink == 1
            assert attr.mtime == remote.objects["big.bin"].mtime
            assert attr.uid == os.getuid()
            # The listing is kept: the next look-up needs no wait and no request.
            again = fs.lookup_now(ROOT_ID, b"big.bin")
            assert again is not None and again.attr.ino == attr.ino
            assert fs.getattr(attr.ino) == (attr, 30)

            directory = (await fs.lookup(ROOT_ID, b"dir")).attr
            assert stat.S_ISDIR(directory.mode) and directory.nlink == 2
            inner = await fs.lookup(directory.ino, b"inner.txt")
            assert inner.attr.size == 5
            assert remote.calls["list_dir"] == 2  # the root and dir, once each

            root, _ = fs.getattr(ROOT_ID)
            assert stat.S_ISDIR(root.mode) and root.ino == ROOT_ID

    run(main)


def test_lookup_errors(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            with pytest.raises(FuseError) as e:
                await fs.lookup(ROOT_ID, b"missing")
            assert fuse_errno(e) == errno.ENOENT
            small = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            with pytest.raises(FuseError) as e:
                fs.lookup_now(small, b"x")
            assert fuse_errno(e) == errno.ENOTDIR
            with pytest.raises(FuseError) as e:
                fs.getattr(987654)
            assert fuse_errno(e) == errno.ESTALE
            # A listing the remote cannot give fails with the remote error's errno.
            directory = (await fs.lookup(ROOT_ID, b"dir")).attr.ino
            remote.fail_next("list_dir", Unreachable("down"))
            with pytest.raises(FuseError) as e:
                await fs.lookup(directory, b"inner.txt")
            assert fuse_errno(e) == errno.EIO
            assert (await fs.lookup(directory, b"inner.txt")).attr.size == 5  # not cached as a failure

    run(main)


def test_an_inode_lives_while_the_kernel_holds_it(stack) -> None:
    async def main() -> None:
        async with stack(tree()) as daemon:
            fs = daemon.fs
            ino = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            assert fs.lookup_now(ROOT_ID, b"small.txt").attr.ino == ino  # two references now
            fs.forget(ino, 1)
            assert fs.getattr(ino)[0].ino == ino
            fs.forget(ino, 1)
            with pytest.raises(FuseError) as e:
                fs.getattr(ino)
            assert fuse_errno(e) == errno.ESTALE
            fs.forget(ROOT_ID, 1)  # the root is never forgotten
            assert fs.getattr(ROOT_ID)[0].ino == ROOT_ID
            # An open handle keeps its inode after the kernel's last FORGET.
            entry = await fs.lookup(ROOT_ID, b"small.txt")
            opened = await fs.open(entry.attr.ino, os.O_RDONLY)
            fs.forget(entry.attr.ino, 1)
            assert await fs.read(entry.attr.ino, opened.fh, 0, 5) == SMALL[:5]
            fs.release(entry.attr.ino, opened.fh)
            with pytest.raises(FuseError):
                fs.getattr(entry.attr.ino)

    run(main)


# -- directories ------------------------------------------------------------------


def test_readdir_lists_dot_entries_then_names_in_order(stack) -> None:
    async def main() -> None:
        async with stack(tree()) as daemon:
            fs = daemon.fs
            fh = (await fs.opendir(ROOT_ID)).fh
            entries = list(await fs.readdir(ROOT_ID, fh, 0))
            assert [(e.name, e.dtype, e.offset) for e in entries] == [
                (b".", DirentType.DIR, 1), (b"..", DirentType.DIR, 2), (b"big.bin", DirentType.REG, 3),
                (b"dir", DirentType.DIR, 4), (b"small.txt", DirentType.REG, 5)]
            assert [e.name for e in await fs.readdir(ROOT_ID, fh, 3)] == [b"dir", b"small.txt"]
            assert list(await fs.readdir(ROOT_ID, fh, 5)) == []
            fs.releasedir(ROOT_ID, fh)
            with pytest.raises(FuseError) as e:
                await fs.readdir(ROOT_ID, fh, 0)
            assert fuse_errno(e) == errno.EBADF
            small = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            with pytest.raises(FuseError) as e:
                await fs.opendir(small)
            assert fuse_errno(e) == errno.ENOTDIR

    run(main)


def test_a_directory_handle_keeps_its_snapshot_while_the_listing_changes(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote, metadata_ttl=0) as daemon:
            fs = daemon.fs
            fh = (await fs.opendir(ROOT_ID)).fh
            remote.put("new.txt", b"new")
            assert b"new.txt" not in [e.name for e in await fs.readdir(ROOT_ID, fh, 0)]
            fresh = (await fs.opendir(ROOT_ID)).fh
            assert b"new.txt" in [e.name for e in await fs.readdir(ROOT_ID, fresh, 0)]

    run(main)


# -- opens and reads ----------------------------------------------------------------


def test_a_cold_file_is_fetched_as_it_is_read_and_opens_warm_afterwards(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            ino = (await fs.lookup(ROOT_ID, b"big.bin")).attr.ino
            assert fs.open_now(ino, os.O_RDONLY) is None  # nothing cached: must wait
            opened = await fs.open(ino, os.O_RDONLY)
            assert opened.flags == OpenFlag.KEEP_CACHE and opened.backing_id == 0
            assert remote.calls["read_range"] == 0  # a big file is fetched as it is read
            # A read across a chunk boundary, then the whole file in uneven pieces.
            assert await fs.read(ino, opened.fh, CHUNK - 10, 20) == BIG[CHUNK - 10:CHUNK + 10]
            assert await read_all(fs, ino, opened.fh, len(BIG)) == BIG
            assert await fs.read(ino, opened.fh, len(BIG) - 2, 100) == BIG[-2:]
            assert remote.calls["read_range"] == 6  # each chunk once
            fs.release(ino, opened.fh)
            assert fs.stats.misses == 1 and fs.stats.hits == 0
            assert fs.stats.bytes_served > len(BIG)

            # Complete: answered at once, read from the cache alone.
            warm = fs.open_now(ino, os.O_RDONLY)
            assert warm is not None and warm.flags == OpenFlag.KEEP_CACHE
            assert await read_all(fs, ino, warm.fh, len(BIG), piece=CHUNK) == BIG
            assert remote.calls["read_range"] == 6
            assert fs.stats.hits == 1
            fs.release(ino, warm.fh)

    run(main)


def test_a_small_file_comes_whole_at_open(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            ino = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            opened = await fs.open(ino, os.O_RDONLY)
            assert remote.calls["read_range"] == 1
            fs.release(ino, opened.fh)
            warm = fs.open_now(ino, os.O_RDONLY)
            assert warm is not None
            assert await fs.read(ino, warm.fh, 0, len(SMALL) + 10) == SMALL
            assert remote.calls["read_range"] == 1

    run(main)


def test_what_cannot_be_opened_or_read(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            directory = (await fs.lookup(ROOT_ID, b"dir")).attr.ino
            for call in (lambda: fs.open_now(directory, os.O_RDONLY), lambda: fs.open_now(ROOT_ID, os.O_RDONLY)):
                with pytest.raises(FuseError) as e:
                    call()
                assert fuse_errno(e) == errno.EISDIR
            with pytest.raises(FuseError) as e:
                await fs.read(ROOT_ID, 4242, 0, 10)
            assert fuse_errno(e) == errno.EBADF
            # A fetch that fails fails the open (EIO), and is tried anew next time.
            small = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            remote.fail_next("read_range", Unreachable("connection refused"))
            with pytest.raises(FuseError) as e:
                await fs.open(small, os.O_RDONLY)
            assert fuse_errno(e) == errno.EIO
            opened = await fs.open(small, os.O_RDONLY)
            assert await fs.read(small, opened.fh, 0, 5) == SMALL[:5]

    run(main)


# -- passthrough ------------------------------------------------------------------------


def test_complete_files_open_in_passthrough_unless_another_kind_of_handle_is_open(stack) -> None:
    backing = FakeBackingFiles()

    async def main() -> None:
        async with stack(tree(), passthrough=backing) as daemon:
            fs = daemon.fs
            assert fs.stats.passthrough and fs.stats.passthrough_reason == ""
            ino = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            cold = await fs.open(ino, os.O_RDONLY)  # the fetch happens inside open: complete at once
            assert cold.flags == OpenFlag.PASSTHROUGH and cold.backing_id == 1
            second = fs.open_now(ino, os.O_RDONLY)
            assert second.flags == OpenFlag.PASSTHROUGH and second.backing_id == 1
            assert fs.getxattr(ino, STATE_XATTR) == b"passthrough opens=2"
            fs.release(ino, cold.fh)
            assert backing.open_ids == {1}  # closed with the last passthrough handle only
            fs.release(ino, second.fh)
            # A complete small file's id is kept for its next open (see test_kept.py).
            assert backing.open_ids == {1} and fs.stats.backing_ids_open == 0
            assert fs.stats.backing_ids_kept == 1

            # A handle opened while the file was partial keeps later opens out of passthrough.
            big = (await fs.lookup(ROOT_ID, b"big.bin")).attr.ino
            partial = await fs.open(big, os.O_RDONLY)
            assert partial.flags == OpenFlag.KEEP_CACHE
            assert await read_all(fs, big, partial.fh, len(BIG), piece=CHUNK) == BIG
            meanwhile = fs.open_now(big, os.O_RDONLY)
            assert meanwhile.flags == OpenFlag.KEEP_CACHE and meanwhile.backing_id == 0
            fs.release(big, partial.fh)
            fs.release(big, meanwhile.fh)
            after = fs.open_now(big, os.O_RDONLY)
            assert after.flags == OpenFlag.PASSTHROUGH and after.backing_id == 2
            assert fs.stats.opens == {"daemon": 0, "page-cache": 2, "passthrough": 3}

    run(main)


def test_passthrough_the_kernel_refuses_leaves_every_open_to_the_page_cache(stack) -> None:
    async def main() -> None:
        async with stack(tree(), passthrough=FakeBackingFiles(available=False)) as daemon:
            fs = daemon.fs
            assert not fs.stats.passthrough and fs.stats.passthrough_reason == "refused by the test"
            ino = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            assert (await fs.open(ino, os.O_RDONLY)).flags == OpenFlag.KEEP_CACHE

    run(main)


# -- objects that change on the remote ------------------------------------------------------


def test_a_changed_object_is_a_new_inode_and_old_handles_keep_the_old_bytes(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote, metadata_ttl=0) as daemon:
            fs = daemon.fs
            old = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            handle = await fs.open(old, os.O_RDONLY)
            remote.put("small.txt", b"version two")
            # The next open asks the remote (TTL 0), finds a new version: ESTALE,
            # and the kernel's dentry is dropped so that its retry looks up anew.
            with pytest.raises(FuseError) as e:
                await fs.open(old, os.O_RDONLY)
            assert fuse_errno(e) == errno.ESTALE
            assert daemon.notified.inval_entry == [(ROOT_ID, b"small.txt")]
            new = (await fs.lookup(ROOT_ID, b"small.txt")).attr
            assert new.ino != old and new.size == len(b"version two")
            fresh = await fs.open(new.ino, os.O_RDONLY)
            assert await fs.read(new.ino, fresh.fh, 0, 100) == b"version two"
            assert await fs.read(old, handle.fh, 0, len(SMALL)) == SMALL

            remote.delete("small.txt")
            with pytest.raises(FuseError) as e:
                await fs.open(new.ino, os.O_RDONLY)
            assert fuse_errno(e) == errno.ENOENT

    run(main)


def test_a_version_change_found_mid_read_fails_the_read_and_retires_the_inode(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            ino = (await fs.lookup(ROOT_ID, b"big.bin")).attr.ino
            opened = await fs.open(ino, os.O_RDONLY)
            assert await fs.read(ino, opened.fh, 0, 100) == BIG[:100]
            remote.put("big.bin", BIG[::-1])
            # Never a mix of two versions: the read of a chunk of the new one fails.
            with pytest.raises(FuseError) as e:
                await fs.read(ino, opened.fh, 3 * CHUNK, 100)
            assert fuse_errno(e) == errno.EIO
            while not daemon.notified.inval_entry:  # the dentry is dropped in the background
                await trio.sleep(0.01)
            assert daemon.notified.inval_entry == [(ROOT_ID, b"big.bin")]
            # The inode is retired even within the TTL: opens go to the remote.
            with pytest.raises(FuseError) as e:
                await fs.open(ino, os.O_RDONLY)
            assert fuse_errno(e) == errno.ESTALE
            new = (await fs.lookup(ROOT_ID, b"big.bin")).attr.ino
            assert new != ino
            fresh = await fs.open(new, os.O_RDONLY)
            assert await read_all(fs, new, fresh.fh, len(BIG), piece=CHUNK) == BIG[::-1]

    run(main)


def test_an_open_that_finds_its_object_changed_answers_estale_for_the_new_one(stack) -> None:
    """A small object replaced behind a fresh listing: the open fetching it
    whole meets the new version, and rather than EIO it answers ESTALE, so the
    kernel's retry opens the new object."""
    remote = tree()

    async def main() -> None:
        async with stack(remote, metadata_ttl=30) as daemon:
            fs = daemon.fs
            old = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            remote.put("small.txt", b"version two")
            with pytest.raises(FuseError) as e:
                await fs.open(old, os.O_RDONLY)
            assert fuse_errno(e) == errno.ESTALE
            assert set(daemon.notified.inval_entry) == {(ROOT_ID, b"small.txt")}
            new = (await fs.lookup(ROOT_ID, b"small.txt")).attr
            assert new.ino != old and new.size == len(b"version two")
            fresh = await fs.open(new.ino, os.O_RDONLY)
            assert await fs.read(new.ino, fresh.fh, 0, 100) == b"version two"

    run(main)


# -- extended attributes ---------------------------------------------------------------------


def test_the_state_xattr_follows_the_cache_and_the_root_has_the_stats(stack) -> None:
    async def main() -> None:
        async with stack(tree()) as daemon:
            fs = daemon.fs
            ino = (await fs.lookup(ROOT_ID, b"big.bin")).attr.ino
            assert fs.listxattr(ino) == [STATE_XATTR]
            assert fs.getxattr(ino, STATE_XATTR) == b"absent"
            opened = await fs.open(ino, os.O_RDONLY)
            await fs.read(ino, opened.fh, 100, 10)  # not where a sequential reader starts: no read-ahead
            assert fs.getxattr(ino, STATE_XATTR) == f"partial {CHUNK}/{len(BIG)}".encode()
            await read_all(fs, ino, opened.fh, len(BIG), piece=CHUNK)
            assert fs.getxattr(ino, STATE_XATTR) == b"complete"
            fs.release(ino, opened.fh)

            assert fs.listxattr(ROOT_ID) == [STATS_XATTR]
            stats = json.loads(fs.getxattr(ROOT_ID, STATS_XATTR))
            assert stats["opens"]["page-cache"] == 1 and stats["misses"] == 1
            directory = (await fs.lookup(ROOT_ID, b"dir")).attr.ino
            assert fs.listxattr(directory) == []
            for ino_, name in ((directory, STATE_XATTR), (ino, STATS_XATTR), (ino, b"user.other")):
                with pytest.raises(FuseError) as e:
                    fs.getxattr(ino_, name)
                assert fuse_errno(e) == errno.ENODATA

    run(main)


# -- evicting -----------------------------------------------------------------------------------


def test_evict_drops_closed_files_and_their_page_cache_but_keeps_open_ones(stack) -> None:
    remote = tree()

    async def main() -> None:
        async with stack(remote) as daemon:
            fs = daemon.fs
            small = (await fs.lookup(ROOT_ID, b"small.txt")).attr.ino
            fs.release(small, (await fs.open(small, os.O_RDONLY)).fh)
            directory = (await fs.lookup(ROOT_ID, b"dir")).attr.ino
            inner = (await fs.lookup(directory, b"inner.txt")).attr.ino
            held = await fs.open(inner, os.O_RDONLY)
            # What a closed file holds is recorded a moment later (the journal's
            # batches), and only what is recorded can be evicted.
            while (result := await fs.evict([""])).files == 0:
                await trio.sleep(0.02)
            assert result.files == 1 and result.bytes == len(SMALL)
            assert list(result.skipped) == ["dir/inner.txt"]
            assert set(daemon.notified.inval_inode) == {small}
            assert fs.getxattr(small, STATE_XATTR) == b"absent"
            assert await fs.read(inner, held.fh, 0, 10) == b"inner"
            # Fetched again on the next open.
            fs.release(small, (await fs.open(small, os.O_RDONLY)).fh)
            assert remote.calls["read_range"] == 3

    run(main)


# -- below a mount: the session over the filesystem -------------------------------------------------


def test_a_session_serves_the_filesystem_without_a_mount(stack) -> None:
    async def main() -> None:
        async with stack(tree()) as daemon:
            kernel = MemoryChannel()
            session = Session(kernel, daemon.fs)
            daemon.nursery.start_soon(session.run)
            await kernel.init()
            listing = await kernel.call(Opcode.READDIRPLUS, ROOT_ID, read_in(0, 0, 64 * 1024))
            assert listing.error == errno.EBADF  # no such directory handle: the fs says so
            fh = (await daemon.fs.opendir(ROOT_ID)).fh
            entries = parse_dirents((await kernel.call(Opcode.READDIRPLUS, ROOT_ID, read_in(fh, 0, 64 * 1024))).body,
                                    plus=True)
            sizes = {d.name: d.entry.attr.size for d in entries if d.entry.nodeid}
            assert sizes == {b"big.bin": len(BIG), b"dir": 0, b"small.txt": len(SMALL)}
            ino = parse_entry((await kernel.call(Opcode.LOOKUP, ROOT_ID, name_in(b"small.txt"))).body).nodeid
            assert ino == next(d.entry.nodeid for d in entries if d.name == b"small.txt")
            opened = await kernel.call(Opcode.OPEN, ino, open_in())
            fh = int.from_bytes(opened.body[:8], "little")
            assert (await kernel.call(Opcode.READ, ino, read_in(fh, 0, 4096))).body == SMALL
            kernel.unmount()

    run(main)
