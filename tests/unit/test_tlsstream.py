"""TlsStream (cachefs/remote/http/tlsstream.py) and HTTPS through Http11Transport,
against a real TLS server on loopback.

`TlsServer` is Python's own `ssl` server side in a thread, with a
certificate from a CA made for the test (`make_server_cert`); the client
trusts that CA through SSL_CERT_FILE, as users trust theirs. Each test
gives the server a handler that reads request heads and answers on the
TLS socket. Covered: large bodies byte for byte, several records handed
back by one receive, many small responses on one kept-alive connection, a
server that ends mid-body with or without close_notify (an error, never a
short body taken as whole), a body delimited by the end of the connection,
a server that stalls (read timeout), and certificates that must not verify
(another CA, another host name), with the transport's one-line message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from cachefs.localstore.tls import ServerCert, make_server_cert
from cachefs.remote.http.sockstream import PlainStream
from cachefs.remote.http.tlsstream import TlsStream
from cachefs.remote.http.transport import Http11Transport

LOOPBACK = "127.0.0.1"
TEST_DEADLINE_S = 20.0
TIMEOUT = httpx.Timeout(5.0)
RECORD = 16 * 1024  # TLS's largest record payload

Handler = Callable[[ssl.SSLSocket], None]

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA of another, unrelated certificate: trusting only it must fail."""
    return make_server_cert(tmp_path_factory.mktemp("other")).ca


@pytest.fixture(autouse=True)
def trust_test_ca(cert: ServerCert, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class TlsServer:
    """A loopback TLS server: each connection runs `handler` in its own thread.

    Errors in handlers (a client that refused the certificate, say) are
    kept in `errors`, not raised; `close()` joins every thread.
    """

    def __init__(self, cert: ServerCert, handler: Handler) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert.cert, cert.key)
        self.handler = handler
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def url(self, target: str) -> str:
        return f"https://{LOOPBACK}:{self.port}{target}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5.0)
        try:
            with self.context.wrap_socket(sock, server_side=True) as tls:
                self.handler(tls)
        except (OSError, ssl.SSLError) as e:
            self.errors.append(e)
        finally:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()
        assert not any(t.is_alive() for t in self._threads), "server threads did not stop"


@pytest.fixture
def serve(cert: ServerCert) -> Iterator[Callable[[Handler], TlsServer]]:
    servers: list[TlsServer] = []

    def start(handler: Handler) -> TlsServer:
        servers.append(TlsServer(cert, handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def read_head(tls: ssl.SSLSocket, buffer: bytearray) -> str | None:
    """The next request line (its head consumed from `buffer`), or None at the end."""
    while b"\r\n\r\n" not in buffer:
        data = tls.recv(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n")
    line = bytes(buffer[:end]).split(b"\r\n")[0].decode()
    del buffer[:end + 4]
    return line


def answer(tls: ssl.SSLSocket, body: bytes, *headers: str) -> None:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def run(main: Callable[[], Awaitable[object]]) -> None:
    async def guarded() -> None:
        with trio.fail_after(TEST_DEADLINE_S):
            await main()

    trio.run(guarded)


async def tls_client(port: int, server_hostname: str = LOOPBACK) -> TlsStream:
    """A TlsStream to the test server on `port`, trusting the test CA; no handshake yet."""
    raw = await PlainStream.connect(LOOPBACK, port)
    return TlsStream(raw, ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]), server_hostname)


def new_transport() -> Http11Transport:
    def no_fallback(proxy: object) -> httpx.AsyncBaseTransport:
        raise AssertionError("the lean transport should send every request here")

    return Http11Transport(no_fallback, max_connections=4)


async def get(transport: Http11Transport, url: str, timeout: httpx.Timeout = TIMEOUT) -> bytes:
    request = httpx.Request("GET", url, extensions={"timeout": timeout.as_dict()})
    response = await transport.handle_async_request(request)
    try:
        assert response.status_code == 200
        return b"".join([bytes(chunk) async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


# -- bodies --------------------------------------------------------------------------


def test_large_body_arrives_byte_for_byte(serve: Callable[[Handler], TlsServer]) -> None:
    body = os.urandom(8 * 1024 * 1024 + 12345)

    def handler(tls: ssl.SSLSocket) -> None:
        buffer = bytearray()
        while read_head(tls, buffer) is not None:
            answer(tls, body)

    server = serve(handler)

    async def main() -> None:
        transport = new_transport()
        try:
            got = await get(transport, server.url("/big"))
        finally:
            await transport.aclose()
        assert len(got) == len(body)
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()

    run(main)


def test_one_receive_returns_several_records(serve: Callable[[Handler], TlsServer]) -> None:
    """The point of the module: what has arrived is decrypted in one call,
    not one 16 KiB record per call."""
    body = os.urandom(8 * RECORD)
    sent = threading.Event()

    def handler(tls: ssl.SSLSocket) -> None:
        buffer = bytearray()
        if read_head(tls, buffer) is not None:
            tls.sendall(body)
            sent.set()
            tls.recv(1)  # until the client leaves

    server = serve(handler)

    async def main() -> None:
        stream = await tls_client(server.port)
        try:
            await stream.do_handshake()
            await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
            while not sent.is_set():
                await trio.sleep(0.01)
            await trio.sleep(0.2)  # the whole body in the socket's buffer
            pieces = []
            while sum(map(len, pieces)) < len(body):
                pieces.append(await stream.receive_some(len(body)))
                assert pieces[-1], "the stream ended early"
            assert b"".join(pieces) == body
            assert max(map(len, pieces)) > RECORD, [len(p) for p in pieces]
            # Never more than asked for.
            assert len(await _one_more(stream)) == 0
        finally:
            await stream.aclose()

    async def _one_more(stream: TlsStream) -> bytes:
        with trio.move_on_after(0.1):
            return await stream.receive_some(1)
        return b""

    run(main)


def test_many_small_responses_on_one_connection(serve: Callable[[Handler], TlsServer]) -> None:
    bodies = {f"/f{i}": os.urandom(100 + 97 * i) for i in range(200)}

    def handler(tls: ssl.SSLSocket) -> None:
        buffer = bytearray()
        while (line := read_head(tls, buffer)) is not None:
            answer(tls, bodies[line.split(" ")[1]])

    server = serve(handler)

    async def main() -> None:
        transport = new_transport()
        try:
            for target, body in bodies.items():
                assert await get(transport, server.url(target)) == body, target
        finally:
            await transport.aclose()
        assert transport.connections_made == 1 and server.accepted == 1

    run(main)


def test_body_delimited_by_the_end_of_the_connection(serve: Callable[[Handler], TlsServer]) -> None:
    body = os.urandom(200_000)

    def handler(tls: ssl.SSLSocket) -> None:
        if read_head(tls, bytearray()) is not None:
            tls.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
            tls.unwrap()  # close_notify

    server = serve(handler)

    async def main() -> None:
        transport = new_transport()
        try:
            assert await get(transport, server.url("/")) == body
        finally:
            await transport.aclose()

    run(main)


@pytest.mark.parametrize("close_notify", [True, False])
def test_server_ending_mid_body_is_an_error(serve: Callable[[Handler], TlsServer], close_notify: bool) -> None:
    body = os.urandom(1024 * 1024)

    def handler(tls: ssl.SSLSocket) -> None:
        if read_head(tls, bytearray()) is not None:
            tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            tls.sendall(body[: len(body) // 2])
            if close_notify:
                tls.unwrap()
            else:
                tls.shutdown(socket.SHUT_RDWR)  # the TCP connection ends, TLS says nothing

    server = serve(handler)

    async def main() -> None:
        transport = new_transport()
        try:
            with pytest.raises(httpx.RemoteProtocolError, match="bytes before the body's end"):
                await get(transport, server.url("/"))
            # The connection was not kept: the next request gets a new one.
            with pytest.raises(httpx.RemoteProtocolError):
                await get(transport, server.url("/"))
        finally:
            await transport.aclose()
        assert server.accepted == 2

    run(main)


def test_stalled_body_is_a_read_timeout(serve: Callable[[Handler], TlsServer]) -> None:
    release = threading.Event()

    def handler(tls: ssl.SSLSocket) -> None:
        if read_head(tls, bytearray()) is not None:
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 50_000)
            release.wait(10)

    server = serve(handler)

    async def main() -> None:
        transport = new_transport()
        try:
            with pytest.raises(httpx.ReadTimeout):
                await get(transport, server.url("/"), timeout=httpx.Timeout(5.0, read=0.3))
        finally:
            release.set()
            await transport.aclose()

    run(main)


# -- certificates ----------------------------------------------------------------------


def test_certificate_from_another_ca_fails_in_one_line(serve: Callable[[Handler], TlsServer],
                                                       other_ca: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    server = serve(lambda tls: None)

    async def main() -> None:
        transport = new_transport()
        try:
            with pytest.raises(httpx.ConnectError) as caught:
                await get(transport, server.url("/"))
        finally:
            await transport.aclose()
        message = str(caught.value)
        assert message.startswith(f"TLS with {LOOPBACK}:{server.port} failed: certificate verify failed ("), message
        assert "SSL_CERT_FILE" in message and "\n" not in message

    run(main)


def test_certificate_for_another_host_name_fails(serve: Callable[[Handler], TlsServer]) -> None:
    server = serve(lambda tls: None)

    async def main() -> None:
        stream = await tls_client(server.port, "files.example")
        try:
            with pytest.raises(trio.BrokenResourceError) as caught:
                await stream.do_handshake()
        finally:
            await stream.aclose()
        cause = caught.value.__cause__
        assert isinstance(cause, ssl.SSLCertVerificationError), cause
        assert "files.example" in cause.verify_message or "mismatch" in cause.verify_message, cause

    run(main)


def test_server_that_is_not_tls_fails_the_handshake() -> None:
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def plain_http() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.recv(65536)
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=plain_http, daemon=True)
    thread.start()

    async def main() -> None:
        transport = new_transport()
        try:
            with pytest.raises(httpx.ConnectError, match=f"TLS with {LOOPBACK}:{port} failed"):
                await get(transport, f"https://{LOOPBACK}:{port}/")
        finally:
            await transport.aclose()

    try:
        run(main)
    finally:
        thread.join(timeout=5)
        listener.close()


# -- without waiting ------------------------------------------------------------------


def test_receive_nowait_gives_none_until_a_whole_record_is_there(serve: Callable[[Handler], TlsServer]) -> None:
    go = threading.Event()

    def handler(tls: ssl.SSLSocket) -> None:
        if read_head(tls, bytearray()) is not None and go.wait(10):
            tls.sendall(b"hello")
            tls.recv(1)  # until the client leaves

    server = serve(handler)

    async def main() -> None:
        stream = await tls_client(server.port)
        try:
            await stream.do_handshake()
            assert stream.send_nowait(b"GET / HTTP/1.1\r\n\r\n")
            await trio.sleep(0.1)
            assert stream.receive_nowait(100) is None
            go.set()
            got = None
            while got is None:
                await trio.sleep(0.01)
                got = stream.receive_nowait(100)
            assert got == b"hello"
        finally:
            go.set()
            await stream.aclose()

    run(main)


def test_what_send_nowait_cannot_send_goes_first_with_send_all() -> None:
    """A socket that takes only part of the bytes now: the rest is kept, in
    order, ahead of what the next send_all sends."""
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    data = os.urandom(16 * 1024 * 1024)  # more than any socket buffer
    received = bytearray()
    reading = threading.Event()

    def reader() -> None:
        sock, _ = listener.accept()
        with sock:
            reading.wait(10)
            while chunk := sock.recv(1 << 20):
                received.extend(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    async def main() -> None:
        stream = await PlainStream.connect(LOOPBACK, port)
        try:
            assert not stream.send_nowait(data)  # the reader is not reading yet
            assert not stream.send_nowait(b"tail")  # queued behind the rest
            reading.set()
            await stream.send_all(b"!")
        finally:
            await stream.aclose()

    try:
        run(main)
        thread.join(timeout=10)
    finally:
        reading.set()
        listener.close()
    assert bytes(received) == data + b"tail!"


def test_silent_until_the_server_sends_or_closes() -> None:
    """An idle connection is reused only while silent: a server that closed
    it (some proxies do after every answer) would lose the next request."""
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    async def main() -> None:
        streams = [await PlainStream.connect(LOOPBACK, port) for _ in range(2)]
        accepted.extend(listener.accept()[0] for _ in streams)
        try:
            assert all(s.silent() for s in streams)
            accepted[0].sendall(b"x")  # bytes nobody asked for
            accepted[1].close()  # the end of the stream
            for stream in streams:
                with trio.fail_after(5):
                    while stream.silent():
                        await trio.sleep(0.01)
        finally:
            for stream in streams:
                stream.close()

    try:
        run(main)
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


def test_tls_connection_is_not_silent_after_close_notify(serve: Callable[[Handler], TlsServer]) -> None:
    def handler(tls: ssl.SSLSocket) -> None:
        buffer = bytearray()
        if read_head(tls, buffer) is not None:
            answer(tls, b"bye")
            tls.unwrap()

    server = serve(handler)

    async def main() -> None:
        stream = await tls_client(server.port)
        try:
            await stream.do_handshake()
            await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
            got = b""
            while not got.endswith(b"bye"):
                got += await stream.receive_some(65536)
            with trio.fail_after(5):
                while stream.silent():
                    await trio.sleep(0.01)
        finally:
            stream.close()

    run(main)
