"""`cachefs mount` failures: one line on stderr naming the culprit, no traceback,
a non-zero exit, and nothing left mounted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path, so the fixtures' helper types import directly.
from mounter import Mounter, Tree, is_mounted

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port

RO_TMPFS_SIZE = "1m"


def assert_one_line_error(result: subprocess.CompletedProcess[str], culprit: str) -> None:
    assert result.returncode != 0, f"exit 0; stdout: {result.stdout!r}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}: {result.stderr!r}"
    assert culprit in lines[0], f"the error does not name {culprit!r}: {lines[0]!r}"


def fail_to_mount(
    mount: Mounter, source: str, mountpoint: Path, cache_dir: Path, culprit: str
) -> None:
    result = mount.run_mount(source, mountpoint, cache_dir)
    assert_one_line_error(result, culprit)
    assert not is_mounted(mountpoint), "a failed mount left something mounted"


def test_server_unreachable(mount: Mounter, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    mountpoint = mount.new_dir("mnt")
    source = f"http://127.0.0.1:{port}/data/"
    fail_to_mount(mount, source, mountpoint, tmp_path / "cache", str(port))


def test_source_not_found(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    source = store.url.replace("/data/", "/nope/")
    fail_to_mount(mount, source, mount.new_dir("mnt"), tmp_path / "cache", "/nope/")


def test_mountpoint_missing(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    mountpoint = tmp_path / "does-not-exist"
    fail_to_mount(mount, store.url, mountpoint, tmp_path / "cache", str(mountpoint))
    assert not mountpoint.exists(), "the missing mountpoint was created"


def test_mountpoint_is_a_file(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    mountpoint = tmp_path / "a-file"
    mountpoint.write_bytes(b"not a directory")
    fail_to_mount(mount, store.url, mountpoint, tmp_path / "cache", str(mountpoint))


def test_mountpoint_already_mounted(
    tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path
) -> None:
    mountpoint = mount(store.url)
    result = mount.run_mount(store.url, mountpoint, tmp_path / "other-cache")
    assert_one_line_error(result, str(mountpoint))
    # The first mount is untouched and still serves the right bytes.
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mountpoint / rel) == tree.hashes[rel]


def test_cache_dir_under_a_file(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_bytes(b"")
    fail_to_mount(mount, store.url, mount.new_dir("mnt"), blocker / "cache", str(blocker))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only tmpfs: unwritable even for root."""
    path = tmp_path / "read-only"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"ro,size={RO_TMPFS_SIZE}", "cachefs-test-ro", str(path)],
        check=True, capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True)


@pytest.mark.parametrize("below", ["", "cache"], ids=["existing", "to-create"])
def test_cache_dir_read_only(
    store: NginxStore, mount: Mounter, read_only_dir: Path, below: str
) -> None:
    cache_dir = read_only_dir / below if below else read_only_dir
    fail_to_mount(mount, store.url, mount.new_dir("mnt"), cache_dir, str(read_only_dir))
