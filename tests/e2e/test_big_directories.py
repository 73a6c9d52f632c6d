"""Huge directories (issue 19): a folder of 10^5 files lists completely and
correctly, over HTTP and S3, and listing it again within the TTL asks the
server nothing, also after a remount.

Not timed: bench/bench_bigdirs.py measures. The folders are made once per
module and the checks share mounts, to keep the whole file to a few tens of
seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from mounter import Mounter
from s3_fixtures import LOOPBACK, isolated_aws_env

from cachefs.localstore.nginx import NginxStore

HTTP_FILES = 100_000
# moto answers a ListObjectsV2 page in time that grows with the bucket (it
# scans every key for each page): listing 10^5 keys took 79 s (100 pages of
# 0.8 s), so S3 gets 10^4, ten pages, which still streams page by page.
S3_KEYS = 10_000
BUCKET = "big-bucket"
S3_PREFIX = "many/"
# Names that sort and encode in unusual ways, among the plain ones.
ODD_NAMES = ("with space", "café", "emoji 🎉", "100%", "hash#tag", "plus+sign", "Zeta", "_under")
SIZED = {"sized-1": 1, "sized-4097": 4097}
# However slow the machine, the listings stay fresh for the whole test.
LONG_TTL = ("--metadata-ttl", "3600")


def _names(count: int) -> list[str]:
    return [f"f{i:06d}" for i in range(count - len(ODD_NAMES) - len(SIZED))] + [*ODD_NAMES, *SIZED]


def _ls_l(folder: Path) -> dict[str, int]:
    """`ls -l` as a user runs it: name -> size, from its output."""
    out = subprocess.run(["ls", "-l", "--quoting-style=literal", "--time-style=+%s", str(folder)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    sizes = {}
    for line in out.splitlines()[1:]:  # "total N" first
        # mode links user group size time name (the name may hold spaces)
        fields = line.split(maxsplit=6)
        sizes[fields[6]] = int(fields[4])
    return sizes


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    # In memory where there is a tmpfs: 10^5 files take a second there, and
    # up to half a minute on a busy disk.
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path_factory.getbasetemp()
    root = Path(tempfile.mkdtemp(prefix="cachefs-bigtree-", dir=base))
    try:
        folder = root / "big"
        folder.mkdir()
        for name in _names(HTTP_FILES):
            os.mknod(folder / name, 0o644 | stat.S_IFREG)
        for name, size in SIZED.items():
            (folder / name).write_bytes(b"x" * size)
        (folder / "sub").mkdir()
        (folder / "sub" / "inside").write_bytes(b"inside\n")
        with NginxStore(root, tmp_path_factory.mktemp("bignginx")) as nginx:
            yield nginx
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_folder_of_100k_files_lists_completely_and_again_without_asking(
    big_store: NginxStore, mount: Mounter
) -> None:
    expected = {name: SIZED.get(name, 0) for name in _names(HTTP_FILES)} | {"sub": None}
    cache = mount.new_dir("cache")
    mp = mount(big_store.url, cache, *LONG_TTL)
    listed = _ls_l(mp / "big")
    assert listed.keys() == expected.keys()
    assert {n: s for n, s in listed.items() if n != "sub"} == {n: s for n, s in expected.items() if n != "sub"}
    assert _ls_l(mp / "big" / "sub") == {"inside": 7}
    assert os.listdir(mp / "big") == sorted(expected, key=lambda n: n.encode())

    # Within the TTL the kernel's caches and the stored listing answer.
    big_store.clear_access_log()
    assert _ls_l(mp / "big") == listed
    assert big_store.access_log() == []

    # After a remount, from the listings stored in the cache (`ls`, not
    # `ls -l`, of the big one: the test is about requests, and 10^5 LOOKUPs
    # of a new mount take a while).
    assert mount.umount(mp).returncode == 0
    mp = mount(big_store.url, cache, *LONG_TTL)
    assert os.listdir(mp / "big") == sorted(expected, key=lambda n: n.encode())
    assert _ls_l(mp / "big" / "sub") == {"inside": 7}
    assert (mp / "big" / "sized-4097").read_bytes() == b"x" * 4097
    requests = big_store.access_log()
    assert [(r.method, r.path) for r in requests] == [("GET", "big/sized-4097")], requests


class InProcessS3:
    """moto's S3 in this process: keys are put into its backend directly
    (10^4 PUT requests took most of a minute), and requests are counted."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server = ThreadedMotoServer(LOOPBACK, 0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.requests: list[str] = []
        wsgi = self.server._server  # werkzeug's server: count what it serves
        inner = wsgi.app

        def counted(environ: dict, start_response: object) -> object:
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']}")
            return inner(environ, start_response)

        wsgi.app = counted
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put(self, bucket: str, keys: list[str], body: bytes = b"") -> None:
        for key in keys:
            self.backend.put_object(bucket, key, body)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def big_bucket() -> Iterator[InProcessS3]:
    s3 = InProcessS3()
    try:
        s3.backend.create_bucket(BUCKET, "us-east-1")
        s3.put(BUCKET, [S3_PREFIX + n for n in _names(S3_KEYS)])
        s3.put(BUCKET, [S3_PREFIX + "sub/inside"], b"inside\n")
        yield s3
    finally:
        s3.stop()


def test_a_prefix_of_many_keys_lists_completely_and_again_without_asking(
    big_bucket: InProcessS3, mount: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This moto checks no signature: any key will do.
    env = isolated_aws_env() | {"AWS_ACCESS_KEY_ID": "big", "AWS_SECRET_ACCESS_KEY": "directories"}
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mp = mount(f"s3://{BUCKET}/", None, "--endpoint-url", big_bucket.url, *LONG_TTL)
    listed = _ls_l(mp / "many")
    assert listed.keys() == {*_names(S3_KEYS), "sub"}
    assert all(size == 0 for name, size in listed.items() if name != "sub")
    assert (mp / "many" / "sub" / "inside").read_bytes() == b"inside\n"

    before = len(big_bucket.requests)
    assert _ls_l(mp / "many") == listed
    assert big_bucket.requests[before:] == []
