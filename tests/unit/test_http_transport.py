"""Http11Transport (cachefs/remote/http/transport.py) against a scripted loopback server.

Each test starts `ScriptedServer`, a plain-socket HTTP server on 127.0.0.1
that reads request heads and answers with the exact raw bytes the test
chose, recording what it saw: request lines, headers, which connection each
request came on, how many connections it accepted and how many requests it
held at once. It covers:

- body framing: Content-Length, chunked (extensions, trailers, byte-by-byte
  delivery), end of connection; HEAD, 204 and 304 without bodies; 1xx
  interim answers before the final one;
- connection reuse: keep-alive, `Connection: close`, HTTP/1.0, stale idle
  connections (closed or reset by the server), abandoned half-read bodies,
  and the `max_connections` limit under concurrency;
- errors mapped to httpx's exceptions, and the connection slot released
  after each, so the next request still works;
- the bytes sent: request line (raw path and query), Host, Range, and header
  values with CR/LF refused before anything is sent (httpx 0.28 builds such
  requests without complaint, so they reach the transport as-is);
- which requests go to the fallback transport;
- `make_client()` + `RemoteClient.send_quick`: redirects, and the proxy
  variables applied; an http:// proxy stays on this transport.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio

from cachefs.remote.http.proxies import ProxyChoice
from cachefs.remote.http.transport import Http11Transport
from cachefs.remote.http.client import make_client, range_header

LOOPBACK = "127.0.0.1"
POLL_S = 0.02  # how often server threads look at their stop flag
SEND_TIMEOUT_S = 5.0
TEST_DEADLINE_S = 10.0
TIMEOUT = httpx.Timeout(5.0)  # for requests that should never wait that long
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


# -- the scripted server ----------------------------------------------------------


@dataclass
class Reply:
    """What the server does with one request.

    `data` is sent as is (one byte at a time when `trickle`), after `hold` is
    set if given. Then the server closes the connection (`close`), resets it
    (`reset`: RST instead of FIN), keeps it open answering nothing more
    (`hang`), or waits for the next request on it.
    """

    data: bytes = b""
    close: bool = False
    reset: bool = False
    hang: bool = False
    trickle: bool = False
    hold: threading.Event | None = None


@dataclass
class Seen:
    """One request head the server received."""

    conn: int  # index of the connection it came on, in accept order
    line: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Route = bytes | Reply | list[bytes | Reply]


def ok(body: bytes, *headers: str) -> bytes:
    """A 200 with a Content-Length body."""
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ScriptedServer:
    """A loopback HTTP/1.1 server answering from `routes` (request target -> Route).

    A list route gives its replies in turn, the last one to all later
    requests; a target without a route gets `default`. One thread accepts, one thread serves each connection;
    `close()` stops and joins them all.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.default: Route = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        self.seen: list[Seen] = []
        self.accepted = 0
        self.open_now = self.max_open = 0
        self.pending = self.max_pending = 0  # requests received and not yet answered
        self.closed_by_client = 0
        self.closed_by_server = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(POLL_S)
        self.port = self._listener.getsockname()[1]
        self._start(self._accept_loop)

    def url(self, target: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{target}"

    @property
    def lines(self) -> list[str]:
        return [s.line for s in self.seen]

    @property
    def conns(self) -> list[int]:
        return [s.conn for s in self.seen]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"server threads did not stop: {stuck}"

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                index = self.accepted
                self.accepted += 1
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)
            self._start(self._serve, sock, index)

    def _reply_for(self, seen: Seen) -> Reply:
        route = self.routes.get(seen.line.split(" ")[1], self.default)
        if isinstance(route, list):
            route = route.pop(0) if len(route) > 1 else route[0]
        return route if isinstance(route, Reply) else Reply(route)

    def _receive(self, sock: socket.socket) -> bytes | None:
        """Bytes from `sock` (b"" at its end), or None once the server stops."""
        sock.settimeout(POLL_S)
        while not self._stop.is_set():
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
        return None

    def _wait(self, event: threading.Event) -> bool:
        while not event.wait(POLL_S):
            if self._stop.is_set():
                return False
        return True

    def _send(self, sock: socket.socket, reply: Reply) -> None:
        sock.settimeout(SEND_TIMEOUT_S)
        if not reply.trickle:
            sock.sendall(reply.data)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(reply.data)):
            sock.sendall(reply.data[i:i + 1])
            time.sleep(0.0005)

    def _serve(self, sock: socket.socket, index: int) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = self._receive(sock)
                    if data is None:
                        return
                    if not data:
                        with self._lock:
                            self.closed_by_client += 1
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = [(k, v.strip()) for k, _, v in (h.partition(":") for h in rest)]
                seen = Seen(index, line, headers)
                with self._lock:
                    self.seen.append(seen)
                    self.pending += 1
                    self.max_pending = max(self.max_pending, self.pending)
                reply = self._reply_for(seen)
                try:
                    if reply.hold is not None and not self._wait(reply.hold):
                        return
                    self._send(sock, reply)
                finally:
                    with self._lock:
                        self.pending -= 1
                if reply.hang:  # answer nothing more, but notice the client leaving
                    while data := self._receive(sock):
                        pass
                    if data == b"":
                        with self._lock:
                            self.closed_by_client += 1
                    return
                if reply.close or reply.reset:
                    if reply.reset:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    sock.close()
                    with self._lock:
                        self.closed_by_server += 1
                    return
        except OSError:
            return  # the client went away mid-answer
        finally:
            sock.close()
            with self._lock:
                self.open_now -= 1


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy settings from the outer environment (make_client reads them)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@contextmanager
def running_server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with running_server() as running:
        yield running


@pytest.fixture
def proxy_server() -> Iterator[ScriptedServer]:
    """A second, independent server, for the proxy tests."""
    with running_server() as running:
        yield running


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- the client side --------------------------------------------------------------


class RecordingFallback(httpx.AsyncBaseTransport):
    """Stands for httpx's transport: records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append((request.method, str(request.url), body))
        return httpx.Response(200, content=b"from fallback")

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Got:
    status: int
    headers: httpx.Headers
    body: bytes
    reason: bytes = b""


def run(main: Callable[[], Awaitable[object]]) -> None:
    async def guarded() -> None:
        with trio.fail_after(TEST_DEADLINE_S):
            await main()

    trio.run(guarded)


async def until(condition: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.005)
    assert condition(), f"timed out waiting for {what}"


@asynccontextmanager
async def open_transport(
    max_connections: int = 4,
) -> AsyncIterator[tuple[Http11Transport, RecordingFallback]]:
    fallback = RecordingFallback()
    transport = Http11Transport(lambda proxy: fallback, max_connections=max_connections)
    try:
        yield transport, fallback
    finally:
        await transport.aclose()


def make_request(method: str, url: str, *, headers: dict[str, str] | None = None,
                 content: bytes | None = None, timeout: httpx.Timeout = TIMEOUT) -> httpx.Request:
    """A request as httpx's client would hand it to a transport."""
    return httpx.Request(method, url, headers=headers, content=content,
                         extensions={"timeout": timeout.as_dict()})


async def read_raw(response: httpx.Response) -> bytes:
    try:
        return b"".join([bytes(chunk) async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


async def fetch(transport: httpx.AsyncBaseTransport, url: str, method: str = "GET", *,
                headers: dict[str, str] | None = None, timeout: httpx.Timeout = TIMEOUT) -> Got:
    response = await transport.handle_async_request(
        make_request(method, url, headers=headers, timeout=timeout))
    body = await read_raw(response)
    return Got(response.status_code, response.headers, body,
               response.extensions.get("reason_phrase", b""))


# -- framing and reuse ------------------------------------------------------------


def test_content_length_body_and_keep_alive(server: ScriptedServer) -> None:
    server.routes["/a"] = ok(b"hello world", "X-Thing: 1")
    server.routes["/b"] = ok(b"second\r\n\r\nbody")

    async def main() -> None:
        async with open_transport() as (transport, fallback):
            first = await fetch(transport, server.url("/a"))
            assert (first.status, first.reason, first.body) == (200, b"OK", b"hello world")
            assert first.headers["x-thing"] == "1"
            assert first.headers["content-length"] == "11"
            second = await fetch(transport, server.url("/b"))
            assert second.body == b"second\r\n\r\nbody"
            assert transport.connections_made == 1
        assert fallback.requests == []

    run(main)
    assert server.accepted == 1
    assert server.conns == [0, 0]


def test_chunked_body_with_extensions_and_trailers(server: ScriptedServer) -> None:
    server.routes["/chunked"] = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n"
        b"7 ; name=\"quoted;value\"\r\n, world\r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
    )
    server.routes["/after"] = ok(b"after")

    async def main() -> None:
        async with open_transport() as (transport, _):
            got = await fetch(transport, server.url("/chunked"))
            assert (got.status, got.body) == (200, b"hello, world0123456789")
            assert (await fetch(transport, server.url("/after"))).body == b"after"

    run(main)
    assert server.accepted == 1
    assert server.conns == [0, 0]


def test_heads_and_bodies_split_across_many_reads(server: ScriptedServer) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n")
    server.routes["/chunked"] = Reply(chunked, trickle=True)
    server.routes["/fixed"] = Reply(ok(b"fixed length"), trickle=True)

    async def main() -> None:
        async with open_transport() as (transport, _):
            assert (await fetch(transport, server.url("/chunked"))).body == b"abcde"
            assert (await fetch(transport, server.url("/fixed"))).body == b"fixed length"
            assert (await fetch(transport, server.url("/chunked"))).body == b"abcde"

    run(main)
    assert server.conns == [0, 0, 0]


def test_body_delimited_by_close_is_not_reused(server: ScriptedServer) -> None:
    server.routes["/until-close"] = Reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\nall of it\r\n\r\nand more",
        close=True)
    server.routes["/next"] = ok(b"next")

    async def main() -> None:
        async with open_transport() as (transport, _):
            got = await fetch(transport, server.url("/until-close"))
            assert (got.status, got.body) == (200, b"all of it\r\n\r\nand more")
            assert (await fetch(transport, server.url("/next"))).body == b"next"

    run(main)
    assert server.accepted == 2
    assert server.conns == [0, 1]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 4\r\n\r\nbody",
    b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nbody",
], ids=["connection-close", "close-among-options", "http-1.0"])
def test_connection_the_server_wants_closed_is_not_reused(server: ScriptedServer,
                                                          response: bytes) -> None:
    # The server keeps its side open: reusing the connection would work, and
    # would show up as a single accepted connection.
    server.routes["/bye"] = response
    server.routes["/next"] = ok(b"next")

    async def main() -> None:
        async with open_transport() as (transport, _):
            assert (await fetch(transport, server.url("/bye"))).body == b"body"
            await until(lambda: server.closed_by_client == 1, "the client to close connection 0")
            assert (await fetch(transport, server.url("/next"))).body == b"next"

    run(main)
    assert server.conns == [0, 1]


def test_http_1_0_keep_alive_is_reused(server: ScriptedServer) -> None:
    server.routes["/a"] = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\na"
    server.routes["/b"] = ok(b"b")

    async def main() -> None:
        async with open_transport() as (transport, _):
            assert (await fetch(transport, server.url("/a"))).body == b"a"
            assert (await fetch(transport, server.url("/b"))).body == b"b"

    run(main)
    assert server.conns == [0, 0]


def test_head_reads_no_body_and_reuses_connection(server: ScriptedServer) -> None:
    server.routes["/object"] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"e\"\r\n\r\n",
        ok(b"then a get"),
    ]

    async def main() -> None:
        async with open_transport() as (transport, _):
            head = await fetch(transport, server.url("/object"), "HEAD")
            assert (head.status, head.body) == (200, b"")
            assert head.headers["content-length"] == "1000"
            assert (await fetch(transport, server.url("/object"))).body == b"then a get"

    run(main)
    assert server.lines == ["HEAD /object HTTP/1.1", "GET /object HTTP/1.1"]
    assert server.conns == [0, 0]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    # A 304 may carry the Content-Length of the entity it stands for.
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
], ids=["204", "204-length-0", "304-with-length", "304-chunked"])
def test_204_and_304_have_no_body(server: ScriptedServer, response: bytes) -> None:
    server.routes["/empty"] = response
    server.routes["/next"] = ok(b"next")

    async def main() -> None:
        async with open_transport() as (transport, _):
            got = await fetch(transport, server.url("/empty"))
            assert (got.status, got.body) == (int(response[9:12]), b"")
            assert (await fetch(transport, server.url("/next"))).body == b"next"

    run(main)
    assert server.conns == [0, 0]


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
], ids=["100", "103", "100-then-103"])
def test_interim_responses_are_skipped(server: ScriptedServer, interim: bytes) -> None:
    server.routes["/final"] = interim + ok(b"final body", "X-Final: yes")
    server.routes["/next"] = ok(b"next")

    async def main() -> None:
        async with open_transport() as (transport, _):
            got = await fetch(transport, server.url("/final"))
            assert (got.status, got.reason, got.body) == (200, b"OK", b"final body")
            assert got.headers["x-final"] == "yes"
            assert "link" not in got.headers
            assert (await fetch(transport, server.url("/next"))).body == b"next"

    run(main)
    assert server.conns == [0, 0]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_stale_idle_connection_is_replaced(server: ScriptedServer, how: str) -> None:
    # The server answers as if keeping the connection, then drops it while idle.
    server.routes["/first"] = Reply(ok(b"first"), close=how == "close", reset=how == "reset")
    server.routes["/second"] = ok(b"second")

    async def main() -> None:
        async with open_transport() as (transport, _):
            assert (await fetch(transport, server.url("/first"))).body == b"first"
            await until(lambda: server.closed_by_server == 1, "the server to drop connection 0")
            got = await fetch(transport, server.url("/second"))
            assert (got.status, got.body) == (200, b"second")
            assert transport.connections_made == 2

    run(main)
    assert server.accepted == 2
    # The retry went out on connection 1; connection 0 saw only the first request.
    assert server.lines == ["GET /first HTTP/1.1", "GET /second HTTP/1.1"]
    assert server.conns == [0, 1]


# -- errors -----------------------------------------------------------------------
# Each error test uses one connection slot, then sends a good request: had the
# failed request kept its slot, that request would wait forever.


async def still_works(transport: Http11Transport, server: ScriptedServer) -> None:
    server.routes["/good"] = ok(b"good")
    with trio.fail_after(3):
        assert (await fetch(transport, server.url("/good"))).body == b"good"


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"<html>not http</html>\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n bad: folded\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000,  # a head that never ends
], ids=["letters-in-code", "http-2", "icy", "html", "folded-header", "two-lengths", "signed-length",
        "endless-head"])
def test_malformed_head_is_remote_protocol_error(server: ScriptedServer, response: bytes) -> None:
    server.routes["/bad"] = response

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            with pytest.raises(httpx.RemoteProtocolError):
                await fetch(transport, server.url("/bad"))
            await still_works(transport, server)

    run(main)
    assert server.conns == [0, 1]


def test_server_closing_mid_body_fails_while_reading(server: ScriptedServer) -> None:
    server.routes["/short"] = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123", close=True)

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/short")))
            assert response.status_code == 200
            received = []
            try:
                with pytest.raises(httpx.RemoteProtocolError):
                    async for chunk in response.aiter_raw():
                        received.append(bytes(chunk))
            finally:
                await response.aclose()
            assert b"".join(received) == b"0123"
            await still_works(transport, server)

    run(main)
    assert server.conns == [0, 1]


@pytest.mark.parametrize("extra", [b"X", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
                         ids=["byte", "unasked-response"])
def test_more_than_content_length_is_remote_protocol_error(server: ScriptedServer,
                                                          extra: bytes) -> None:
    server.routes["/long"] = ok(b"hello") + extra

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/long")))
            with pytest.raises(httpx.RemoteProtocolError):
                await read_raw(response)
            await still_works(transport, server)

    run(main)
    assert server.conns == [0, 1]  # the connection with stray bytes was not reused


def chunked_with_size(size: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size
            + b"\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("size", [b"zz", b"", b"-5", b"5 5", b"g"])
def test_bad_chunk_size_is_remote_protocol_error(server: ScriptedServer, size: bytes) -> None:
    server.routes["/chunked"] = chunked_with_size(size)

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/chunked")))
            with pytest.raises(httpx.RemoteProtocolError):
                await read_raw(response)
            await still_works(transport, server)

    run(main)
    assert server.conns == [0, 1]


@pytest.mark.parametrize("size", [b"0x5", b"+5", b"0_5", b"-0"])
def test_chunk_size_is_hex_digits_only(server: ScriptedServer, size: bytes) -> None:
    """RFC 9112 7.1: chunk-size = 1*HEXDIG. Python's int(s, 16) also takes a
    0x prefix, a sign and underscores; none of those are chunk sizes."""
    server.routes["/chunked"] = chunked_with_size(size)

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/chunked")))
            with pytest.raises(httpx.RemoteProtocolError):
                await read_raw(response)

    run(main)


def test_chunk_not_followed_by_crlf_is_remote_protocol_error(server: ScriptedServer) -> None:
    server.routes["/chunked"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nhello\r\n0\r\n\r\n")

    async def main() -> None:
        async with open_transport() as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/chunked")))
            with pytest.raises(httpx.RemoteProtocolError):
                await read_raw(response)

    run(main)


def test_silent_server_is_read_timeout(server: ScriptedServer) -> None:
    server.routes["/silent"] = Reply(hang=True)
    server.routes["/stall"] = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01", hang=True)

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            start = trio.current_time()
            with pytest.raises(httpx.ReadTimeout):
                await fetch(transport, server.url("/silent"), timeout=httpx.Timeout(0.3))
            assert 0.25 <= trio.current_time() - start < 2
            # A stall in the body times out while reading it.
            response = await transport.handle_async_request(
                make_request("GET", server.url("/stall"), timeout=httpx.Timeout(0.3)))
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await read_raw(response)
            await still_works(transport, server)

    run(main)
    assert server.conns == [0, 1, 2]


def test_cancelled_request_releases_its_slot(server: ScriptedServer) -> None:
    server.routes["/silent"] = Reply(hang=True)

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            with trio.move_on_after(0.1) as scope:
                await fetch(transport, server.url("/silent"))
            assert scope.cancelled_caught
            await still_works(transport, server)
            # The cancelled request's connection was closed, not left open or pooled.
            await until(lambda: server.closed_by_client == 1, "the client to close connection 0")

    run(main)
    assert server.conns == [0, 1]


def test_refused_connection_is_connect_error(server: ScriptedServer, refused_port: int) -> None:
    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, fallback):
            with pytest.raises(httpx.ConnectError):
                await fetch(transport, f"http://{LOOPBACK}:{refused_port}/x")
            assert transport.connections_made == 0
            await still_works(transport, server)
        assert fallback.requests == []

    run(main)


@pytest.mark.parametrize("headers", [
    {"X-Bad": "a\r\nInjected: yes"},
    {"X-Bad": "a\nb"},
    {"X-Bad": "a\rb"},
    {"X-Bad\r\nInjected": "yes"},
], ids=["crlf-value", "lf-value", "cr-value", "crlf-name"])
def test_line_break_in_header_is_refused_before_sending(server: ScriptedServer,
                                                        headers: dict[str, str]) -> None:
    # httpx 0.28 accepts these in httpx.Request; the transport must refuse them.
    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, fallback):
            with pytest.raises(httpx.LocalProtocolError):
                await transport.handle_async_request(
                    make_request("GET", server.url("/x"), headers=headers))
            assert transport.connections_made == 0
            await still_works(transport, server)
        assert fallback.requests == []

    run(main)
    assert server.accepted == 1
    assert server.lines == ["GET /good HTTP/1.1"]
    assert all("Injected" not in k for k, _ in server.seen[0].headers)


# -- what is sent, and where ------------------------------------------------------


def test_request_line_and_headers(server: ScriptedServer) -> None:
    target = "/dir%20x/a%2Fb%3F.bin?versionId=%41b%2B&x=1"
    server.routes[target] = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/20\r\n"
                             b"Content-Length: 5\r\n\r\n56789")

    async def main() -> None:
        async with make_client() as client:
            request = client.build_request("GET", server.url(target + "#fragment"),
                                           headers=range_header(5, 10))
            response = await client.send_quick(request, stream=False, follow_redirects=False)
            assert (response.status_code, response.content) == (206, b"56789")
        async with open_transport() as (transport, _):
            assert (await fetch(transport, f"http://{LOOPBACK}:{server.port}", "HEAD")).status == 404

    run(main)
    assert server.lines == [f"GET {target} HTTP/1.1", "HEAD / HTTP/1.1"]
    get, head = server.seen
    assert get.header("Host") == [f"{LOOPBACK}:{server.port}"]
    assert get.header("Range") == ["bytes=5-9"]
    assert get.header("Accept-Encoding") == ["identity"]
    assert get.header("Content-Length") == [] and get.header("Transfer-Encoding") == []
    assert head.header("Host") == [f"{LOOPBACK}:{server.port}"]


def test_what_the_transport_does_not_handle_goes_to_the_fallback(server: ScriptedServer) -> None:
    server.routes["/plain"] = ok(b"direct")

    async def main() -> None:
        async with open_transport() as (transport, fallback):
            sent = [
                make_request("POST", server.url("/post"), content=b"payload"),
                make_request("GET", server.url("/with-body"), content=b"body"),
                make_request("DELETE", server.url("/gone")),
            ]
            for request in sent:
                response = await transport.handle_async_request(request)
                assert await response.aread() == b"from fallback"
            assert (await fetch(transport, server.url("/plain"))).body == b"direct"
            assert fallback.requests == [
                ("POST", server.url("/post"), b"payload"),
                ("GET", server.url("/with-body"), b"body"),
                ("DELETE", server.url("/gone"), b""),
            ]
            assert not fallback.closed
        assert fallback.closed

    run(main)
    assert server.lines == ["GET /plain HTTP/1.1"]


def test_aclose_closes_idle_connections(server: ScriptedServer) -> None:
    server.routes["/a"] = ok(b"a")

    async def main() -> None:
        async with open_transport() as (transport, _):
            assert (await fetch(transport, server.url("/a"))).body == b"a"
            assert server.closed_by_client == 0
        await until(lambda: server.closed_by_client == 1, "aclose to close the idle connection")

    run(main)


# -- limits and abandoned responses -----------------------------------------------


def test_at_most_max_connections_in_use(server: ScriptedServer) -> None:
    gate = threading.Event()
    for i in range(5):
        server.routes[f"/slow/{i}"] = Reply(ok(f"body {i}".encode()), hold=gate)
    bodies: dict[int, bytes] = {}

    async def main() -> None:
        async with open_transport(max_connections=2) as (transport, _):
            async def one(i: int) -> None:
                bodies[i] = (await fetch(transport, server.url(f"/slow/{i}"))).body

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
                await until(lambda: server.pending == 2, "two requests at the server")
                await trio.sleep(0.1)  # time enough for a third to arrive, were it sent
                assert (server.pending, server.accepted) == (2, 2)
                gate.set()
            assert transport.connections_made == 2

    run(main)
    assert bodies == {i: f"body {i}".encode() for i in range(5)}
    assert (server.max_pending, server.max_open, server.accepted) == (2, 2, 2)
    assert sorted(server.lines) == [f"GET /slow/{i} HTTP/1.1" for i in range(5)]


@pytest.mark.parametrize("read_first", [True, False], ids=["after-one-chunk", "before-any"])
def test_abandoned_response_does_not_poison_the_pool(server: ScriptedServer, read_first: bool) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: more than one socket read
    server.routes["/big"] = ok(big)
    server.routes["/next"] = ok(b"next")

    async def main() -> None:
        async with open_transport(max_connections=1) as (transport, _):
            response = await transport.handle_async_request(make_request("GET", server.url("/big")))
            if read_first:
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                assert 0 < len(first) < len(big) and big.startswith(first)
                await chunks.aclose()
            await response.aclose()
            with trio.fail_after(3):
                got = await fetch(transport, server.url("/next"))
            assert (got.status, got.body) == (200, b"next")

    run(main)
    assert server.conns == [0, 1]


# -- through make_client() and send_quick -----------------------------------------


def test_send_quick_follows_redirects(server: ScriptedServer) -> None:
    server.routes["/start"] = b"HTTP/1.1 302 Found\r\nLocation: /target\r\nContent-Length: 5\r\n\r\nmoved"
    server.routes["/target"] = ok(b"the target")

    async def main() -> None:
        async with make_client() as client:
            request = client.build_request("GET", server.url("/start"))
            response = await client.send_quick(request, stream=True, follow_redirects=True)
            try:
                assert (response.status_code, await response.aread()) == (200, b"the target")
            finally:
                await response.aclose()
            assert response.url == server.url("/target")
            assert [r.status_code for r in response.history] == [302]

    run(main)
    assert server.lines.count("GET /target HTTP/1.1") == 1
    assert server.lines[0] == "GET /start HTTP/1.1"


def test_send_quick_without_following_sets_next_request(server: ScriptedServer) -> None:
    server.routes["/start"] = b"HTTP/1.1 302 Found\r\nLocation: /target\r\nContent-Length: 0\r\n\r\n"

    async def main() -> None:
        async with make_client() as client:
            request = client.build_request("GET", server.url("/start"))
            response = await client.send_quick(request, stream=True, follow_redirects=False)
            try:
                assert response.status_code == 302
                assert response.next_request is not None
                assert response.next_request.url == server.url("/target")
                assert response.next_request.method == "GET"
            finally:
                await response.aclose()

    run(main)
    assert "GET /target HTTP/1.1" not in server.lines


def test_send_quick_uses_the_environment_proxy(server: ScriptedServer, proxy_server: ScriptedServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://{LOOPBACK}:{proxy_server.port}")
    proxy_server.default = ok(b"via the proxy")
    server.default = ok(b"direct")

    async def main() -> None:
        async with make_client() as client:
            request = client.build_request("GET", server.url("/file.bin?x=1"), headers=range_header(0, 4))
            response = await client.send_quick(request, stream=False, follow_redirects=False)
            assert (response.status_code, response.content) == (200, b"via the proxy")

    run(main)
    assert server.accepted == 0
    assert proxy_server.lines == [f"GET {server.url('/file.bin?x=1')} HTTP/1.1"]
    assert proxy_server.seen[0].header("Range") == ["bytes=0-3"]


def test_https_uses_the_environment_proxy(proxy_server: ScriptedServer, refused_port: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # https goes through a CONNECT tunnel to the proxy HTTPS_PROXY names.
    monkeypatch.setenv("HTTPS_PROXY", f"http://{LOOPBACK}:{proxy_server.port}")
    proxy_server.default = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"

    async def main() -> None:
        async with make_client() as client:
            request = client.build_request("GET", f"https://{LOOPBACK}:{refused_port}/x")
            with pytest.raises(httpx.ProxyError):
                await client.send_quick(request, stream=False, follow_redirects=False)

    run(main)
    assert proxy_server.lines == [f"CONNECT {LOOPBACK}:{refused_port} HTTP/1.1"]


def test_an_http_proxy_is_used_by_this_transport_not_the_fallback(server: ScriptedServer,
                                                                  proxy_server: ScriptedServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through an http:// proxy, GETs stay on the lean path (httpx's own
    transport costs several times the CPU per request), and reuse their
    connection to the proxy."""
    monkeypatch.setenv("HTTP_PROXY", f"http://{LOOPBACK}:{proxy_server.port}")
    proxy_server.default = ok(b"via the proxy")
    fallback = RecordingFallback()

    async def main() -> None:
        transport = Http11Transport(lambda proxy: fallback, max_connections=4, proxies=ProxyChoice(None))
        try:
            for _ in range(3):
                got = await fetch(transport, server.url("/f"))
                assert (got.status, got.body) == (200, b"via the proxy")
        finally:
            await transport.aclose()
        assert transport.connections_made == 1

    run(main)
    assert fallback.requests == [] and server.accepted == 0
    assert proxy_server.lines == [f"GET {server.url('/f')} HTTP/1.1"] * 3
    assert proxy_server.accepted == 1
