"""Cache lifecycle on real mounts: size cap, eviction, revalidation, offline.

The module serves its own small tree (16 MiB pool files, a file to replace,
a file to delete) from its own nginx, so it can change and stop the store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.localstore.nginx import NginxStore
from cachefs.localstore.tree import write_seeded_file

MiB = 1 << 20
CHUNK = 8 * MiB
POOL_FILES = 12
POOL_SIZE = 16 * MiB  # two chunks: large enough to be read while partial
CAP = 80 * MiB
READERS = 4
# The cap may be exceeded by one chunk per download in flight (6 slots).
CAP_SLACK = 6 * CHUNK
TTL = 1.0
SETTLE_S = 10.0  # bound on the wait for eviction after the last close
# Generous bound for a read that needs an unreachable store to give up.
OFFLINE_FAILURE_BOUND_S = 60.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle-tree")
    (root / "pool").mkdir()
    for i in range(POOL_FILES):
        write_seeded_file(root / "pool" / f"p{i:02d}.bin", f"pool/{i}", POOL_SIZE)
    (root / "docs").mkdir()
    for name in ("a.txt", "b.txt"):
        write_seeded_file(root / "docs" / name, f"docs/{name}", 4096)
    return root


@pytest.fixture
def store(source: Path, tmp_path: Path) -> Iterator[NginxStore]:
    with NginxStore(source, tmp_path / "nginx") as nginx:
        yield nginx


def _cache_bytes(cache_dir: Path) -> int:
    """Bytes allocated by data files under a cache dir (what the cap limits)."""
    total = 0
    for data in cache_dir.glob("*/data"):
        for path in data.rglob("*"):
            if path.is_file():
                total += path.stat().st_blocks * 512
    return total


def _state(path: Path) -> str:
    return os.getxattr(path, "user.cachefs.state").decode()


def _daemon_log(cache_dir: Path) -> str:
    return "".join(p.read_text() for p in cache_dir.glob("*/daemon.log"))


def test_cap_holds_while_more_than_the_cap_is_read_concurrently(source: Path, store: NginxStore, mount) -> None:
    mp = mount(store.url, None, "--cache-size", f"{CAP // MiB}M")
    cache_dir = mount.get(mp).cache_dir
    names = sorted(p.name for p in (source / "pool").iterdir())
    expected = {n: _sha((source / "pool" / n).read_bytes()) for n in names}
    errors: list[str] = []
    peak = 0
    done = threading.Event()

    def reader(share: list[str]) -> None:
        for name in share:
            with open(mp / "pool" / name, "rb") as f:
                if _sha(f.read()) != expected[name]:
                    errors.append(f"{name}: wrong bytes")

    def sampler() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _cache_bytes(cache_dir))
            time.sleep(0.02)

    watcher = threading.Thread(target=sampler)
    watcher.start()
    threads = [threading.Thread(target=reader, args=(names[i::READERS],)) for i in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()

    assert errors == []
    assert POOL_FILES * POOL_SIZE > 2 * CAP, "the test must read well past the cap"
    assert peak <= CAP + CAP_SLACK, f"cache peaked at {peak / MiB:.0f} MiB, cap {CAP / MiB:.0f} MiB"
    # With every file closed, what is left soon fits the cap again.
    deadline = time.monotonic() + SETTLE_S
    while _cache_bytes(cache_dir) > CAP and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cache_bytes(cache_dir) <= CAP


def test_open_passthrough_file_survives_eviction_pressure(source: Path, store: NginxStore, mount) -> None:
    mp = mount(store.url, None, "--cache-size", "40M")
    target = mp / "pool" / "p00.bin"
    original = (source / "pool" / "p00.bin").read_bytes()
    with open(target, "rb") as f:
        f.read()  # now complete in the cache
    with open(target, "rb", buffering=0) as held:
        assert _state(target).startswith("passthrough"), _state(target)
        first = held.read(POOL_SIZE // 2)
        # Read four times the cap of other files while the handle stays open.
        for i in range(1, POOL_FILES):
            with open(mp / "pool" / f"p{i:02d}.bin", "rb") as other:
                other.read()
        rest = held.read()
        assert _state(target).startswith("passthrough")
    assert first + rest == original


def test_replaced_object_new_opens_get_new_bytes_old_handle_keeps_old(
    source: Path, store: NginxStore, mount, tmp_path: Path
) -> None:
    doc = source / "docs" / "a.txt"
    old_bytes = doc.read_bytes()
    mp = mount(store.url, None, "--metadata-ttl", str(TTL))
    old_handle = open(mp / "docs" / "a.txt", "rb", buffering=0)
    try:
        assert old_handle.read() == old_bytes
        old_ino = os.fstat(old_handle.fileno()).st_ino
        # Same size, other bytes; the mtime moves by a day, as a new upload would.
        new_bytes = bytes(b ^ 0xFF for b in old_bytes)
        staged = doc.with_suffix(".new")
        staged.write_bytes(new_bytes)
        stat = doc.stat()
        os.utime(staged, (stat.st_atime, stat.st_mtime + 86400))
        os.replace(staged, doc)
        time.sleep(TTL * 1.5)

        with open(mp / "docs" / "a.txt", "rb") as f:
            assert f.read() == new_bytes
            assert os.fstat(f.fileno()).st_ino != old_ino
        assert os.pread(old_handle.fileno(), len(old_bytes), 0) == old_bytes
    finally:
        old_handle.close()
        doc.write_bytes(old_bytes)


def test_partial_old_version_never_mixes_with_the_new(source: Path, store: NginxStore, mount) -> None:
    path = source / "pool" / "p11.bin"
    old_bytes = path.read_bytes()
    mp = mount(store.url, None, "--metadata-ttl", str(TTL))
    with open(mp / "pool" / "p11.bin", "rb", buffering=0) as old:
        assert old.read(4096) == old_bytes[:4096]  # first chunk only
        try:
            new_bytes = bytes(reversed(old_bytes))
            staged = path.with_suffix(".new")
            staged.write_bytes(new_bytes)
            os.utime(staged, (time.time(), path.stat().st_mtime + 86400))
            os.replace(staged, path)
            time.sleep(TTL * 1.5)
            # The second chunk of the old version is gone from the store: the
            # old handle must fail rather than return new bytes.
            try:
                tail = os.pread(old.fileno(), 4096, POOL_SIZE - 4096)
            except OSError as e:
                assert e.errno == errno.EIO
            else:
                assert tail == old_bytes[-4096:], "a read mixed the new version into an old handle"
            with open(mp / "pool" / "p11.bin", "rb") as new:
                assert new.read() == new_bytes
        finally:
            path.write_bytes(old_bytes)


def test_deleted_object_disappears_after_the_ttl(source: Path, store: NginxStore, mount) -> None:
    doc = source / "docs" / "b.txt"
    saved = doc.read_bytes()
    mp = mount(store.url, None, "--metadata-ttl", str(TTL))
    assert (mp / "docs" / "b.txt").read_bytes() == saved
    doc.unlink()
    try:
        time.sleep(TTL * 1.5)
        with pytest.raises(FileNotFoundError):
            open(mp / "docs" / "b.txt", "rb")
        assert "b.txt" not in os.listdir(mp / "docs")
    finally:
        doc.write_bytes(saved)


def test_offline_serves_the_cache_and_fails_cleanly(source: Path, tmp_path: Path, mount) -> None:
    nginx = NginxStore(source, tmp_path / "nginx").start()
    try:
        mp = mount(nginx.url, None, "--metadata-ttl", str(TTL))
        cache_dir = mount.get(mp).cache_dir
        cached = (source / "pool" / "p00.bin").read_bytes()
        assert (mp / "pool" / "p00.bin").read_bytes() == cached
        listing = sorted(os.listdir(mp / "pool"))
        port = nginx.port
        nginx.stop()
        time.sleep(TTL * 1.5)  # listings and attributes are now stale

        assert sorted(os.listdir(mp / "pool")) == listing
        assert (mp / "pool" / "p00.bin").read_bytes() == cached
        for name in ("p01.bin", "p02.bin"):
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                with open(mp / "pool" / name, "rb") as f:
                    f.read()
            assert failure.value.errno == errno.EIO
            assert time.monotonic() - started < OFFLINE_FAILURE_BOUND_S
        log = _daemon_log(cache_dir)
        assert log.count("is unreachable") == 1, log

        nginx = NginxStore(source, tmp_path / "nginx2", port=port).start()
        assert (mp / "pool" / "p01.bin").read_bytes() == (source / "pool" / "p01.bin").read_bytes()
        assert _daemon_log(cache_dir).count("is reachable again") == 1
    finally:
        nginx.stop()

