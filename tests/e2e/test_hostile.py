"""Issue 14: a hostile server never kills or hangs the daemon.

The server is tests/hostile_server.py, each path scripted to one behaviour:
a redirect loop, a trickled body or header block, endless 100 Continue
answers, an endless listing, impossible sizes, a gzip listing of junk. The
remote layer is tried directly (with our lean HTTP/1.1 transport and with
httpx's own), and through real mounts: a bad file fails with EIO in bounded
time, its neighbours keep working, the daemon lives on, and a mount that
cannot be made ends in one line, with no daemon left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from reliability import log_text
from mounter import Mounter, is_mounted, pid_alive, wait_until
from hostile_server import Behaviour, HostileServer, Script, json_index, static
from test_cli_errors import assert_one_line_error

from cachefs.cli import app as cli_app
from cachefs.cli import mount as cli_mount
from cachefs.remote.s3.remote import S3Remote
from cachefs.remote import (
    BadResponse,
    HttpIndexRemote,
    RemoteError,
    RequestLimits,
    S3Options,
    Unreachable,
)
from cachefs.remote.http.transport import DEADLINE_EXTENSION, Deadline, Http11Transport
from cachefs.remote.http.client import MAX_CONNECTIONS
from cachefs.remote.s3.address import parse_s3_source

GOOD = b"good bytes\n" * 100
SLOW_BODY = bytes(range(256)) * 12  # 3 KB, as in the issue
TRICKLE_S = 0.5  # one byte (or one 100 Continue) every TRICKLE_S
# Limits small enough that a test sees them act: the answer must start within
# TIMEOUT_S, and the body comes at MIN_RATE bytes/s at least.
TIMEOUT_S = 2.0
MIN_RATE = 1024
LIMITS = RequestLimits(timeout_s=TIMEOUT_S, min_rate=MIN_RATE, max_listing_bytes=1 << 20)
# A request may take its deadline (timeout + body at the minimum rate); a
# failure must come within this many deadlines.
SLACK = 3
SLOW_BOUND_S = SLACK * (TIMEOUT_S + len(SLOW_BODY) / MIN_RATE)
FAST_MISTAKE_BOUND_S = 10.0  # a redirect loop or junk fails at once; generous
# Past this, a remote call counts as hung (and the test fails, not waits).
HANG_S = SLOW_BOUND_S + 10
LIMIT_ARGS = ("--request-timeout", str(TIMEOUT_S), "--min-rate", str(MIN_RATE))
LOCK_WAIT_S = 15.0
READY_TIMEOUT_S = 3.0  # how long `cachefs mount` waits, in the test that patches it
HOSTILE_BEHAVIOURS = [Behaviour.TRICKLE_BODY, Behaviour.TRICKLE_HEADERS, Behaviour.ENDLESS_CONTINUE]


def data_scripts() -> dict[str, Script]:
    """/data/: good files around every kind of bad one, in listing order."""
    slow = {f"slow-{b.value}": Script(b, SLOW_BODY, interval_s=TRICKLE_S) for b in HOSTILE_BEHAVIOURS}
    files = {
        "a-good": static(GOOD),
        "b-good": static(GOOD),
        "c-loop": Script(Behaviour.REDIRECT_LOOP),
        "d-good": static(GOOD),
        **slow,
    }
    sizes = {"a-good": len(GOOD), "b-good": len(GOOD), "c-loop": 100, "d-good": len(GOOD)}
    index = json_index([{"name": n, "size": sizes.get(n, len(SLOW_BODY))} for n in files])
    return {"/data/": index, **{f"/data/{n}": s for n, s in files.items()}}


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer(data_scripts()) as server:
        yield server


@pytest.fixture(params=["lean", "proxy-variables"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Plain, or with proxy variables set that route loopback directly
    (NO_PROXY): once, such a setting sent every request through httpx's own
    transport, whose handling of hostile answers differed."""
    if request.param == "proxy-variables":
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
    return request.param


async def read_all(remote: HttpIndexRemote, path: str, size: int) -> bytes:
    async with remote.read_range(path, 0, size, "") as body:
        return b"".join([piece async for piece in body])


def run_remote(server: HostileServer, job, limits: RequestLimits = LIMITS):
    async def main():
        async with HttpIndexRemote(server.url("/data/"), limits=limits) as remote:
            with trio.fail_after(HANG_S):
                return await job(remote)

    return trio.run(main)


def timed_failure(fn) -> tuple[BaseException, float]:
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        fn()
    return info.value, time.monotonic() - start


# -- the remote layer ---------------------------------------------------------------


def test_redirect_loop_is_a_remote_error(hostile: HostileServer, transport: str) -> None:
    error, took = timed_failure(lambda: run_remote(hostile, lambda r: read_all(r, "c-loop", 100)))
    assert isinstance(error, BadResponse) and "redirect" in str(error), error
    assert took < FAST_MISTAKE_BOUND_S
    assert hostile.count("/data/c-loop") > 1  # it did follow the loop for a while


@pytest.mark.parametrize("behaviour", HOSTILE_BEHAVIOURS, ids=lambda b: b.value)
def test_slow_answers_fail_in_bounded_time(hostile: HostileServer, transport: str,
                                           behaviour: Behaviour) -> None:
    path = f"slow-{behaviour.value}"
    error, took = timed_failure(lambda: run_remote(hostile, lambda r: read_all(r, path, len(SLOW_BODY))))
    assert isinstance(error, Unreachable), error
    assert took < SLOW_BOUND_S, f"{behaviour.value} took {took:.1f} s"


def test_a_trickle_is_not_cut_while_it_keeps_the_minimum_rate(transport: str) -> None:
    # 3 KB at 20 bytes/s takes 150 s; at a minimum rate of 10 bytes/s the
    # deadline grows faster than the time taken, so only time ends it: a
    # body still on time when we stop counts as not cut off.
    scripts = {"/data/": json_index([]), "/data/f": Script(Behaviour.TRICKLE_BODY, SLOW_BODY, interval_s=0.05)}
    limits = RequestLimits(timeout_s=TIMEOUT_S, min_rate=10)
    with HostileServer(scripts) as server:

        async def job(remote: HttpIndexRemote) -> int:
            got = 0
            with trio.move_on_after(3 * TIMEOUT_S):
                async with remote.read_range("f", 0, len(SLOW_BODY), "") as body:
                    async for piece in body:
                        got += len(piece)
            return got

        got = run_remote(server, job, limits)
    assert got > 0


def test_endless_listing_hits_the_size_cap(transport: str) -> None:
    with HostileServer({"/data/": Script(Behaviour.ENDLESS_LISTING)}) as server:
        error, took = timed_failure(lambda: run_remote(server, lambda r: r.list_dir("")))
    assert isinstance(error, BadResponse) and "--max-listing-size" in str(error), error


def test_gzip_junk_listing_is_a_remote_error(transport: str) -> None:
    junk = static(b"this is not gzip at all" * 10, "text/html", **{"Content-Encoding": "gzip"})
    with HostileServer({"/data/": junk}) as server:
        error, _ = timed_failure(lambda: run_remote(server, lambda r: r.list_dir("")))
    assert isinstance(error, BadResponse) and "Content-Encoding" in str(error), error


def test_listing_redirect_loop_is_a_remote_error(transport: str) -> None:
    with HostileServer({"/data/": Script(Behaviour.REDIRECT_LOOP)}) as server:
        error, _ = timed_failure(lambda: run_remote(server, lambda r: r.list_dir("")))
    assert isinstance(error, BadResponse) and "redirect" in str(error), error


# -- through a mount -----------------------------------------------------------------


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def assert_eio(path: Path) -> None:
    with pytest.raises(OSError) as info:
        read_file(path)
    assert info.value.errno == errno.EIO, info.value


def test_redirect_loop_fails_one_file_and_the_daemon_lives(hostile: HostileServer, mount: Mounter) -> None:
    cache_dir = mount.base / "cache"
    mp = mount(hostile.url("/data/"), cache_dir, *LIMIT_ARGS)
    pid = mount.daemon_pid(mp)
    # Two opens in listing order start read-ahead of the next small files,
    # the looping one among them, before anybody opens it.
    assert read_file(mp / "a-good") == GOOD
    assert read_file(mp / "b-good") == GOOD
    assert wait_until(lambda: hostile.count("/data/c-loop") > 0, FAST_MISTAKE_BOUND_S)
    time.sleep(1.0)  # let the background fetch of the loop fail
    assert pid_alive(pid) and is_mounted(mp), "read-ahead of a redirect loop killed the daemon"
    assert wait_until(lambda: "read-ahead of c-loop failed" in log_text(cache_dir), FAST_MISTAKE_BOUND_S)
    assert_eio(mp / "c-loop")
    assert pid_alive(pid), "reading a redirect loop killed the daemon"
    text = log_text(cache_dir)
    assert "opening 'c-loop'" in text and "redirect loop" in text and "Traceback" not in text, text[-3000:]
    assert read_file(mp / "d-good") == GOOD


@pytest.mark.parametrize("behaviour", HOSTILE_BEHAVIOURS, ids=lambda b: b.value)
def test_slow_file_fails_in_bounded_time_while_others_work(hostile: HostileServer, mount: Mounter,
                                                           behaviour: Behaviour) -> None:
    cache_dir = mount.base / "cache"
    mp = mount(hostile.url("/data/"), cache_dir, *LIMIT_ARGS)
    outcome: list[BaseException | bytes] = []

    def slow_reader() -> None:
        try:
            outcome.append(read_file(mp / f"slow-{behaviour.value}"))
        except OSError as e:
            outcome.append(e)

    start = time.monotonic()
    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    time.sleep(TRICKLE_S)
    # While the slow file hangs on its server, the others are served.
    assert read_file(mp / "d-good") == GOOD
    reader.join(SLOW_BOUND_S + 30)
    took = time.monotonic() - start
    assert outcome, f"the read of {behaviour.value} still hangs after {took:.0f} s"
    assert isinstance(outcome[0], OSError) and outcome[0].errno == errno.EIO, outcome[0]
    assert took < SLOW_BOUND_S, f"{behaviour.value} took {took:.1f} s"
    assert pid_alive(mount.daemon_pid(mp))
    text = log_text(cache_dir)
    assert "too slow" in text and "Traceback" not in text, text[-3000:]


def test_bad_sizes_skip_only_their_entries(mount: Mounter) -> None:
    rows = [{"name": "fine", "size": len(GOOD)}] + [
        {"name": f"bad{n}", "size": size} for n, size in enumerate([-5, 2**63, 2**70])
    ]
    # The times are hostile_server.MTIME's minute, as the HEADs say.
    html = (b'<html><body><pre><a href="fine">fine</a>  14-Nov-2023 22:13  %d\r\n'
            b'<a href="huge">huge</a>  14-Nov-2023 22:13  99999999999999999999999\r\n'
            b"</pre></body></html>" % len(GOOD))
    scripts = {
        "/json/": json_index(rows),
        "/json/fine": static(GOOD),
        "/html/": static(html, "text/html"),
        "/html/fine": static(GOOD),
    }
    contents = "".join(f"<Contents><Key>{name}</Key><Size>{size}</Size></Contents>" for name, size in [
        ("fine", len(GOOD)), ("neg", "-5"), ("big", 2**63), ("huge", 2**70), ("nan", "many")])
    scripts["/bkt/"] = static(f"<ListBucketResult>{contents}</ListBucketResult>".encode(), "application/xml")
    scripts["/bkt/fine"] = static(GOOD)
    with HostileServer(scripts) as server:
        s3_args = ("--endpoint-url", server.url("").rstrip("/"), "--no-sign-request",
                   "--force-path-style", "--region", "us-east-1")
        for top, source, args in [("json", server.url("/json/"), ()), ("html", server.url("/html/"), ()),
                                  ("s3", "s3://bkt", s3_args)]:
            cache_dir = mount.base / f"cache-{top}"
            mp = mount(source, cache_dir, *args)
            assert sorted(os.listdir(mp)) == ["fine"]
            assert read_file(mp / "fine") == GOOD
            text = log_text(cache_dir)
            assert "unusable size" in text and "struct.error" not in text, text[-2000:]


# -- mounts that cannot be made ---------------------------------------------------------


def assert_daemon_gone(cache_dir: Path) -> None:
    """No daemon holds the cache's lock: the one that failed has exited.

    A failed mount removes the source folder it made, after giving up its
    lock; no folder then means no lock held."""
    locks = list(cache_dir.glob("*/lock"))
    if not locks:
        return

    def free() -> bool:
        fd = os.open(locks[0], os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    assert wait_until(free, LOCK_WAIT_S), "the daemon of a failed mount is still running"


@pytest.mark.parametrize(("script", "culprit"), [
    (Script(Behaviour.REDIRECT_LOOP), "redirect loop"),
    (static(b"junk, not gzip" * 10, "text/html", **{"Content-Encoding": "gzip"}), "Content-Encoding 'gzip'"),
    (Script(Behaviour.ENDLESS_LISTING), "--max-listing-size"),
    (Script(Behaviour.TRICKLE_HEADERS, b"[]", interval_s=TRICKLE_S), "too slow"),
], ids=["redirect-loop", "gzip-junk", "endless-listing", "trickled-headers"])
def test_bad_root_listing_is_one_line(mount: Mounter, script: Script, culprit: str) -> None:
    with HostileServer({"/data/": script}) as server:
        mountpoint = mount.new_dir("mnt")
        cache_dir = mount.base / "cache"
        result = mount.run_mount(server.url("/data/"), mountpoint, cache_dir, *LIMIT_ARGS)
        assert_one_line_error(result, culprit)
        assert "internal error" not in result.stderr
        assert not is_mounted(mountpoint)
        assert_daemon_gone(cache_dir)


def test_endless_listing_default_cap(mount: Mounter) -> None:
    """With no option given, an endless listing still ends, and so does the daemon."""
    with HostileServer({"/data/": Script(Behaviour.ENDLESS_LISTING)}) as server:
        mountpoint = mount.new_dir("mnt")
        cache_dir = mount.base / "cache"
        result = mount.run_mount(server.url("/data/"), mountpoint, cache_dir)
        assert_one_line_error(result, "--max-listing-size")
        assert_daemon_gone(cache_dir)


@pytest.mark.parametrize(("option", "value"), [
    ("--request-timeout", "0"),
    ("--request-timeout", "-1"),
    ("--request-timeout", "soon"),
    ("--request-timeout", "99999"),
    ("--min-rate", "0"),
    ("--min-rate", "fast"),
    ("--max-listing-size", "1K"),
    ("--max-listing-size", "lots"),
])
def test_bad_limit_options(mount: Mounter, option: str, value: str) -> None:
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount("http://127.0.0.1:9/data/", mountpoint, mount.base / "cache", f"{option}={value}")
    assert result.returncode == 2, result
    assert option in result.stderr and "Traceback" not in result.stderr
    assert "unrecognized" not in result.stderr
    assert not is_mounted(mountpoint)


def test_daemon_that_misses_the_ready_timeout_is_stopped(mount: Mounter, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`cachefs mount` gives up waiting: the daemon it reports failed must not
    stay (and mount later, or grow), whatever it is stuck on."""
    monkeypatch.setattr(cli_mount, "READY_TIMEOUT", READY_TIMEOUT_S)
    scripts = {"/data/": Script(Behaviour.TRICKLE_HEADERS, b"[]", interval_s=TRICKLE_S)}
    with HostileServer(scripts) as server:
        mountpoint = mount.new_dir("mnt")
        cache_dir = mount.base / "cache"
        # Requests may take an hour: only the mount command's patience ends this.
        status = cli_app.main(["mount", server.url("/data/"), str(mountpoint), "--cache-dir", str(cache_dir),
                           "--request-timeout", "3600"])
        err = capsys.readouterr().err
        pid = int(err.split("(pid ", 1)[1].split(")", 1)[0]) if "(pid " in err else None
        try:
            assert status == 1 and "did not answer" in err, err
            assert_daemon_gone(cache_dir)
            assert pid is not None and not pid_alive(pid)
            assert not is_mounted(mountpoint)
        finally:
            if pid is not None and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)  # our own daemon, left behind by code under test
            if is_mounted(mountpoint):
                subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_daemon_gives_up_on_a_source_that_never_answers(mount: Mounter, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before `cachefs mount` stops waiting, the daemon stops trying, says why, and exits."""
    monkeypatch.setattr(cli_mount, "READY_TIMEOUT", cli_mount.STARTUP_MARGIN + READY_TIMEOUT_S)
    scripts = {"/data/": Script(Behaviour.TRICKLE_HEADERS, b"[]", interval_s=TRICKLE_S)}
    with HostileServer(scripts) as server:
        mountpoint = mount.new_dir("mnt")
        cache_dir = mount.base / "cache"
        status = cli_app.main(["mount", server.url("/data/"), str(mountpoint), "--cache-dir", str(cache_dir),
                           "--request-timeout", "3600"])
        err = capsys.readouterr().err
        assert status == 1, err
        assert err.count("\n") == 1 and f"did not answer within {READY_TIMEOUT_S:g} s" in err, err
        assert "pid" not in err  # the daemon's own report, not the command's timeout
        assert_daemon_gone(cache_dir)
        assert not is_mounted(mountpoint)


def test_endless_s3_listing_hits_the_size_cap() -> None:
    """An S3 listing is capped over all its pages: each page alone is fine."""
    rows = "".join(f"<Contents><Key>k{i:06d}</Key><Size>1</Size></Contents>" for i in range(12_000))
    page = ("<ListBucketResult><IsTruncated>true</IsTruncated>"
            f"<NextContinuationToken>more</NextContinuationToken>{rows}</ListBucketResult>").encode()
    limits = RequestLimits(max_listing_bytes=2 * len(page) - 1)
    with HostileServer({"/bkt/": static(page, "application/xml")}) as server:
        options = S3Options(endpoint_url=server.url("").rstrip("/"), region="us-east-1",
                            no_sign_request=True, force_path_style=True)

        async def main() -> None:
            async with S3Remote(parse_s3_source("s3://bkt"), options, limits=limits) as remote:
                with trio.fail_after(HANG_S):
                    await remote.list_dir("")

        error, _ = timed_failure(lambda: trio.run(main))
        assert server.count("/bkt/") == 2, "the cap must count all pages, and stop at the second"
    assert isinstance(error, BadResponse) and "--max-listing-size" in str(error), error


# -- the lean transport itself ----------------------------------------------------------


def transport_get(server: HostileServer, path: str, deadline_s: float | None) -> bytes:
    """GET `path` through Http11Transport alone, with a Deadline if given."""
    async def main() -> bytes:
        transport = Http11Transport(lambda proxy: httpx.AsyncHTTPTransport(), max_connections=2)
        try:
            extensions = {"timeout": {"connect": 5.0, "read": 30.0, "write": 5.0, "pool": None}}
            if deadline_s is not None:
                extensions[DEADLINE_EXTENSION] = Deadline(trio.current_time() + deadline_s)
            request = httpx.Request("GET", server.url(path), extensions=extensions)
            with trio.fail_after(HANG_S):
                response = await transport.handle_async_request(request)
                try:
                    return b"".join([piece async for piece in response.stream])
                finally:
                    await response.aclose()
        finally:
            await transport.aclose()

    return trio.run(main)


@pytest.mark.parametrize("behaviour", HOSTILE_BEHAVIOURS, ids=lambda b: b.value)
def test_lean_transport_keeps_the_deadline(hostile: HostileServer, behaviour: Behaviour) -> None:
    """Each socket read is far within the read timeout; only the deadline ends these."""
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match="deadline"):
        transport_get(hostile, f"/data/slow-{behaviour.value}", TIMEOUT_S)
    assert time.monotonic() - start < SLACK * TIMEOUT_S


def test_lean_transport_takes_few_interim_answers() -> None:
    """Fast endless 100 Continue lines: refused long before any deadline."""
    scripts = {"/x": Script(Behaviour.ENDLESS_CONTINUE, interval_s=0.001)}
    with HostileServer(scripts) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="interim"):
            transport_get(server, "/x", None)


def test_time_before_1970_is_shown_not_an_error(mount: Mounter) -> None:
    """A listed mtime before the epoch (a 1900 date) is a file's time like any other."""
    scripts = {
        "/data/": json_index([{"name": "old", "size": len(GOOD), "mtime": "Mon, 01 Jan 1900 00:00:00 GMT"},
                              {"name": "new", "size": len(GOOD)}]),
        "/data/new": static(GOOD),
    }
    with HostileServer(scripts) as server:
        mp = mount(server.url("/data/"))
        assert sorted(os.listdir(mp)) == ["new", "old"]
        assert os.stat(mp / "old").st_mtime == -2208988800.0
        assert os.stat(mp / "new").st_size == len(GOOD)


@pytest.mark.parametrize("behaviour", [Behaviour.TRICKLE_BODY, Behaviour.ENDLESS_LISTING], ids=lambda b: b.value)
def test_s3_error_document_is_bounded(transport: str, behaviour: Behaviour) -> None:
    """A refused S3 read whose error body trickles, or never ends, still fails in bounded time."""
    scripts = {"/bkt/f": Script(behaviour, b"<Error><Code>AccessDenied</Code></Error>" * 20,
                                status=403, interval_s=TRICKLE_S)}
    with HostileServer(scripts) as server:
        options = S3Options(endpoint_url=server.url("").rstrip("/"), region="us-east-1",
                            no_sign_request=True, force_path_style=True)

        async def main() -> None:
            async with S3Remote(parse_s3_source("s3://bkt"), options, limits=LIMITS) as remote:
                with trio.fail_after(HANG_S):
                    async with remote.read_range("f", 0, 100, "") as body:
                        async for _ in body:
                            pass

        error, took = timed_failure(lambda: trio.run(main))
    assert took < SLOW_BOUND_S, took
    assert "403" in str(error), error


def test_waiting_for_a_connection_is_not_charged_to_the_deadline() -> None:
    """With every connection busy on slow but steady bodies, a request that
    waits for one longer than its timeout still gets its full time after."""
    steady = Script(Behaviour.TRICKLE_BODY, b"s" * 60, interval_s=0.05)  # 20 B/s: 3 s
    scripts = {"/data/": json_index([]), "/data/steady": steady, "/data/good": static(GOOD)}
    limits = RequestLimits(timeout_s=TIMEOUT_S, min_rate=10)  # steady bodies are never cut
    with HostileServer(scripts) as server:

        async def job(remote: HttpIndexRemote) -> bytes:
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_CONNECTIONS):
                    nursery.start_soon(read_all, remote, "steady", 60)
                await trio.sleep(TIMEOUT_S / 10)  # all connections taken
                return await read_all(remote, "good", len(GOOD))

        assert run_remote(server, job, limits) == GOOD
        assert server.count("/data/steady") == MAX_CONNECTIONS
