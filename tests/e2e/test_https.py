"""HTTPS sources (issue 17): a store behind TLS with a private CA.

The CA is trusted the way users trust theirs, through SSL_CERT_FILE in the
environment of `cachefs mount` (README, "HTTPS"). Reads must be byte for
byte the store's, on both of the daemon's paths: listings and many small
files, and big files read in chunks. Without the CA the mount must fail
with one line that names the certificate problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cachefs.localstore import NginxStore
from cachefs.localstore.tls import make_server_cert
from mounter import Mounter, Tree
from tunnelproxy import TunnelProxy


@pytest.fixture(scope="module")
def https_store(tree: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    cert = make_server_cert(tmp_path_factory.mktemp("tls"))
    with NginxStore(tree.root, tmp_path_factory.mktemp("nginx-tls"), tls=cert) as store:
        yield store


def sample(tree: Tree) -> list[str]:
    """The files at chunk and page boundaries (several chunks among them),
    and one folder of small files: both read paths, without the 256 MiB file."""
    return [rel for rel in tree.files if rel.startswith(("sizes/", "small/d01/"))]


def trusting(store: NginxStore) -> dict[str, str]:
    assert store.tls is not None
    return {**os.environ, "SSL_CERT_FILE": str(store.tls.ca)}


def test_https_mount_reads_every_file_byte_for_byte(https_store: NginxStore, tree: Tree,
                                                    mount: Mounter) -> None:
    mountpoint = mount.new_dir("mnt")
    cache_dir = mount.base / "cache"
    result = mount.run_mount(https_store.https_url, mountpoint, cache_dir, env=trusting(https_store))
    assert result.returncode == 0, result.stderr + mount.log_tails()
    for rel in sample(tree):
        assert tree.sha256_of(mountpoint / rel) == tree.hashes[rel], rel
    # Read again: complete files now come from the cache, not the server.
    for rel in sample(tree)[-3:]:
        assert tree.sha256_of(mountpoint / rel) == tree.hashes[rel], rel


def test_https_without_the_ca_fails_in_one_line(https_store: NginxStore, mount: Mounter) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(https_store.https_url, mountpoint, mount.base / "cache", env=env)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "certificate" in result.stderr.lower(), result.stderr
    assert not mount.is_mounted(mountpoint)


def test_https_through_a_proxy_tunnel(https_store: NginxStore, tree: Tree, mount: Mounter) -> None:
    """--proxy with credentials: HTTPS goes through CONNECT, still verified end to end."""
    with TunnelProxy(credentials=("user", "pa:ss")) as proxy:
        mountpoint = mount.new_dir("mnt")
        result = mount.run_mount(https_store.https_url, mountpoint, mount.base / "cache",
                                 "--proxy", proxy.url.replace("pa:ss", "pa%3Ass"), env=trusting(https_store))
        assert result.returncode == 0, result.stderr + mount.log_tails()
        for rel in sample(tree)[::4]:
            assert tree.sha256_of(mountpoint / rel) == tree.hashes[rel], rel
        assert proxy.tunnels >= 1 and proxy.refused == 0
        mount.umount(mountpoint)

        refused = mount.new_dir("mnt")
        result = mount.run_mount(https_store.https_url, refused, mount.base / "cache2",
                                 "--proxy", f"http://user:wrong@127.0.0.1:{proxy.port}",
                                 env=trusting(https_store))
        assert result.returncode == 1 and "407" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "wrong" not in result.stderr, result.stderr
