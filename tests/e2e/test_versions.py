"""Issue 14, item 1 (never mixed versions) and the short-file case of item 11.

An object replaced while it is being read must never reach an application
(or stay in the cache) as a mix of two versions: every read of it returns
the bytes of one version or fails. Each case mounts for real: against nginx
for the issue's own scenario, against a scripted origin (versionserver.py)
for servers nginx does not imitate: an ETag that changes while
Last-Modified does not, preconditions ignored, no validators at all,
Content-Range totals of "*".

The pattern: open, read a block of the third chunk (a read that is not
sequential starts no read-ahead, so only that chunk is fetched), replace
the object with one of the same size and the same minute, then read the
first chunk through the same handle. That read must fail (the remote no
longer has the version the handle holds) or give the old bytes; a new open
must then read the new version whole.
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from reliability import fsck, fsck_problems, only_folder
from mounter import Mounter
from versionserver import ServerConfig, VersionServer

from cachefs.localstore import NginxStore

CHUNK = 8 * 1024 * 1024
SIZE = 3 * CHUNK + 1000
BLOCK = 4096
# 2023-11-14 22:13:05 UTC: seconds to spare in its minute.
MTIME = 1_699_999_985
NAME = "big.bin"


def versions(seed: int, size: int = SIZE) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    return rng.randbytes(size), rng.randbytes(size)


def pread(fd: int, length: int, offset: int) -> bytes | int:
    """The bytes read, or the errno of the failure."""
    try:
        return os.pread(fd, length, offset)
    except OSError as e:
        return e.errno


def read_whole(path: Path) -> bytes | int:
    try:
        return path.read_bytes()
    except OSError as e:
        return e.errno


def change_mid_read(mp: Path, old: bytes, new: bytes, replace) -> None:
    """Take part of `old` through a handle, `replace()` it with `new`, and
    check that the handle never gives bytes of `new`, that a new open reads
    `new` whole, and nothing else."""
    fd = os.open(mp / NAME, os.O_RDONLY)
    try:
        assert pread(fd, BLOCK, 2 * CHUNK) == old[2 * CHUNK:2 * CHUNK + BLOCK]
        replace()
        got = pread(fd, BLOCK, 0)
        assert got != new[:BLOCK], "the handle mixed the new version into the old one"
        assert got in (old[:BLOCK], errno.EIO), got
    finally:
        os.close(fd)
    # The failed read made the next open ask the remote: it starts the new
    # version from nothing.
    assert read_whole(mp / NAME) == new


def assert_cache_holds_no_mix(cache: Path, source: str, mount: Mounter, mp: Path) -> None:
    mount.umount(mp)
    mount.cleanup(mp)
    code, reports = fsck(cache, "--verify-remote", "--source", source)
    bad = [p for p in fsck_problems(reports) if p.startswith(("corrupt", "stale"))]
    assert bad == [], bad


def test_nginx_rewrite_same_size_same_minute(mount: Mounter, tmp_path: Path) -> None:
    """The issue's case: `cp v1 .t && mv .t file` in the same minute, same size."""
    root = tmp_path / "root"
    root.mkdir()
    old, new = versions(1)
    (root / NAME).write_bytes(old)
    os.utime(root / NAME, (MTIME, MTIME))

    def replace() -> None:
        tmp = root / ".t"
        tmp.write_bytes(new)
        os.utime(tmp, (MTIME + 4, MTIME + 4))
        os.rename(tmp, root / NAME)

    with NginxStore(root, tmp_path / "nginx") as store:
        cache = tmp_path / "cache"
        # The HTML index: times to the minute only, as in the issue.
        mp = mount(store.html_url, cache, "--metadata-ttl", "3600")
        change_mid_read(mp, old, new, replace)
        assert_cache_holds_no_mix(cache, store.html_url, mount, mp)


def test_nginx_limit_rate_rewrite_during_sequential_read(mount: Mounter, tmp_path: Path) -> None:
    """The issue's own run, scaled down: a cold sequential read from nginx
    with `limit_rate`, the file replaced (same size, same minute) while
    chunks are still coming. What the reader got must be a prefix of one
    version: then the end of the file, or an error."""
    size = 6 * CHUNK + 1000
    old, new = versions(10, size)
    root = tmp_path / "root"
    root.mkdir()
    (root / NAME).write_bytes(old)
    os.utime(root / NAME, (MTIME, MTIME))
    # 4 MiB/s a connection: each chunk takes 2 s, and the read-ahead (4
    # chunks) cannot have asked for the sixth before the replacement.
    with NginxStore(root, tmp_path / "nginx", slow_rate=4 * 1024 * 1024) as store:
        cache = tmp_path / "cache"
        mp = mount(store.slow_url, cache, "--metadata-ttl", "3600")
        got = bytearray()
        failure: list[int] = []

        def reader() -> None:
            with open(mp / NAME, "rb", buffering=0) as f:
                while True:
                    try:
                        piece = f.read(1024 * 1024)
                    except OSError as e:
                        failure.append(e.errno)
                        return
                    if not piece:
                        return
                    got.extend(piece)

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(1.0)
        tmp = root / ".t"
        tmp.write_bytes(new)
        os.utime(tmp, (MTIME + 4, MTIME + 4))
        os.rename(tmp, root / NAME)
        thread.join(120)
        assert not thread.is_alive()
        assert bytes(got) == old[:len(got)], (
            f"read {len(got)} bytes, not all of the old version (ending {failure})")
        assert failure == [errno.EIO] or len(got) == size, (len(got), failure)
        assert read_whole(mp / NAME) == new
        assert_cache_holds_no_mix(cache, store.slow_url, mount, mp)


@pytest.mark.parametrize("honour", [True, False], ids=["preconditions", "no-preconditions"])
def test_etag_changes_last_modified_does_not(mount: Mounter, tmp_path: Path, honour: bool) -> None:
    old, new = versions(2)
    config = ServerConfig(honour_preconditions=honour)
    with VersionServer(config) as server:
        server.put(NAME, old, MTIME, '"v0"')
        mp = mount(server.url, tmp_path / "cache", "--metadata-ttl", "3600")
        change_mid_read(mp, old, new, lambda: server.put(NAME, new, MTIME, '"v1"'))
        # Every ranged GET after the first carries the pinned ETag.
        gets = server.ranged_gets(NAME)
        assert len(gets) >= 3 and "if-match" not in gets[0]
        assert gets[1]["if-match"] == '"v0"', gets[1]


def test_weak_etags(mount: Mounter, tmp_path: Path) -> None:
    """A weak ETag cannot go in If-Match (a server compares strongly and
    would refuse every read); it is compared, and its change still tells."""
    old, new = versions(11)
    with VersionServer() as server:
        server.put(NAME, old, MTIME, 'W/"v0"')
        mp = mount(server.url, tmp_path / "cache", "--metadata-ttl", "3600")
        change_mid_read(mp, old, new, lambda: server.put(NAME, new, MTIME, 'W/"v1"'))
        assert not any("if-match" in h for h in server.ranged_gets(NAME))


@pytest.mark.parametrize("honour", [True, False], ids=["preconditions", "no-preconditions"])
def test_last_modified_only_changes_within_its_minute(mount: Mounter, tmp_path: Path, honour: bool) -> None:
    """`python3 -m http.server` style: Last-Modified, no ETag."""
    old, new = versions(3)
    config = ServerConfig(etag=False, honour_preconditions=honour)
    with VersionServer(config) as server:
        server.put(NAME, old, MTIME)
        mp = mount(server.url, tmp_path / "cache", "--metadata-ttl", "3600")
        change_mid_read(mp, old, new, lambda: server.put(NAME, new, MTIME + 3))
        gets = server.ranged_gets(NAME)
        assert gets[1]["if-range"] == "Tue, 14 Nov 2023 22:13:05 GMT", gets[1]


def test_no_validators_another_size(mount: Mounter, tmp_path: Path) -> None:
    """No ETag, no Last-Modified: the size in Content-Range is all there is."""
    old, _ = versions(4)
    new = versions(5, SIZE + 1)[0]
    with VersionServer(ServerConfig(etag=False, last_modified=False)) as server:
        server.put(NAME, old, MTIME)
        mp = mount(server.url, tmp_path / "cache", "--metadata-ttl", "3600")
        fd = os.open(mp / NAME, os.O_RDONLY)
        try:
            assert pread(fd, BLOCK, 2 * CHUNK) == old[2 * CHUNK:2 * CHUNK + BLOCK]
            server.put(NAME, new, MTIME)
            assert pread(fd, BLOCK, 0) == errno.EIO
        finally:
            os.close(fd)
        assert read_whole(mp / NAME) == new


@pytest.mark.parametrize("size", [5000, SIZE], ids=["one-chunk", "three-chunks"])
def test_star_total_longer_than_listed(mount: Mounter, tmp_path: Path, size: int) -> None:
    """Item 11: the index says 100 bytes less than the object has, and
    Content-Range says "*": EIO or the real size, never a short file."""
    data = versions(6, size)[0]
    config = ServerConfig(etag=False, last_modified=False, star_total=True, listed_size={NAME: size - 100})
    with VersionServer(config) as server:
        server.put(NAME, data, MTIME)
        mp = mount(server.url, tmp_path / "cache", "--metadata-ttl", "3600")
        assert (mp / NAME).stat().st_size == size - 100
        first = read_whole(mp / NAME)
        assert first in (data, errno.EIO), (
            f"read {len(first)} bytes of {size}" if isinstance(first, bytes) else first)
        # Once the remote was asked again, the file has its real size.
        assert read_whole(mp / NAME) == data
        assert (mp / NAME).stat().st_size == size


def test_cache_from_before_validators(mount: Mounter, tmp_path: Path) -> None:
    """A partly cached object recorded without a validator (by an older
    cachefs) cannot tell which version it holds: it is fetched again, never
    completed with another version's chunks."""
    old, new = versions(7)
    small = versions(12, 5000)[0]
    with VersionServer() as server:
        server.put(NAME, old, MTIME, '"v0"')
        server.put("small.bin", small, MTIME, '"s0"')
        cache = tmp_path / "cache"
        mp = mount(server.url, cache)
        assert read_whole(mp / "small.bin") == small
        fd = os.open(mp / NAME, os.O_RDONLY)
        try:
            assert pread(fd, BLOCK, 2 * CHUNK) == old[2 * CHUNK:2 * CHUNK + BLOCK]
        finally:
            os.close(fd)
        mount.umount(mp)
        mount.cleanup(mp)
        db = sqlite3.connect(only_folder(cache) / "state.db")
        with db:
            assert db.execute("SELECT COUNT(*) FROM chunks").fetchone() == (2,)
            if "validator" in {c[1] for c in db.execute("PRAGMA table_info(objects)")}:
                db.execute("UPDATE objects SET validator = NULL")
        db.close()
        # Same size, same Last-Modified, another ETag: only a pin could tell.
        server.put(NAME, new, MTIME, '"v1"')
        mp = mount(server.url, cache)
        assert read_whole(mp / NAME) == new
        # A complete one needs no fetch that could mix it: served as cached.
        gets = len(server.ranged_gets("small.bin"))
        assert read_whole(mp / "small.bin") == small
        assert len(server.ranged_gets("small.bin")) == gets


def test_pin_survives_a_remount(mount: Mounter, tmp_path: Path) -> None:
    """Chunks cached by one daemon bind the next: after a remount, the rest
    of a partly cached object must still come from the version cached."""
    old, new = versions(9)
    with VersionServer(ServerConfig(honour_preconditions=False)) as server:
        server.put(NAME, old, MTIME, '"v0"')
        cache = tmp_path / "cache"
        mp = mount(server.url, cache)
        fd = os.open(mp / NAME, os.O_RDONLY)
        try:
            assert pread(fd, BLOCK, 2 * CHUNK) == old[2 * CHUNK:2 * CHUNK + BLOCK]
        finally:
            os.close(fd)
        mount.umount(mp)
        mount.cleanup(mp)
        server.put(NAME, new, MTIME, '"v1"')
        mp = mount(server.url, cache, "--metadata-ttl", "3600")
        first = read_whole(mp / NAME)
        assert first in (new, errno.EIO), "the cached chunk was mixed with the new version"
        assert read_whole(mp / NAME) == new
