"""A fault-injecting HTTP forward proxy for tests, on loopback only.

cachefs mounts with `--proxy http://127.0.0.1:PORT`; its HTTP remote then
sends absolute-URI requests (`GET http://127.0.0.1:NGINX/data/x HTTP/1.1`)
here, and each is forwarded to the (loopback) origin, nginx in the tests.
While `enabled`, a seeded RNG decides for each request whether to break it,
and how:

| kind | what the client sees | applies to |
|---|---|---|
| reset | headers and part of the body, then a TCP RST (SO_LINGER 0) | GET |
| cut_short | headers with the full Content-Length, part of the body, then FIN | GET |
| short_length | a Content-Length smaller than the range, and that many bytes: a "complete" short answer | ranged GET |
| stall | nothing (or part of the body) for `stall_s`, longer than the client's read timeout, then FIN | GET, HEAD (at most `max_stalls`) |
| status_5xx | a burst of 1-4 consecutive 500/503 answers (each answer is counted) | GET, HEAD |
| wrong_range | another range than the one asked for: shifted bytes under their true Content-Range, a wrong total in Content-Range, or a 200 with the whole object | ranged GET |
| version_change | Last-Modified an hour later, another ETag, and different bytes (each byte inverted), as if the object was rewritten between two chunk requests | ranged GET |
| same_minute | new bytes (inverted) of the same size, Last-Modified a few seconds off within the same minute, and the ETag nginx would give that time: `cp v1 .t && mv .t file` within a minute, on a server that ignores If-Match/If-Range | ranged GET pinned by If-Match or If-Range |
| etag_only | new bytes (inverted) and another ETag, the same Last-Modified, on a server that ignores If-Match/If-Range | ranged GET pinned by If-Match or If-Range |

The last two are injected only into requests whose If-Match or If-Range
shows the client already took bytes of a version: without it a
same-minute, same-size change looks like the object's first version, and
no client could tell.

Every fault is one a correct client can detect: none of them hands over
wrong bytes under headers that claim them right (that would be undetectable
without checksums, which HTTP index servers do not give). `counts` holds the
faults injected by kind; `details` the sub-variants.

The proxy runs in threads of the test process (`with FaultProxy(...) as p`),
binds 127.0.0.1 only, and refuses to forward anywhere but loopback.
"""

from __future__ import annotations

import collections
import email.utils
import http.client
import http.server
import random
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PIECE = 64 * 1024
UPSTREAM_TIMEOUT_S = 60.0
# Hop-by-hop headers (RFC 9110 7.6.1) and proxy credentials are not forwarded.
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authorization",
    "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
})
KINDS = ("reset", "cut_short", "short_length", "stall", "status_5xx", "wrong_range", "version_change",
         "same_minute", "etag_only")
# Kinds that change the object under a client that pinned its version.
PINNED_KINDS = frozenset({"same_minute", "etag_only"})
# Default probabilities per eligible request (their sum is the chance that a
# request is broken at all). Stalls are rare and capped: each costs the
# client's whole read timeout.
DEFAULT_RATES = {
    "reset": 0.07,
    "cut_short": 0.07,
    "short_length": 0.05,
    "stall": 0.01,
    "status_5xx": 0.06,
    "wrong_range": 0.06,
    "version_change": 0.06,
    "same_minute": 0.05,
    "etag_only": 0.05,
}
BURST_MAX = 4
VERSION_SHIFT_S = 3600


@dataclass
class FaultConfig:
    seed: int = 0
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    # How long a stalled answer stays silent; must exceed the client's read timeout.
    stall_s: float = 31.0
    max_stalls: int = 2


class _Aborted(Exception):
    """The handler broke the connection on purpose; nothing more to send."""


class FaultProxy:
    """See the module docstring. `enabled` may be flipped at any time."""

    def __init__(self, config: FaultConfig | None = None, *, enabled: bool = True) -> None:
        self.config = config or FaultConfig()
        unknown = set(self.config.rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.enabled = enabled
        self.counts: collections.Counter[str] = collections.Counter()
        self.details: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.bursts = 0
        # Proxy-Authorization values received (a test checks credentials are used).
        self.proxy_auth_seen: set[str] = set()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._burst_left = 0
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends stalls early
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {self.counts[k]}" for k in KINDS if self.counts[k])
        return f"{self.total} faults in {self.requests} requests ({kinds}); {self.bursts} bursts"

    # -- decisions (under the lock: handler threads share the RNG) --

    def _decide(self, method: str, ranged: bool, pinned: bool = False) -> tuple[str | None, random.Random]:
        """The fault for one request, and a private RNG seeded from the shared one."""
        with self._lock:
            self.requests += 1
            local = random.Random(self._rng.getrandbits(64))
            if not self.enabled:
                return None, local
            if self._burst_left:
                self._burst_left -= 1
                self.counts["status_5xx"] += 1
                return "status_5xx", local
            eligible = {"status_5xx", "stall"} if method == "HEAD" else {
                "reset", "cut_short", "stall", "status_5xx"}
            if method == "GET" and ranged:
                eligible |= {"short_length", "wrong_range", "version_change"}
                if pinned:
                    eligible |= PINNED_KINDS
            if self.counts["stall"] >= self.config.max_stalls:
                eligible.discard("stall")
            roll = self._rng.random()
            for kind in KINDS:
                rate = self.config.rates.get(kind, 0.0)
                if roll < rate:
                    if kind not in eligible:
                        return None, local
                    if kind == "status_5xx":
                        self.bursts += 1
                        self._burst_left = self._rng.randint(1, BURST_MAX) - 1
                    self.counts[kind] += 1
                    return kind, local
                roll -= rate
            return None, local

    def _detail(self, name: str) -> None:
        with self._lock:
            self.details[name] += 1

    def stall(self) -> None:
        self._stopping.wait(self.config.stall_s)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients vanishing mid-answer is the point here


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy("GET")

    def do_HEAD(self) -> None:
        self._proxy("HEAD")

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    # -- plumbing --

    def _proxy(self, method: str) -> None:
        proxy = self.server.proxy
        auth = self.headers.get("Proxy-Authorization")
        if auth:
            with proxy._lock:
                proxy.proxy_auth_seen.add(auth)
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname not in LOOPBACK_HOSTS:
            self._plain(502, b"faultproxy forwards to loopback http only\n")
            return
        names = {k.lower() for k in self.headers}
        kind, rng = proxy._decide(method, "range" in names, bool(names & {"if-match", "if-range"}))
        try:
            if kind == "status_5xx":
                self._plain(rng.choice((500, 503)), b"injected failure\n")
                return
            if kind == "stall" and (method == "HEAD" or rng.random() < 0.5):
                proxy._detail("stall/before-headers")
                proxy.stall()
                self.close_connection = True
                return
            self._forward(method, target, kind, rng)
        except _Aborted:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _upstream(self, method: str, target, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=UPSTREAM_TIMEOUT_S)
        path = target.path + (f"?{target.query}" if target.query else "")
        conn.request(method, path, headers=headers)
        return conn, conn.getresponse()

    def _forward(self, method: str, target, kind: str | None, rng: random.Random) -> None:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Connection"] = "close"
        asked = _parse_range(headers.get("Range") or headers.get("range"))
        if kind in PINNED_KINDS:
            # A server that ignores preconditions: the change shows only
            # in the answer's validators.
            headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-range")}
        extra_headers: dict[str, str] = {}
        transform = None
        if kind == "wrong_range" and asked is not None:
            variant = rng.choice(("shifted", "total", "whole"))
            proxy._detail(f"wrong_range/{variant}")
            start, end = asked
            if variant == "shifted":
                delta = rng.randint(1, 4096)
                headers = _with_range(headers, start + delta, end + delta)
            elif variant == "whole" and start > 0:
                headers = {k: v for k, v in headers.items() if k.lower() != "range"}
            else:
                variant = "total"
        conn, resp = self._upstream(method, target, headers)
        try:
            status = resp.status
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS]
            length_text = resp.getheader("Content-Length")
            if method == "HEAD":
                body_len = 0
                body_source = None
            elif length_text is None:
                data = resp.read()  # a chunked listing: small, send it whole
                body_len = len(data)
                body_source = iter([data])
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
                out_headers.append(("Content-Length", str(body_len)))
            else:
                body_len = int(length_text)
                body_source = _pieces(resp)
            if kind == "wrong_range" and status == 206 and variant == "total":
                out_headers = [_bump_total(k, v) for k, v in out_headers]
            if kind == "version_change" and status == 206:
                out_headers = [(k, v) for k, v in out_headers if k.lower() not in ("last-modified", "etag")]
                lm = resp.getheader("Last-Modified")
                when = email.utils.parsedate_to_datetime(lm).timestamp() if lm else time.time()
                out_headers.append(("Last-Modified", email.utils.formatdate(when + VERSION_SHIFT_S, usegmt=True)))
                out_headers.append(("ETag", f'"changed-{rng.getrandbits(32):08x}"'))
                transform = _invert
            if kind in PINNED_KINDS and status == 206:
                out_headers, variant = _rewritten(kind, out_headers, rng)
                proxy._detail(f"{kind}/{variant}")
                transform = _invert
            cut = None
            if kind in ("reset", "cut_short", "short_length", "stall") and method == "GET":
                cut = rng.randrange(body_len) if body_len else 0
            if kind == "short_length" and cut is not None:
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
                out_headers.append(("Content-Length", str(cut)))
            self.send_response_only(status)
            for k, v in out_headers:
                self.send_header(k, v)
            self.send_header("Connection", "close" if cut is not None else "keep-alive")
            self.end_headers()
            if body_source is None:
                return
            sent = 0
            for piece in body_source:
                if transform is not None:
                    piece = transform(piece)
                if cut is not None and sent + len(piece) >= cut:
                    self.wfile.write(piece[: cut - sent])
                    sent = cut
                    break
                self.wfile.write(piece)
                sent += len(piece)
            if cut is None:
                return
            self.wfile.flush()
            if kind == "reset":
                self._reset()
            elif kind == "stall":
                proxy._detail("stall/mid-body")
                proxy.stall()
                raise _Aborted
            elif kind == "cut_short":
                raise _Aborted
            else:  # short_length: the answer is complete as sent
                self.close_connection = True
        finally:
            conn.close()

    def _reset(self) -> None:
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        raise _Aborted


def _rewritten(kind: str, headers: list[tuple[str, str]], rng: random.Random) -> tuple[list[tuple[str, str]], str]:
    """The headers of a same-size rewrite of the object: `same_minute` moves
    Last-Modified within its minute (and the ETag with it, as nginx makes it
    from mtime and size); `etag_only` changes just the ETag."""
    found = {k.lower(): v for k, v in headers}
    lm = found.get("last-modified")
    etag = found.get("etag")
    kept = [(k, v) for k, v in headers if k.lower() not in ("last-modified", "etag")]
    total = found.get("content-range", "").rpartition("/")[2]
    if kind == "etag_only":
        if lm:
            kept.append(("Last-Modified", lm))
        kept.append(("ETag", f'"rewritten-{rng.getrandbits(32):08x}"'))
        return kept, "etag" if etag else "etag-added"
    when = int(email.utils.parsedate_to_datetime(lm).timestamp()) if lm else int(time.time())
    second = when % 60
    # Another second of the same minute.
    moved = when - second + rng.choice([s for s in range(60) if s != second])
    kept.append(("Last-Modified", email.utils.formatdate(moved, usegmt=True)))
    if etag or not lm:
        size = int(total) if total.isdigit() else 0
        kept.append(("ETag", f'"{moved:x}-{size:x}"'))
    return kept, "lm-and-etag" if etag else "lm"


def _pieces(resp: http.client.HTTPResponse):
    while piece := resp.read(PIECE):
        yield piece


def _invert(piece: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in piece) if len(piece) < 4096 else (
        int.from_bytes(piece, "little") ^ ((1 << (8 * len(piece))) - 1)).to_bytes(len(piece), "little")


def _parse_range(value: str | None) -> tuple[int, int] | None:
    """[start, end) of a single 'bytes=a-b' range."""
    if not value or not value.startswith("bytes="):
        return None
    first, _, last = value[6:].partition("-")
    if not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last) + 1


def _with_range(headers: dict[str, str], start: int, end: int) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() != "range"}
    out["Range"] = f"bytes={start}-{end - 1}"
    return out


def _bump_total(name: str, value: str) -> tuple[str, str]:
    if name.lower() != "content-range" or "/" not in value:
        return name, value
    head, _, total = value.rpartition("/")
    return name, f"{head}/{int(total) + 1}" if total.isdigit() else value
