"""A scripted hostile HTTP server for tests, on loopback only.

Each path is given a `Script`: what the server answers there. Paths not
scripted get a 404. The behaviours are the ones a careless client cannot
survive:

| Behaviour | what the client gets |
|---|---|
| STATIC | a normal answer: status, headers, body (HEAD: no body) |
| REDIRECT_LOOP | `302` with `Location:` the same path, forever |
| TRICKLE_BODY | the headers at once, then the body one byte every `interval_s` |
| TRICKLE_HEADERS | the status line and headers one byte every `interval_s` |
| ENDLESS_CONTINUE | `100 Continue` interim answers every `interval_s`, never a final one |
| ENDLESS_LISTING | an HTML index page of `<a href>` rows that never ends |

HEAD requests on TRICKLE_* and ENDLESS_CONTINUE paths get the body's
headers at once, so a client can stat what it later fails to read.

The server runs in threads of the test process (`with HostileServer(...) as
s`), binds 127.0.0.1 only, and `stop()` ends every trickle at once.
"""

from __future__ import annotations

import email.utils
import enum
import itertools
import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field

# A fixed Last-Modified for every answer, so listings and HEADs agree.
MTIME = 1_700_000_000.0
REQUEST_TIMEOUT_S = 30.0
MAX_REQUEST_HEAD = 64 * 1024


class Behaviour(enum.Enum):
    STATIC = "static"
    REDIRECT_LOOP = "redirect_loop"
    TRICKLE_BODY = "trickle_body"
    TRICKLE_HEADERS = "trickle_headers"
    ENDLESS_CONTINUE = "endless_continue"
    ENDLESS_LISTING = "endless_listing"


@dataclass(frozen=True)
class Script:
    behaviour: Behaviour
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    interval_s: float = 0.5


def static(body: bytes, content_type: str = "application/octet-stream", **headers: str) -> Script:
    return Script(Behaviour.STATIC, body, headers={"Content-Type": content_type, **headers})


def json_index(entries: list[dict[str, object]]) -> Script:
    """An nginx-style JSON index page listing `entries` (name, type, size...)."""
    mtime = email.utils.formatdate(MTIME, usegmt=True)
    rows = [{"type": "file", "mtime": mtime, **e} for e in entries]
    return static(json.dumps(rows).encode(), "application/json")


class HostileServer:
    """See the module docstring. `scripts` maps paths ("/data/x") to scripts."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = dict(scripts)
        self.requests: list[tuple[str, str]] = []  # (method, path) as received
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hostile = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, p in self.requests if p == path)

    def start(self) -> HostileServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self, seconds: float) -> bool:
        """Wait; False once the server is stopping."""
        return not self._stopping.wait(seconds)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # clients open many connections at once
    hostile: HostileServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients giving up mid-answer is the point here


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(REQUEST_TIMEOUT_S)
        buffer = b""
        try:
            while True:  # keep-alive: one request after another
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data or len(buffer) > MAX_REQUEST_HEAD:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
                path = target.split("?", 1)[0]
                self.server.hostile._record(method, path)
                if not self._answer(sock, method, path):
                    return
        except OSError:
            return

    def _answer(self, sock: socket.socket, method: str, path: str) -> bool:
        """Answer one request; False when the connection must end."""
        hostile = self.server.hostile
        script = hostile.scripts.get(path)
        if script is None:
            sock.sendall(_head(404, {"Content-Length": "0"}))
            return True
        kind = script.behaviour
        body_headers = {
            "Content-Length": str(len(script.body)),
            "Last-Modified": email.utils.formatdate(MTIME, usegmt=True),
            **script.headers,
        }
        if kind is Behaviour.STATIC or (method == "HEAD" and kind in (
                Behaviour.TRICKLE_BODY, Behaviour.TRICKLE_HEADERS, Behaviour.ENDLESS_CONTINUE)):
            sock.sendall(_head(script.status, body_headers) + (b"" if method == "HEAD" else script.body))
            return True
        if kind is Behaviour.REDIRECT_LOOP:
            sock.sendall(_head(302, {"Location": path, "Content-Length": "0"}))
            return True
        if kind is Behaviour.TRICKLE_BODY:
            sock.sendall(_head(script.status, body_headers))
            _trickle(hostile, sock, script.body, script.interval_s)
            return False
        if kind is Behaviour.TRICKLE_HEADERS:
            _trickle(hostile, sock, _head(script.status, body_headers) + script.body, script.interval_s)
            return False
        if kind is Behaviour.ENDLESS_CONTINUE:
            while hostile.pause(script.interval_s):
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        if kind is Behaviour.ENDLESS_LISTING:
            sock.sendall(_head(script.status, {"Content-Type": "text/html", "Connection": "close"}))
            sock.sendall(b"<html><body><pre>\r\n")
            for n in itertools.count():
                if hostile._stopping.is_set():
                    break
                rows = b"".join(
                    b'<a href="file%d">file%d</a>  21-Nov-2026 06:29  5\r\n' % (i, i)
                    for i in range(n * 1000, n * 1000 + 1000)
                )
                sock.sendall(rows)
            return False
        raise AssertionError(f"unknown behaviour {kind}")


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _trickle(hostile: HostileServer, sock: socket.socket, data: bytes, interval_s: float) -> None:
    for i in range(len(data)):
        if not hostile.pause(interval_s):
            return
        sock.sendall(data[i : i + 1])
