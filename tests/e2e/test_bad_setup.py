"""Issue 14, bad command lines and local set-ups: a cache dir inside the
mountpoint (or the other way round), bad ports and proxies, a locked
state.db, out-of-range option values, a broken stdout pipe, a newline in a
path, what a failed mount leaves behind, and secrets in a daemon's
environment. Each error is one line and a non-zero exit, nothing is left
mounted, and nothing hangs.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability import only_folder
from mounter import CACHEFS, Mounter, Tree, is_mounted
from test_cli_errors import assert_one_line_error

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port

# Well under the mount's own timeout: a lock must be reported, not waited out.
LOCKED_BOUND_S = 20.0
SECRET = "cachefs-test-secret-4f1c9a"


def refuse(mount: Mounter, source: str, mountpoint: Path, cache_dir: Path, culprit: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    result = mount.run_mount(source, mountpoint, cache_dir, *extra)
    assert_one_line_error(result, culprit)
    assert not is_mounted(mountpoint), "a refused mount left something mounted"
    return result


# -- item 5: the cache dir and the mountpoint must lie apart ---------------------


@pytest.fixture
def bind_of(tmp_path: Path) -> Iterator[list[Path]]:
    """Bind mounts made by a test, undone afterwards."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


@pytest.mark.parametrize("layout", [
    "same", "inside", "deep-inside", "symlink-to-mountpoint", "under-symlink",
    "bind-of-mountpoint", "mountpoint-inside-cache", "mountpoint-is-cache-subfolder",
])
def test_cache_dir_and_mountpoint_apart(store: NginxStore, mount: Mounter, tmp_path: Path,
                                        bind_of: list[Path], layout: str) -> None:
    mountpoint = mount.new_dir("mnt")
    link = tmp_path / "link"
    if layout == "same":
        cache_dir = mountpoint
    elif layout == "inside":
        cache_dir = mountpoint / "cache"
    elif layout == "deep-inside":
        cache_dir = mountpoint / "a" / "b"
    elif layout == "symlink-to-mountpoint":
        link.symlink_to(mountpoint)
        cache_dir = link
    elif layout == "under-symlink":
        link.symlink_to(mountpoint)
        cache_dir = link / "cache"
    elif layout == "bind-of-mountpoint":
        other = tmp_path / "bind"
        other.mkdir()
        subprocess.run(["mount", "--bind", str(mountpoint), str(other)], check=True, capture_output=True)
        bind_of.append(other)
        cache_dir = other / "cache"
    elif layout == "mountpoint-inside-cache":
        cache_dir = tmp_path / "cache"
        cache_dir.mkdir()
        mountpoint = cache_dir / "mnt"
        mountpoint.mkdir()
    else:
        # A mount made in the cache dir's own source folder.
        cache_dir = tmp_path / "cache"
        result = mount.run_mount(store.url, mount.new_dir("mnt"), cache_dir)
        assert result.returncode == 0, result.stderr
        mountpoint = only_folder(cache_dir) / "data" / "00"
    culprit = "mountpoint" if layout.startswith("mountpoint") else "cache dir"
    refuse(mount, store.url, mountpoint, cache_dir, culprit)
    if not layout.startswith("mountpoint"):
        assert list(mountpoint.iterdir()) == [], "the refused mount created files in the mountpoint"


# -- item 9: bad ports, SOCKS proxies, a locked database -------------------------------


def test_non_numeric_port(mount: Mounter, tmp_path: Path) -> None:
    result = refuse(mount, "http://127.0.0.1:abc/", mount.new_dir("mnt"), tmp_path / "cache", "port")
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("proxy", ["socks5://user:pw-{secret}@127.0.0.1:1080",
                                   "socks5h://127.0.0.1:1080", "ftp://127.0.0.1:21",
                                   "http://127.0.0.1:nope", "127.0.0.1:3128"])
def test_unsupported_proxy(store: NginxStore, mount: Mounter, tmp_path: Path, proxy: str) -> None:
    proxy = proxy.format(secret=SECRET)
    result = refuse(mount, store.url, mount.new_dir("mnt"), tmp_path / "cache", "proxy",
                    "--proxy", proxy)
    assert "internal error" not in result.stderr
    assert SECRET not in result.stderr, "the error shows the proxy's password"


def test_locked_state_db(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    """Another process in a write transaction on state.db: the mount says so
    soon, rather than waiting 30 s to print `internal error`."""
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    mount.umount(mp)
    mount.cleanup(mp)
    db = only_folder(cache) / "state.db"
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        refuse(mount, store.url, mount.new_dir("mnt"), cache, "locked")
        assert time.monotonic() - started < LOCKED_BOUND_S
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    # Once the lock is gone the same cache mounts.
    mp = mount(store.url, cache)
    assert os.listdir(mp)


# -- item 10: option ranges --------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [
    ("--metadata-ttl", "nan"),
    ("--metadata-ttl", "inf"),
    ("--metadata-ttl", "-inf"),
    ("--metadata-ttl", "1e308"),
    ("--metadata-ttl", "1e10"),
    ("--cache-size", "0"),
    ("--cache-size", "1K"),
    ("--cache-size", "99999999999T"),
    ("--min-free", "99999999999T"),
])
def test_option_out_of_range(store: NginxStore, mount: Mounter, tmp_path: Path,
                             option: str, value: str) -> None:
    result = refuse(mount, store.url, mount.new_dir("mnt"), tmp_path / "cache", option, option, value)
    assert result.returncode == 2


def test_largest_ttl_still_works(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    """The bound is not below what works: a year of TTL lists and reads."""
    mp = mount(store.url, None, "--metadata-ttl", "31536000")
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]


# -- item 11: broken pipes, newlines, leftovers, secrets -------------------------------------


def test_status_json_into_closed_pipe(store: NginxStore, mount: Mounter) -> None:
    """`cachefs status M --json | head`: a reader gone early is no traceback."""
    mp = mount(store.url)
    r, w = os.pipe()
    os.close(r)  # every write gets EPIPE, as when head has exited
    try:
        result = subprocess.run([str(CACHEFS), "status", str(mp), "--json"],
                                stdout=w, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(w)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    assert result.returncode != 0


def test_newline_in_mountpoint(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    mountpoint = tmp_path / "two\nlines"
    result = mount.run_mount(store.url, mountpoint, tmp_path / "cache")
    assert_one_line_error(result, "does not exist")
    assert "two\\nlines" in result.stderr


@pytest.mark.parametrize("source", ["http://127.0.0.1:{port}/nothing-listens/", "http://127.0.0.1:abc/",
                                    "{store}../nope/"])
def test_failed_mount_leaves_no_folder(store: NginxStore, mount: Mounter, tmp_path: Path, source: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    source = source.format(port=free_port(), store=store.url)
    result = mount.run_mount(source, mount.new_dir("mnt"), cache)
    assert result.returncode != 0
    assert list(cache.iterdir()) == [], "a failed mount left a folder in the cache dir"


def test_failed_mount_keeps_existing_folder(tree: Tree, store: NginxStore, mount: Mounter,
                                            tmp_path: Path) -> None:
    """Only a folder the failed mount made is removed: a cache that served
    before stays, whatever made this mount fail (here: the mountpoint is
    already mounted)."""
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]
    mount.umount(mp)
    mount.cleanup(mp)
    folder = only_folder(cache)
    data = sorted(p for p in (folder / "data").rglob("*") if p.is_file())
    assert data
    other = mount(store.url, tmp_path / "other-cache")
    result = mount.run_mount(store.url, other, cache)
    assert result.returncode != 0
    assert sorted(p for p in (folder / "data").rglob("*") if p.is_file()) == data


def test_http_daemon_environment_has_no_aws_secret(store: NginxStore, mount: Mounter,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET)
    mp = mount(store.url)
    environ = Path(f"/proc/{mount.daemon_pid(mp)}/environ").read_bytes()
    assert SECRET.encode() not in environ, "the daemon of an http source keeps AWS secrets"
    assert b"PATH=" in environ, "the daemon lost the rest of its environment"
