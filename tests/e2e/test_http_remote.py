"""HttpIndexRemote against a real loopback nginx, and against canned answers.

nginx (cachefs.localstore.NginxStore) covers the normal paths; a tiny trio
server that answers from a function covers what nginx never does: refusals,
5xx, cut-short bodies, wrong ranges, a proxy.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port
from cachefs.localstore.tree import SPECIAL_NAMES
from cachefs.remote import (
    AccessDenied,
    BadResponse,
    HttpIndexRemote,
    NotFound,
    RemoteEntry,
    Unreachable,
    VersionChanged,
    open_remote,
)
from cachefs.remote.http.index import ATTEMPTS, make_version

LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
BLOB_SIZE = 3 * MiB + 123
# A fixed mtime with non-zero seconds (2023-11-14 22:13:57 UTC).
MTIME = 1_700_000_037
SMALL_FILES = {name: f"contents of {name}\n".encode() for name in SPECIAL_NAMES}
SMALL_FILES.update({"a:b.txt": b"colon", "-dash": b"dash", "empty": b""})
# More than 9999 bytes, so nginx's rounded HTML sizes show it as "NK".
MID_FILE = ("dir with space/mid.bin", 50_000)


def write(path: Path, data: bytes, mtime: int = MTIME) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    rng = random.Random(7)
    write(root / "blob.bin", rng.randbytes(BLOB_SIZE))
    for name, data in SMALL_FILES.items():
        write(root / name, data)
    write(root / MID_FILE[0], rng.randbytes(MID_FILE[1]))
    write(root / "データ" / "x", b"x")
    return root


@pytest.fixture(scope="module")
def store(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    with NginxStore(tree, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def run(fn: Callable[[], Awaitable[object]]) -> None:
    trio.run(fn)


async def read_all(remote: HttpIndexRemote, path: str, start: int, end: int, version: str) -> bytes:
    parts = []
    async with remote.read_range(path, start, end, version) as chunks:
        async for chunk in chunks:
            parts.append(bytes(chunk))
    return b"".join(parts)


def comparable(entries: list[RemoteEntry]) -> dict[str, tuple[bool, int, int, str]]:
    """Entries keyed by name, mtimes to the minute (HTML has no seconds)."""
    return {e.name: (e.is_dir, e.size, int(e.mtime) // 60, e.version) for e in entries}


# ------------------------------------------------------------------ nginx


def test_json_and_html_listings_agree_with_stat(store: NginxStore, tree: Path) -> None:
    async def main() -> None:
        async with HttpIndexRemote(store.url) as json_remote, HttpIndexRemote(
            store.html_url
        ) as html_remote:
            root = await json_remote.list_dir("")
            assert comparable(root) == comparable(await html_remote.list_dir(""))
            expected = {p.name for p in tree.iterdir()}
            assert {e.name for e in root} == expected
            for entry in root:
                stat = await json_remote.stat(entry.name)
                assert (stat.is_dir, stat.size, stat.version) == (
                    entry.is_dir, entry.size, entry.version
                )
                if not entry.is_dir:
                    assert entry.size == (tree / entry.name).stat().st_size
                    assert entry.mtime == MTIME
            sub = await html_remote.list_dir("dir with space")
            assert comparable(sub) == comparable(await json_remote.list_dir("dir with space"))

    run(main)


def test_ranges_byte_for_byte(store: NginxStore, tree: Path) -> None:
    data = (tree / "blob.bin").read_bytes()
    ranges = [(0, 1), (0, MiB), (MiB - 1, 2 * MiB + 1), (BLOB_SIZE - 7, BLOB_SIZE), (0, BLOB_SIZE), (5, 5)]

    async def main() -> None:
        async with HttpIndexRemote(store.url) as remote:
            version = (await remote.stat("blob.bin")).version
            for start, end in ranges:
                assert await read_all(remote, "blob.bin", start, end, version) == data[start:end]
            # Several in flight at once on the pool.
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                results[i] = await read_all(remote, "blob.bin", i * MiB, (i + 1) * MiB, version)

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
            assert b"".join(results[i] for i in range(3)) == data[: 3 * MiB]

    run(main)


def test_names_round_trip(store: NginxStore) -> None:
    async def main() -> None:
        for url in (store.url, store.html_url):
            async with HttpIndexRemote(url) as remote:
                entries = {e.name: e for e in await remote.list_dir("")}
                for name, data in SMALL_FILES.items():
                    entry = entries[name]
                    got = await read_all(remote, name, 0, entry.size, entry.version)
                    assert got == data, name
                nested = await remote.list_dir("データ")
                assert [(e.name, e.size) for e in nested] == [("x", 1)]

    run(main)


def test_not_found(store: NginxStore) -> None:
    async def main() -> None:
        async with HttpIndexRemote(store.url) as remote:
            with pytest.raises(NotFound):
                await remote.list_dir("no such dir")
            with pytest.raises(NotFound):
                await remote.list_dir("blob.bin")  # a file, not a directory
            with pytest.raises(NotFound):
                await remote.stat("missing.bin")
            with pytest.raises(NotFound):
                await read_all(remote, "missing.bin", 0, 10, "")
            with pytest.raises(NotFound):
                await remote.stat("../etc")

    run(main)


def test_stat_directories(store: NginxStore) -> None:
    async def main() -> None:
        async with HttpIndexRemote(store.url) as remote:
            assert (await remote.stat("")).is_dir
            assert (await remote.stat("dir with space")).is_dir
            assert not (await remote.stat("dir with space/mid.bin")).is_dir

    run(main)


def test_version_change_is_detected(store: NginxStore, tree: Path) -> None:
    path = tree / "changing.bin"
    write(path, b"A" * 1000)

    async def main() -> None:
        async with HttpIndexRemote(store.url) as remote:
            old = await remote.stat("changing.bin")
            assert old.version == make_version(1000, MTIME)
            assert await read_all(remote, "changing.bin", 0, 10, old.version) == b"A" * 10

            write(path, b"B" * 2000, MTIME + 3600)
            with pytest.raises(VersionChanged):
                await read_all(remote, "changing.bin", 0, 10, old.version)
            new = await remote.stat("changing.bin")
            assert new.version != old.version
            listed = {e.name: e for e in await remote.list_dir("")}["changing.bin"]
            assert listed.version == new.version
            assert await read_all(remote, "changing.bin", 0, 10, new.version) == b"B" * 10

            # Same size, another minute.
            write(path, b"C" * 2000, MTIME + 7200)
            with pytest.raises(VersionChanged):
                await read_all(remote, "changing.bin", 0, 10, new.version)
            # Shrunk below the range's start: nginx answers 416.
            write(path, b"D" * 5, MTIME + 7200)
            with pytest.raises(VersionChanged):
                await read_all(remote, "changing.bin", 100, 200, new.version)

    try:
        run(main)
    finally:
        path.unlink()


class RoundedLocalTimeStore(NginxStore):
    """nginx whose HTML index rounds sizes and prints local times."""

    def _config(self, disabled_modules: set[str]) -> str:
        config = super()._config(disabled_modules)
        for old, new in (
            ("autoindex_exact_size on;", "autoindex_exact_size off;"),
            ("autoindex_localtime off;", "autoindex_localtime on;"),
        ):
            if old not in config:
                pytest.skip(f"NginxStore config no longer has {old!r}")
            config = config.replace(old, new)
        return config


def test_rounded_sizes_and_local_times(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nginx keeps TZ from its environment; a POSIX zone needs no tzdata.
    # This one is UTC+5:30, so a naive reading is off by 330 minutes.
    monkeypatch.setenv("TZ", "IST-5:30")
    with RoundedLocalTimeStore(tree, tmp_path) as odd:

        async def main() -> None:
            async with HttpIndexRemote(odd.url) as json_remote, HttpIndexRemote(
                odd.html_url
            ) as html_remote:
                for directory in ("", "dir with space"):
                    exact = await json_remote.list_dir(directory)
                    assert comparable(await html_remote.list_dir(directory)) == comparable(exact)

        run(main)
        heads = {e.path for e in odd.access_log() if e.method == "HEAD" and e.index == "html"}
        # blob.bin and mid.bin are shown rounded; the root needs no extra HEAD
        # for its clock since blob.bin's already told it.
        assert heads == {"blob.bin", MID_FILE[0]}


# --------------------------------------------------------- canned answers

Responder = Callable[[str, dict[str, str]], tuple[bytes, bool]]


def reply(status: str, headers: dict[str, str] | None = None, body: bytes = b"",
          *, length: int | None = None) -> bytes:
    """A raw HTTP/1.1 response; `length` may lie about the body."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def canned_server(respond: Responder) -> AsyncIterator[tuple[str, list[str]]]:
    """Serve `respond(request_line, headers) -> (raw reply, keep open)`."""
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = listeners[0].socket.getsockname()[1]
    seen: list[str] = []

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
                seen.append(request_line)
                raw, keep_open = respond(request_line, headers)
                await stream.send_all(raw)
                if not keep_open:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield f"http://{LOOPBACK}:{port}/", seen
        nursery.cancel_scope.cancel()


LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:57 GMT"  # MTIME
TEN = b"0123456789"
TEN_VERSION = make_version(len(TEN), MTIME)


def test_refusals_and_retries() -> None:
    calls = {"flaky": 0}

    def respond(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if "/secret" in line:
            return reply("403 Forbidden"), True
        if "/down" in line:
            return reply("503 Service Unavailable"), True
        if "/flaky" in line:
            calls["flaky"] += 1
            if calls["flaky"] < ATTEMPTS:
                return reply("502 Bad Gateway"), True
            return reply("200 OK", {"Last-Modified": LAST_MODIFIED}, TEN), True
        return reply("404 Not Found"), True

    async def main() -> None:
        async with canned_server(respond) as (url, seen):
            async with HttpIndexRemote(url) as remote:
                with pytest.raises(AccessDenied):
                    await remote.stat("secret")
                with pytest.raises(AccessDenied):
                    await remote.list_dir("secret")
                with pytest.raises(Unreachable):
                    await remote.stat("down")
                assert sum("/down" in line for line in seen) == ATTEMPTS
                entry = await remote.stat("flaky")
                assert (entry.size, entry.version) == (len(TEN), TEN_VERSION)

    run(main)


def test_untrustworthy_bodies() -> None:
    def respond(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        lm = {"Last-Modified": LAST_MODIFIED}
        if "/short" in line:  # promises 10 bytes, sends 4 and hangs up
            return reply("206 Partial Content", {**lm, "Content-Range": "bytes 0-9/10"},
                         TEN[:4], length=10), False
        if "/shifted" in line:
            return reply("206 Partial Content", {**lm, "Content-Range": "bytes 1-10/20"}, TEN), True
        if "/whole" in line:  # ignores Range
            return reply("200 OK", lm, TEN), True
        if "/gzip" in line:
            return reply("206 Partial Content", {**lm, "Content-Range": "bytes 0-9/10",
                                                 "Content-Encoding": "gzip"}, TEN), True
        return reply("404 Not Found"), True

    async def main() -> None:
        async with canned_server(respond) as (url, _):
            async with HttpIndexRemote(url) as remote:
                with pytest.raises(BadResponse):
                    await read_all(remote, "short", 0, 10, TEN_VERSION)
                with pytest.raises(BadResponse):
                    await read_all(remote, "shifted", 0, 10, "")
                # A 200 is the whole object: the part asked for is cut from it
                # (test_servers.py has the cache take all of it).
                assert await read_all(remote, "whole", 0, 10, TEN_VERSION) == TEN
                assert await read_all(remote, "whole", 0, 5, TEN_VERSION) == TEN[:5]
                assert await read_all(remote, "whole", 2, 10, TEN_VERSION) == TEN[2:]
                with pytest.raises(VersionChanged):
                    await read_all(remote, "whole", 0, 10, make_version(10, MTIME + 60))
                with pytest.raises(BadResponse):
                    await read_all(remote, "gzip", 0, 10, "")

    run(main)


def test_explicit_proxy_applies_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    origin = f"http://{LOOPBACK}:{free_port()}/data/"

    def respond(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        return reply("200 OK", {"Last-Modified": LAST_MODIFIED}, TEN), True

    async def main() -> None:
        async with canned_server(respond) as (proxy_url, seen):
            remote = open_remote(origin, proxy=proxy_url)
            try:
                await remote.stat("f.txt")
            finally:
                await remote.aclose()
            # A proxy gets the absolute URL of the origin in the request line.
            assert seen == [f"HEAD {origin}f.txt HTTP/1.1"]

    run(main)


def test_unreachable() -> None:
    async def main() -> None:
        remote = open_remote(f"http://{LOOPBACK}:{free_port()}/data")
        try:
            with pytest.raises(Unreachable):
                await remote.list_dir("")
        finally:
            await remote.aclose()

    run(main)
