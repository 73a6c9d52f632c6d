"""An httpx transport that speaks HTTP/1.1 over sockets in trio, and little else.

A cold read of many small files makes one request per file, and the daemon
has one thread for everything. httpx's own transport (httpcore and h11)
costs about 0.3 ms of CPU per request on our machines, half of what the
daemon spends on a small file; this one does the same job in about a tenth
of that, for the requests cachefs sends in bulk: GET and HEAD without a
body, to http:// and https:// URLs, directly or through an http:// proxy
(`proxies`). Everything else (request bodies, other methods, https://
proxies) goes to httpx's own transport, with the same proxy.

What it does:
- a pool of keep-alive connections per host and port, at most
  `max_connections` in use at once (requests beyond that wait);
- bodies framed by Content-Length, chunked coding, or the end of the
  connection; a connection goes back to the pool only when its response was
  read to the end and neither side asked to close it;
- a request on a reused connection that the server closed while it was idle
  is sent again on a new connection (GET and HEAD are safe to repeat);
- through a proxy: plain-HTTP requests name the absolute URL; HTTPS goes
  through a CONNECT tunnel, with Proxy-Authorization from the proxy URL;
- TLS through `TlsStream` (memory buffers; trio's SSLStream cost more
  than the decryption itself), verified against the same CA bundle httpx
  would use (SSL_CERT_FILE and SSL_CERT_DIR included);
- httpx's timeouts (connect, read, write) and httpx's exceptions, so
  callers cannot tell the two transports apart;
- a request's `Deadline` (extension DEADLINE_EXTENSION), checked whenever
  a socket operation has to wait, headers and interim (1xx) answers
  included: the per-read timeout alone lets a server that trickles a byte
  now and then hold a request forever. An operation the socket can do at
  once (`PlainStream`) neither waits nor pays for a cancel scope.
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import trio

from .proxies import DEFAULT_PORTS, Proxy, ProxyChoice
from .sockstream import PlainStream
from .tlsstream import TlsStream

# Bytes asked of the socket at once: big enough that a fast download costs
# few Python iterations, small enough to keep memory flat.
RECEIVE_SIZE = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
# Bytes received without waiting after which a receive lets other tasks run.
YIELD_EVERY = 1024 * 1024
SIMPLE_METHODS = frozenset({b"GET", b"HEAD"})
# Statuses whose responses never have a body (RFC 9112 section 6.3).
NO_BODY_STATUSES = frozenset({204, 304})
# Interim answers (100 Continue, 103 Early Hints) accepted before the real
# one: a server that sends them without end never answers.
MAX_INTERIM_RESPONSES = 16
# The request extension holding its Deadline, and the response extension
# saying this transport enforced it while the body was read.
DEADLINE_EXTENSION = "cachefs.deadline"
DEADLINE_ENFORCED = "cachefs.deadline_enforced"

# (scheme, host, port, proxy or None): connections are pooled per origin.
Origin = tuple[str, str, int, Proxy | None]
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass
class Deadline:
    """When a request must be done, on trio's clock.

    `at` starts as the request's start plus the request timeout, and each
    byte of body that arrives moves it on by `per_byte` seconds (1 / the
    minimum rate): a big body gets time in proportion, a trickle does not.
    Whoever reads the body calls `earn`; transports only compare against `at`.
    Time spent waiting for a free connection is not the server's doing, and
    is not counted (`paused`). Inside `enforced()`, a cancel scope follows `at`.
    """

    at: float
    per_byte: float = 0.0
    scope: trio.CancelScope | None = None

    def earn(self, nbytes: int) -> None:
        self.extend(nbytes * self.per_byte)

    def extend(self, seconds: float) -> None:
        self.at += seconds
        if self.scope is not None:
            self.scope.deadline = self.at

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count: `at` moves on by as much."""
        started = trio.current_time()
        if self.scope is not None:
            self.scope.deadline = math.inf
        try:
            yield
        finally:
            self.extend(trio.current_time() - started)

    @contextmanager
    def enforced(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that ends what runs in it at `at`, as `at` moves."""
        with trio.CancelScope(deadline=self.at) as scope:
            self.scope = scope
            try:
                yield scope
            finally:
                self.scope = None

    @property
    def passed(self) -> bool:
        return trio.current_time() >= self.at


@dataclass(frozen=True)
class Timeouts:
    """httpx's per-request timeouts, in seconds (inf for none), and our deadline."""

    connect: float
    read: float
    write: float
    deadline: Deadline | None = None

    @classmethod
    def of(cls, request: httpx.Request) -> Timeouts:
        given = request.extensions.get("timeout", {})

        def pick(name: str) -> float:
            value = given.get(name)
            return math.inf if value is None else float(value)

        return cls(pick("connect"), pick("read"), pick("write"), request.extensions.get(DEADLINE_EXTENSION))

    def until(self, seconds: float) -> float:
        """The trio time by which an operation allowed `seconds` must end."""
        at = trio.current_time() + seconds
        return at if self.deadline is None else min(at, self.deadline.at)

    def timed_out(self, what: str) -> str:
        """Why an operation was cut off: its own timeout, or the request's deadline."""
        if self.deadline is not None and self.deadline.passed:
            return f"request deadline passed {what} (server too slow)"
        return f"timed out {what}"


@dataclass
class ResponseHead:
    """A parsed status line and header block."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    chunked: bool
    length: int | None  # Content-Length, if the body is framed by it


class _StaleConnection(Exception):
    """A reused connection turned out to be closed before any answer came."""


class Http11Connection:
    """One socket to an origin, with the bytes received but not yet used.

    Each socket operation is first tried without waiting (`send_nowait`,
    `receive_nowait`); only a wait gets a cancel scope with the operation's
    timeout, which costs more than the rest of the operation.
    """

    def __init__(self, stream: PlainStream | TlsStream, origin: Origin) -> None:
        self.stream = stream
        self.origin = origin
        self.reused = False
        self._buffer = b""
        self._unyielded = 0  # bytes received since this task last let others run

    async def send(self, data: bytes, timeouts: Timeouts) -> None:
        try:
            if self.stream.send_nowait(data):
                return
            with trio.CancelScope(deadline=timeouts.until(timeouts.write)) as scope:
                await self.stream.send_all(b"")  # what send_nowait left
            if scope.cancelled_caught:
                raise httpx.WriteTimeout(timeouts.timed_out("sending the request"))
        except (OSError, trio.BrokenResourceError) as e:
            if self.reused:
                raise _StaleConnection() from e
            raise httpx.WriteError(f"sending the request failed: {e}") from None

    async def _receive(self, timeouts: Timeouts) -> bytes:
        """The next bytes from the socket; b"" at the end of the stream."""
        try:
            data = self.stream.receive_nowait(RECEIVE_SIZE)
            if data is not None:
                self._unyielded += len(data)
                if self._unyielded >= YIELD_EVERY:
                    # A fast server never makes us wait: let the other
                    # tasks (the kernel's requests) run now and then.
                    self._unyielded = 0
                    await trio.lowlevel.checkpoint()
                return data
            self._unyielded = 0
            with trio.CancelScope(deadline=timeouts.until(timeouts.read)) as scope:
                return await self.stream.receive_some(RECEIVE_SIZE)
            raise httpx.ReadTimeout(timeouts.timed_out("waiting for the server"))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise httpx.ReadError(f"receiving failed: {e}") from None

    async def receive_head(self, timeouts: Timeouts, method: bytes) -> ResponseHead:
        """Read up to the end of a final (non-1xx) response's header block."""
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            while (end := self._buffer.find(b"\r\n\r\n")) < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("response header block too long")
                try:
                    data = await self._receive(timeouts)
                except httpx.ReadError:
                    if self.reused and not self._buffer:
                        raise _StaleConnection() from None
                    raise
                if not data:
                    if self.reused and not self._buffer:
                        raise _StaleConnection()
                    raise httpx.RemoteProtocolError("server disconnected without sending a response")
                self._buffer += data
            raw, self._buffer = self._buffer[:end], self._buffer[end + 4:]
            head = parse_head(raw, method)
            if not 100 <= head.status < 200:
                return head
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
        raise httpx.RemoteProtocolError(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) answers")

    async def body(self, head: ResponseHead, timeouts: Timeouts) -> AsyncIterator[bytes]:
        """The response body's bytes, as they arrive; ends at its end."""
        if head.chunked:
            async for piece in self._chunked(timeouts):
                yield piece
        elif head.length is not None:
            async for piece in self._fixed(head.length, timeouts):
                yield piece
        else:
            async for piece in self._until_close(timeouts):
                yield piece

    async def _fixed(self, length: int, timeouts: Timeouts) -> AsyncIterator[bytes]:
        remaining = length
        if self._buffer:
            piece, self._buffer = self._buffer[:remaining], self._buffer[remaining:]
            remaining -= len(piece)
            yield piece
        while remaining:
            data = await self._receive(timeouts)
            if not data:
                raise httpx.RemoteProtocolError(
                    f"server closed the connection {remaining} bytes before the body's end"
                )
            if len(data) > remaining:
                # More than the body: nothing we asked for (no pipelining).
                raise httpx.RemoteProtocolError("server sent more than the Content-Length")
            remaining -= len(data)
            yield data
        if self._buffer:
            raise httpx.RemoteProtocolError("server sent more than the Content-Length")

    async def _until_close(self, timeouts: Timeouts) -> AsyncIterator[bytes]:
        if self._buffer:
            piece, self._buffer = self._buffer, b""
            yield piece
        while data := await self._receive(timeouts):
            yield data

    async def _line(self, timeouts: Timeouts) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("chunked body: line too long")
            data = await self._receive(timeouts)
            if not data:
                raise httpx.RemoteProtocolError("server closed the connection inside a chunked body")
            self._buffer += data
        line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        return line

    async def _chunked(self, timeouts: Timeouts) -> AsyncIterator[bytes]:
        while True:
            size_text = (await self._line(timeouts)).split(b";", 1)[0].strip(b" \t")
            # Hex digits only: int(x, 16) would also take "0x5", "+5" and "-0".
            if _HEX.fullmatch(size_text) is None:
                raise httpx.RemoteProtocolError(f"chunked body: bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while line := await self._line(timeouts):
                    # Trailer fields: nothing we use, but they must be fields.
                    if b":" not in line or line[:1] in b" \t":
                        raise httpx.RemoteProtocolError(f"chunked body: bad trailer line {line[:80]!r}")
                return
            while size:
                if not self._buffer:
                    self._buffer = await self._receive(timeouts)
                    if not self._buffer:
                        raise httpx.RemoteProtocolError("server closed the connection inside a chunk")
                piece, self._buffer = self._buffer[:size], self._buffer[size:]
                size -= len(piece)
                yield piece
            if await self._line(timeouts):
                raise httpx.RemoteProtocolError("chunked body: chunk not followed by CRLF")

    @property
    def clean(self) -> bool:
        """Nothing unread is left over: the connection may carry a new request."""
        return not self._buffer

    async def aclose(self) -> None:
        # At once, without a TLS goodbye: HTTP framing said where the answer ended.
        self.stream.close()


def parse_head(raw: bytes, method: bytes) -> ResponseHead:
    """Parse a status line and headers (without the blank line that ends them)."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(code)
    headers: list[tuple[bytes, bytes]] = []
    keep_alive = version == b"HTTP/1.1"
    chunked = False
    lengths: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or name[:1] in b" \t":
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            lengths.add(value)
        elif lower == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if codings[-1] != b"chunked":
                keep_alive = False  # framed by the end of the connection
            chunked = codings[-1] == b"chunked"
        elif lower == b"connection":
            options = {o.strip().lower() for o in value.split(b",")}
            if b"close" in options:
                keep_alive = False
            elif b"keep-alive" in options and version == b"HTTP/1.0":
                keep_alive = True
    length = None
    if method == b"HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200:
        length = 0
        chunked = False
    elif not chunked and lengths:
        if len(lengths) != 1 or not (only := next(iter(lengths))).isdigit():
            raise httpx.RemoteProtocolError(f"bad Content-Length {sorted(lengths)!r}")
        length = int(only)
    elif not chunked:
        keep_alive = False  # the body runs to the end of the connection
    return ResponseHead(status, reason, headers, keep_alive, chunked, length)


def request_head(request: httpx.Request, proxy: Proxy | None = None) -> bytes:
    """The request line and headers of a body-less request; sent to `proxy`,
    the line names the absolute URL and the proxy's credentials follow."""
    url = request.url
    target = url.raw_path
    if proxy is not None:
        target = f"{url.scheme}://{url.netloc.decode('ascii')}".encode("ascii") + url.raw_path
    parts = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    headers = list(request.headers.raw)
    if proxy is not None and proxy.authorization is not None:
        headers.append((b"Proxy-Authorization", proxy.authorization))
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


class _Body(httpx.AsyncByteStream):
    """A response body; closing it returns its connection to the pool or closes it."""

    def __init__(self, transport: Http11Transport, conn: Http11Connection, head: ResponseHead,
                 timeouts: Timeouts) -> None:
        self._transport = transport
        self._conn: Http11Connection | None = conn
        self._head = head
        self._timeouts = timeouts
        self._finished = head.length == 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        if not self._finished:
            async for piece in conn.body(self._head, self._timeouts):
                yield piece
            self._finished = True

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            reusable = self._finished and self._head.keep_alive and conn.clean
            await self._transport.give_back(conn, reusable)


class Http11Transport(httpx.AsyncBaseTransport):
    """See the module docstring."""

    def __init__(self, fallback: Callable[[Proxy | None], httpx.AsyncBaseTransport],
                 max_connections: int, proxies: ProxyChoice | None = None) -> None:
        """`fallback(proxy)` makes httpx's transport for what this one does not send."""
        self._make_fallback = fallback
        self._fallbacks: dict[Proxy | None, httpx.AsyncBaseTransport] = {}
        self._proxies = proxies or ProxyChoice(None)
        self._slots = trio.Semaphore(max_connections)
        self._idle: dict[Origin, list[Http11Connection]] = {}
        self._tls: ssl.SSLContext | None = None  # made on the first https request
        self.connections_made = 0

    def handles(self, request: httpx.Request) -> bool:
        """Whether this transport (rather than the fallback) sends `request`."""
        return self._sends(request, self._proxies.for_url(request.url))

    @staticmethod
    def _sends(request: httpx.Request, proxy: Proxy | None) -> bool:
        return (request.url.scheme in DEFAULT_PORTS
                and request.method.encode() in SIMPLE_METHODS
                and "content-length" not in request.headers
                and "transfer-encoding" not in request.headers
                and (proxy is None or proxy.url.scheme == "http"))

    def _fallback(self, proxy: Proxy | None) -> httpx.AsyncBaseTransport:
        if proxy not in self._fallbacks:
            self._fallbacks[proxy] = self._make_fallback(proxy)
        return self._fallbacks[proxy]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        proxy = self._proxies.for_url(url)
        if not self._sends(request, proxy):
            return await self._fallback(proxy).handle_async_request(request)
        timeouts = Timeouts.of(request)
        # Through a proxy, plain HTTP names the whole URL; HTTPS is tunnelled.
        head_bytes = request_head(request, proxy if proxy and url.scheme == "http" else None)
        method = request.method.encode()
        origin = (url.scheme, url.host, url.port or DEFAULT_PORTS[url.scheme], proxy)
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if timeouts.deadline is None:
                await self._slots.acquire()
            else:
                with timeouts.deadline.paused():
                    await self._slots.acquire()
        conn: Http11Connection | None = None
        try:
            while True:
                conn = self._idle_connection(origin) or await self._connect(origin, timeouts)
                try:
                    await conn.send(head_bytes, timeouts)
                    head = await conn.receive_head(timeouts, method)
                    break
                except _StaleConnection:
                    await conn.aclose()
                    conn = None  # and again, on a new connection
            return httpx.Response(
                status_code=head.status,
                headers=head.headers,
                stream=_Body(self, conn, head, timeouts),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason,
                            DEADLINE_ENFORCED: timeouts.deadline is not None},
            )
        except BaseException:
            if conn is not None:
                await conn.aclose()
            self._slots.release()
            raise

    def _idle_connection(self, origin: Origin) -> Http11Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out
            if conn.stream.silent():
                conn.reused = True
                return conn
            # The server closed it (some proxies close after every answer
            # they call keep-alive): a request sent on it would be lost.
            conn.stream.close()
        return None

    async def _connect(self, origin: Origin, timeouts: Timeouts) -> Http11Connection:
        scheme, host, port, proxy = origin
        stream: PlainStream | TlsStream | None = None
        try:
            with trio.fail_at(timeouts.until(timeouts.connect)):
                if proxy is None:
                    stream = await PlainStream.connect(host, port)
                else:
                    stream = await PlainStream.connect(proxy.host, proxy.port)
                    if scheme == "https":
                        await _tunnel(stream, proxy, host, port, timeouts)
                if scheme == "https":
                    stream = TlsStream(stream, self._tls_context(), server_hostname=host)
                    await stream.do_handshake()
        except trio.TooSlowError:
            await _close_quietly(stream)
            raise httpx.ConnectTimeout(timeouts.timed_out(f"connecting to {host}:{port}")) from None
        except (OSError, trio.BrokenResourceError, httpx.TransportError) as e:
            await _close_quietly(stream)
            if isinstance(e, httpx.TransportError):
                raise
            if proxy is not None and not isinstance(e, trio.BrokenResourceError):
                detail = e.strerror or e
                raise httpx.ProxyError(f"cannot connect to the proxy {proxy.host}:{proxy.port}: {detail}") from None
            cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) else e
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise httpx.ConnectError(
                    f"TLS with {host}:{port} failed: certificate verify failed ({cause.verify_message});"
                    " a private CA is trusted through SSL_CERT_FILE") from None
            if isinstance(cause, ssl.SSLError):
                raise httpx.ConnectError(f"TLS with {host}:{port} failed: {cause.reason or cause}") from None
            detail = getattr(cause, "strerror", None) or cause
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {detail}") from None
        self.connections_made += 1
        return Http11Connection(stream, origin)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # The CA bundle and settings httpx's own transport would use.
            self._tls = httpx.create_ssl_context(trust_env=True)
        return self._tls

    async def give_back(self, conn: Http11Connection, reusable: bool) -> None:
        """A response is done with `conn`: keep it for the next request, or close it."""
        self._slots.release()
        if reusable:
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            await conn.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()
        fallbacks, self._fallbacks = self._fallbacks, {}
        for transport in fallbacks.values():
            await transport.aclose()


async def _close_quietly(stream: PlainStream | TlsStream | None) -> None:
    if stream is not None:
        stream.close()


async def _tunnel(stream: PlainStream, proxy: Proxy, host: str, port: int, timeouts: Timeouts) -> None:
    """Ask `proxy`, on `stream`, for a tunnel to host:port (CONNECT)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization.decode('ascii')}")
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    conn = Http11Connection(stream, ("http", proxy.host, proxy.port, None))
    head = await conn.receive_head(timeouts, b"CONNECT")
    if not 200 <= head.status < 300:
        raise httpx.ProxyError(f"the proxy {proxy.host}:{proxy.port} refused a tunnel to {authority}: "
                               f"{head.status} {head.reason.decode('latin-1', 'replace')}")
    if not conn.clean:
        raise httpx.ProxyError(f"the proxy {proxy.host}:{proxy.port} sent bytes before the tunnel opened")
