"""Issue 18, part 5: a site cache (nginx proxy_cache with slices) in front of
the store, and several cachefs mounts through it.

The origin must serve each byte about once however many mounts read it, and
the mounts must keep working when the proxy restarts: what they cached
still reads while it is down, and what they had not read yet reads once it
is back, with no remount. The proxy's own cache outlives its restart.
"""

from __future__ import annotations

import errno
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port
from cachefs.localstore.sitecache import SiteCache
from cachefs.localstore.tree import MiB, write_seeded_file
from mounter import Mounter

MOUNTS = 4
# Per folder: sizes of its files. Big files span several cachefs chunks
# (8 MiB) and many proxy slices (1 MiB); small ones sit inside one slice.
FOLDERS = {
    "first": [20 * MiB, 3 * MiB + 17] + [40_000 + 997 * i for i in range(12)],
    "second": [18 * MiB + 5, 1 * MiB] + [30_000 + 1013 * i for i in range(12)],
}
# Bodies the origin may send beyond one copy of what was read: a slice
# fetched twice when two requests miss it just before the lock is taken.
ONCE_SLACK = 1.10


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[NginxStore, dict[str, str]]:
    """An nginx store of FOLDERS, and the sha256 of each file by path."""
    root = tmp_path / "origin-tree"
    hashes = {}
    for folder, sizes in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for n, size in enumerate(sizes):
            name = f"{folder}/f{n:02d}.bin"
            hashes[name] = write_seeded_file(root / name, name, size)
    with NginxStore(root, tmp_path / "origin-nginx") as store:
        yield store, hashes


def origin_body_bytes(store: NginxStore, folder: str) -> int:
    """File bytes the origin sent under `folder`, listings left out."""
    return sum(e.bytes_sent for e in store.access_log()
               if not e.is_listing and e.path.startswith(f"{folder}/"))


def read_all(mountpoints: list[Path], names: list[str]) -> dict[tuple[Path, str], str]:
    """sha256 of every name in every mount, all mounts reading at once."""
    jobs = [(mp, name) for name in names for mp in mountpoints]
    with ThreadPoolExecutor(max_workers=len(mountpoints) * 2) as pool:
        digests = pool.map(lambda job: sha256_file(job[0] / job[1]), jobs)
        return dict(zip(jobs, digests))


def test_mounts_share_a_site_cache_and_outlive_its_restart(
        origin: tuple[NginxStore, dict[str, str]], mount: Mounter, tmp_path: Path) -> None:
    store, hashes = origin
    first = sorted(n for n in hashes if n.startswith("first/"))
    second = sorted(n for n in hashes if n.startswith("second/"))
    site = SiteCache(f"http://127.0.0.1:{store.port}", tmp_path / "site-cache", port=free_port())
    site.start()
    try:
        mountpoints = [mount(site.url) for _ in range(MOUNTS)]

        # Every mount reads the first folder at the same time.
        store.clear_access_log()
        got = read_all(mountpoints, first)
        assert all(got[(mp, n)] == hashes[n] for mp in mountpoints for n in first)
        size_first = sum(FOLDERS["first"])
        sent = origin_body_bytes(store, "first")
        assert size_first <= sent <= size_first * ONCE_SLACK, (
            f"origin sent {sent} bytes for {size_first} bytes read by {MOUNTS} mounts")

        # Proxy down: what the mounts cached still reads, byte for byte.
        site.stop()
        for mp in mountpoints:
            assert sha256_file(mp / first[0]) == hashes[first[0]]
            assert sha256_file(mp / first[-1]) == hashes[first[-1]]
        # What none had read fails cleanly rather than hanging or lying.
        with pytest.raises(OSError) as failed:
            sha256_file(mountpoints[0] / second[-1])
        assert failed.value.errno == errno.EIO

        # Proxy back on the same port: files nobody had read come through
        # every mount, still about once from the origin, with no remount.
        site.start()
        store.clear_access_log()
        got = read_all(mountpoints, second)
        assert all(got[(mp, n)] == hashes[n] for mp in mountpoints for n in second)
        size_second = sum(FOLDERS["second"])
        sent = origin_body_bytes(store, "second")
        assert size_second <= sent <= size_second * ONCE_SLACK, (
            f"origin sent {sent} bytes for {size_second} bytes after the restart")

        # The proxy kept its cache across the restart: a new mount reading
        # the first folder costs the origin nothing.
        store.clear_access_log()
        late = mount(site.url)
        assert all(sha256_file(late / n) == hashes[n] for n in first)
        assert origin_body_bytes(store, "first") == 0
    finally:
        site.stop()
