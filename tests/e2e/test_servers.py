"""Issue 18, part 4: servers as people run them.

- `python3 -m http.server` ignores Range: a 200 with the whole object is
  streamed into the cache, once, byte for byte, and its version still pinned.
- `rclone serve s3` answers a range with 200 and the Content-Range asked for.
- S3 "directory marker" keys (`dir/`) are directories, empty ones too: a bare
  git repository kept in a bucket works through the mount.
- One mtime per file, at its index's precision, before and after a read.
- Dotfiles: `http.server` lists them (nginx's autoindex never does).

Each server here is the real one, or a scripted one (versionserver.py) for
what the suite has no binary of.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from mounter import Mounter
from faultproxy import FaultConfig, FaultProxy
from s3_fixtures import MotoS3
from versionserver import ServerConfig, VersionServer

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port
from cachefs.remote import Pin, VersionChanged, open_remote
from cachefs.remote.base import BadResponse, take_whole_object

CHUNK = 8 * 1024 * 1024
BIG = 2 * CHUNK + 12_345  # three chunks, the last one short
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
# 2023-11-14 22:13:05 UTC: 5 s into its minute.
MTIME = 1_699_999_985
STATE_XATTR = "user.cachefs.state"


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_files(root: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel in dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)


def walk(top: Path) -> dict[str, str | None]:
    """Every path under `top`: a file's bytes (as hex), None for a directory."""
    found: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel = Path(dirpath).relative_to(top)
        for d in dirnames:
            found[str(rel / d)] = None
        for f in filenames:
            found[str(rel / f)] = (Path(dirpath) / f).read_bytes().hex()
    return found


# -- python3 -m http.server ----------------------------------------------------


class PythonHttpServer:
    """`python3 -m http.server` on a free loopback port, serving `root`; its
    request log (stderr) goes to `log`."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def __enter__(self) -> PythonHttpServer:
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", LOOPBACK, "--directory", str(self.root),
                 str(self.port)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process.poll() is None, self.log.read_text(errors="replace")
            try:
                httpx.head(self.url, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"http.server did not answer on {self.url}")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def gets(self, path: str) -> list[str]:
        """The status of every GET of `path` logged so far."""
        pattern = re.compile(rf'"GET {re.escape(path)} HTTP/1\.\d" (\d+)')
        return pattern.findall(self.log.read_text(errors="replace"))


HTTP_SERVER_FILES = {
    "big.bin": payload(1, BIG),
    "small.txt": b"small\n",
    "sub/middle.bin": payload(2, CHUNK + 1),
    ".gitignore": b"*.o\n",
    ".git/HEAD": b"ref: refs/heads/main\n",
}


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[PythonHttpServer]:
    root = tmp_path / "root"
    make_files(root, HTTP_SERVER_FILES, dirs=(".git/refs/heads",))
    with PythonHttpServer(root, tmp_path / "http.server.log") as server:
        yield server


def test_http_server_ignoring_range_streams_the_whole_object_once(
        mount: Mounter, http_server: PythonHttpServer, tmp_path: Path) -> None:
    """A read in the last chunk first: the 200 holds the whole file, which
    goes into the cache whole, so every later read of it is local."""
    mp = mount(http_server.url, tmp_path / "cache")
    big = HTTP_SERVER_FILES["big.bin"]
    with open(mp / "big.bin", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 4096, 2 * CHUNK + 100) == big[2 * CHUNK + 100:2 * CHUNK + 4196]
        assert os.pread(f.fileno(), 4096, CHUNK - 10) == big[CHUNK - 10:CHUNK + 4086]
    assert (mp / "big.bin").read_bytes() == big
    # One GET brought all three chunks, and it was not refused.
    assert http_server.gets("/big.bin") == ["200"]
    assert os.getxattr(mp / "big.bin", STATE_XATTR).decode().startswith(("complete", "passthrough"))
    for rel, data in HTTP_SERVER_FILES.items():
        assert (mp / rel).read_bytes() == data, rel
    # A second mount on the same cache reads it without asking the server.
    mount.umount(mp)
    mount.cleanup(mp)
    again = mount(http_server.url, tmp_path / "cache")
    assert (again / "big.bin").read_bytes() == big
    assert http_server.gets("/big.bin") == ["200"]


def test_http_server_lists_dotfiles(mount: Mounter, http_server: PythonHttpServer, tmp_path: Path) -> None:
    """What README says: http.server lists dotfiles, which nginx's autoindex never does."""
    mp = mount(http_server.url, tmp_path / "cache")
    assert sorted(os.listdir(mp)) == [".git", ".gitignore", "big.bin", "small.txt", "sub"]
    assert (mp / ".git" / "HEAD").read_bytes() == HTTP_SERVER_FILES[".git/HEAD"]
    assert os.listdir(mp / ".git" / "refs" / "heads") == []


def test_nginx_autoindex_hides_dotfiles(tmp_path: Path) -> None:
    """The other half of README's claim, on the suite's nginx."""
    root = tmp_path / "root"
    make_files(root, {".gitignore": b"x\n", ".git/HEAD": b"y\n", "seen.txt": b"z\n"})
    with NginxStore(root, tmp_path / "nginx") as store:
        for url in (store.url, store.html_url):
            page = httpx.get(url).text
            assert "seen.txt" in page and ".git" not in page, page


def test_http_server_file_replaced_between_opens(
        mount: Mounter, http_server: PythonHttpServer, tmp_path: Path) -> None:
    """Whole-object answers are pinned like ranges: a new version of the file
    is read whole and alone, never mixed with the cached one."""
    mp = mount(http_server.url, tmp_path / "cache", "--metadata-ttl", "1")
    old = HTTP_SERVER_FILES["big.bin"]
    assert (mp / "big.bin").read_bytes() == old
    new = payload(3, BIG)
    path = http_server.root / "big.bin"
    path.with_name(".t").write_bytes(new)
    os.utime(path.with_name(".t"), (MTIME, MTIME))
    os.rename(path.with_name(".t"), path)
    time.sleep(1.2)
    assert (mp / "big.bin").read_bytes() == new
    assert http_server.gets("/big.bin") == ["200", "200"]


def test_http_server_through_faults_gives_no_wrong_bytes(
        mount: Mounter, http_server: PythonHttpServer, tmp_path: Path) -> None:
    """Whole-object bodies cut short, reset, or answered 500/503, through a
    fault proxy: every read gives the right bytes or fails; a read after the
    faults stop gives the whole file."""
    rates = {"reset": 0.2, "cut_short": 0.2, "short_length": 0.1, "status_5xx": 0.1}
    big = HTTP_SERVER_FILES["big.bin"]
    failures = 0
    with FaultProxy(FaultConfig(seed=18, rates=rates), enabled=False) as proxy:
        mp = mount(http_server.url, tmp_path / "cache", "--proxy", proxy.url, "--metadata-ttl", "3600")
        proxy.enabled = True
        for attempt in range(6):
            offset = random.Random(attempt).randrange(BIG)
            try:
                with open(mp / "big.bin", "rb", buffering=0) as f:
                    got = os.pread(f.fileno(), 65536, offset)
            except OSError as e:
                assert e.errno == errno.EIO, e
                failures += 1
                continue
            assert got == big[offset:offset + 65536], offset
        proxy.enabled = False
        assert (mp / "big.bin").read_bytes() == big
        print(f"faults: {proxy.summary()}; reads failed: {failures}")
        assert proxy.total >= 1, proxy.summary()


# -- whole objects at the remote, with pins -------------------------------------


async def read(url: str, start: int, end: int, pin: Pin | None, whole: bool = False) -> bytes:
    remote = open_remote(url)
    try:
        async with remote.read_range("big.bin", start, end, "", pin) as body:
            taken = take_whole_object(body) if whole else False
            assert taken == whole
            return b"".join([piece async for piece in body])
    finally:
        await remote.aclose()


def test_whole_object_answers_keep_the_pin() -> None:
    """What the cache relies on: the range alone unless it takes the whole;
    the whole only of the pinned version (validator and size)."""
    data = payload(4, BIG)
    config = ServerConfig(etag=False, ignore_range=True, honour_preconditions=False)
    with VersionServer(config) as server:
        server.put("big.bin", data, MTIME)
        pin = Pin(BIG)
        assert trio.run(read, server.url, CHUNK, 2 * CHUNK, pin) == data[CHUNK:2 * CHUNK]
        assert pin.validator == f"lm:{MTIME}"
        assert trio.run(read, server.url, CHUNK, 2 * CHUNK, pin, True) == data
        # Rewritten a second later, same size: refused, not mixed.
        server.put("big.bin", payload(5, BIG), MTIME + 1)
        with pytest.raises(VersionChanged):
            trio.run(read, server.url, 0, CHUNK, pin)
        # The same validator but another size: refused too.
        server.put("big.bin", data + b"x", MTIME)
        with pytest.raises(VersionChanged):
            trio.run(read, server.url, 0, CHUNK, pin)


# -- a 200 carrying the right Content-Range (rclone serve s3) -------------------


def test_range_answered_200_with_its_content_range(mount: Mounter, tmp_path: Path) -> None:
    data = payload(6, BIG)
    with VersionServer(ServerConfig(range_status=200)) as server:
        server.put("big.bin", data, MTIME, '"v1"')
        mp = mount(server.url, tmp_path / "cache")
        with open(mp / "big.bin", "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 4096, 2 * CHUNK + 7) == data[2 * CHUNK + 7:2 * CHUNK + 4103]
        assert (mp / "big.bin").read_bytes() == data
        # Each chunk once, by range: the answers were taken as ranges.
        assert len(server.ranged_gets("big.bin")) == 3


def test_200_with_another_content_range_is_refused() -> None:
    """Only the range asked for: here the object is 100 bytes shorter than
    the reader thinks, so the Content-Range of the 200 ends elsewhere."""
    data = payload(7, BIG - 100)
    with VersionServer(ServerConfig(range_status=200)) as server:
        server.put("big.bin", data, MTIME, '"v1"')
        with pytest.raises(BadResponse, match="asked for"):
            trio.run(read, server.url, 2 * CHUNK, BIG, None)
        assert trio.run(read, server.url, 2 * CHUNK, BIG - 100, None) == data[2 * CHUNK:]


# -- S3 directory markers -------------------------------------------------------


MARKER_BUCKET = "cachefs-markers"


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def bare_repository(tmp_path: Path, env: dict[str, str]) -> Path:
    """A bare repository with two commits, packed refs and empty ref folders."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work, env=env)
    for i in range(2):
        (work / f"f{i}.txt").write_text(f"version {i}\n")
        git("add", ".", cwd=work, env=env)
        git("commit", "-q", "-m", f"commit {i}", cwd=work, env=env)
    bare = tmp_path / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare), env=env)
    git("pack-refs", "--all", cwd=bare, env=env)  # refs/heads and refs/tags are now empty
    assert not any((bare / "refs" / "heads").iterdir())
    return bare


def upload_with_markers(moto: MotoS3, root: Path, prefix: str) -> None:
    """Files as keys, and every directory as a "dir/" marker, as the S3
    console and `rclone --s3-directory-markers` make them."""
    client = moto.client()
    for path in sorted(root.rglob("*")):
        key = prefix + str(path.relative_to(root))
        if path.is_dir():
            client.put_object(Bucket=MARKER_BUCKET, Key=key + "/", Body=b"")
        else:
            client.put_object(Bucket=MARKER_BUCKET, Key=key, Body=path.read_bytes())


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path)
    server.start()
    try:
        server.make_bucket(MARKER_BUCKET)
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(name)
        for name, value in server.env().items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        yield server
    finally:
        server.stop()


def test_s3_directory_markers(mount: Mounter, moto: MotoS3, tmp_path: Path, git_env: dict[str, str]) -> None:
    bare = bare_repository(tmp_path, git_env)
    upload_with_markers(moto, bare, "repo.git/")
    client = moto.client()
    client.put_object(Bucket=MARKER_BUCKET, Key="empty/", Body=b"")
    client.put_object(Bucket=MARKER_BUCKET, Key="empty/inner/", Body=b"")
    client.put_object(Bucket=MARKER_BUCKET, Key="full/", Body=b"")
    client.put_object(Bucket=MARKER_BUCKET, Key="full/a.txt", Body=b"a\n")
    client.put_object(Bucket=MARKER_BUCKET, Key="full/sub/", Body=b"")
    client.put_object(Bucket=MARKER_BUCKET, Key="full/sub/b.txt", Body=b"b\n")
    mp = mount(f"s3://{MARKER_BUCKET}", tmp_path / "cache", *moto.mount_args())

    assert sorted(os.listdir(mp)) == ["empty", "full", "repo.git"]
    assert os.listdir(mp / "empty") == ["inner"] and os.listdir(mp / "empty" / "inner") == []
    assert (mp / "empty" / "inner").is_dir()
    # A marker beside real children: no second entry, no file named ''.
    assert sorted(os.listdir(mp / "full")) == ["a.txt", "sub"]
    assert os.listdir(mp / "full" / "sub") == ["b.txt"]
    assert (mp / "full" / "a.txt").read_bytes() == b"a\n"

    # The repository, empty folders and all, is what git made...
    assert walk(mp / "repo.git") == walk(bare)
    assert (mp / "repo.git" / "refs" / "heads").is_dir()
    # ...and git can use it.
    logged = git("--git-dir", str(mp / "repo.git"), "log", "--format=%H %s", "main", env=git_env)
    assert logged == git("--git-dir", str(bare), "log", "--format=%H %s", "main", env=git_env)
    clone = tmp_path / "clone"
    git("clone", "-q", str(mp / "repo.git"), str(clone), env=git_env)
    assert (clone / "f1.txt").read_text() == "version 1\n"


# -- one mtime per file -----------------------------------------------------------


# Seconds past the minute, so a listing's minute and a HEAD's second differ.
MTIME_FILES = {f"f{i}.txt": (b"x" * (10 + i), MTIME + 60 * i) for i in range(3)}


def to_minute(t: float) -> float:
    return t // 60 * 60


@pytest.fixture
def mtime_store(tmp_path: Path) -> Iterator[NginxStore]:
    root = tmp_path / "root"
    root.mkdir()
    for name, (data, mtime) in MTIME_FILES.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (mtime, mtime))
    with NginxStore(root, tmp_path / "nginx") as store:
        yield store


@pytest.mark.parametrize("index", ["json", "html"])
def test_one_mtime_per_file(mount: Mounter, mtime_store: NginxStore, tmp_path: Path, index: str) -> None:
    """Listed, opened, read, listed again, stat'ed after a HEAD: the same
    mtime each time, to the second from JSON indexes, to the minute from
    HTML ones (which show no seconds)."""
    url = mtime_store.url if index == "json" else mtime_store.html_url
    exact = (lambda t: float(t)) if index == "json" else to_minute
    mp = mount(url, tmp_path / "cache", "--metadata-ttl", "1")
    listed = {name: os.stat(mp / name).st_mtime for name in sorted(os.listdir(mp))}
    assert listed == {name: exact(mtime) for name, (_, mtime) in MTIME_FILES.items()}
    for name in MTIME_FILES:
        with open(mp / name, "rb") as f:
            f.read()
            assert os.fstat(f.fileno()).st_mtime == listed[name]
        assert os.stat(mp / name).st_mtime == listed[name]
    time.sleep(1.2)  # past the TTL: opens ask the server again (a HEAD)
    for name in MTIME_FILES:
        (mp / name).read_bytes()
        assert os.stat(mp / name).st_mtime == listed[name], name
    # A new version, learnt from a HEAD at open: its time has the same precision.
    changed = mtime_store.root / "f1.txt"
    changed.write_bytes(b"a new version\n")
    os.utime(changed, (MTIME + 600 + 37, MTIME + 600 + 37))
    time.sleep(1.2)
    assert (mp / "f1.txt").read_bytes() == b"a new version\n"
    seen = os.stat(mp / "f1.txt").st_mtime
    assert seen == exact(MTIME + 600 + 37)
    time.sleep(1.2)
    os.listdir(mp)
    assert os.stat(mp / "f1.txt").st_mtime == seen


@pytest.mark.parametrize("index", ["json", "html"])
def test_listing_and_stat_agree_on_mtime(mtime_store: NginxStore, index: str) -> None:
    """Whichever way the remote learns of a file, its mtime is the same."""
    url = mtime_store.url if index == "json" else mtime_store.html_url

    async def both() -> tuple[dict[str, float], dict[str, float]]:
        remote = open_remote(url)
        try:
            listed = {e.name: e.mtime for e in await remote.list_dir("")}
            stated = {name: (await remote.stat(name)).mtime for name in listed}
            return listed, stated
        finally:
            await remote.aclose()

    listed, stated = trio.run(both)
    assert listed == stated
    assert set(listed) == set(MTIME_FILES)
