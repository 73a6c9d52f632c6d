"""A scripted HTTP origin whose objects change when a test says so.

Serves one flat directory, listed as nginx's `autoindex_format json` does,
from objects held in memory. What nginx never does is configurable per
server: which validators answers carry (ETag, Last-Modified, neither),
whether If-Match / If-Range are honoured, what the listing claims an
object's size is, whether Content-Range gives the total or "*", whether a
range comes with status 206 or 200, and whether Range is heeded at all.

Loopback only; runs in a thread of the test process (`with VersionServer()`).
"""

from __future__ import annotations

import email.utils
import http.server
import json
import re
import socketserver
import threading
from dataclasses import dataclass, field

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Version:
    data: bytes
    mtime: int
    etag: str | None = None  # with its quotes; None: no ETag


@dataclass
class ServerConfig:
    etag: bool = True
    last_modified: bool = True
    honour_preconditions: bool = True
    star_total: bool = False  # Content-Range "bytes a-b/*"
    # The status of a range answer: 200 is what `rclone serve s3` sends,
    # with the Content-Range of the range asked.
    range_status: int = 206
    ignore_range: bool = False  # every GET gets the whole object, 200
    # name -> the size the listing claims (instead of the true one)
    listed_size: dict[str, int] = field(default_factory=dict)


class VersionServer:
    def __init__(self, config: ServerConfig | None = None, *, port: int = 0) -> None:
        """`port` 0 picks a free one; a fixed port keeps the source (and so the
        cache folder) the same across servers."""
        self.config = config or ServerConfig()
        self.objects: dict[str, Version] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def put(self, name: str, data: bytes, mtime: int, etag: str | None = None) -> None:
        """Replace `name` at once, as `mv` over it would."""
        with self.lock:
            self.objects[name] = Version(data, mtime, etag)

    def ranged_gets(self, name: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for m, p, h in self.requests if m == "GET" and p == "/" + name and "range" in h]

    def __enter__(self) -> VersionServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="versionserver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: VersionServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        config = owner.config
        headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            owner.requests.append((self.command, self.path, headers))
            objects = dict(owner.objects)
        if self.path == "/":
            listing = [{"name": name, "type": "file", "mtime": email.utils.formatdate(v.mtime, usegmt=True),
                        "size": config.listed_size.get(name, len(v.data))} for name, v in sorted(objects.items())]
            self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), head)
            return
        version = objects.get(self.path.lstrip("/"))
        if version is None:
            self._send(404, {}, b"not found\n", head)
            return
        validators = {}
        if config.etag and version.etag:
            validators["ETag"] = version.etag
        if config.last_modified:
            validators["Last-Modified"] = email.utils.formatdate(version.mtime, usegmt=True)
        data = version.data
        if config.honour_preconditions:
            if_match = headers.get("if-match")
            etag = validators.get("ETag", "")
            # Strong comparison (RFC 9110 13.1.1): a weak ETag never matches.
            if if_match is not None and (if_match != etag or etag.startswith("W/")):
                self._send(412, {}, b"precondition failed\n", head)
                return
        wanted = None if config.ignore_range else _RANGE.match(headers.get("range", ""))
        if_range = headers.get("if-range")
        strong_etag = validators.get("ETag") if not validators.get("ETag", "").startswith("W/") else None
        if wanted and config.honour_preconditions and if_range is not None and if_range not in (
                strong_etag, validators.get("Last-Modified")):
            wanted = None  # the whole object, as RFC 9110 13.1.5 says
        if not wanted:
            self._send(200, validators, data, head)
            return
        first = int(wanted[1])
        last = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
        if first >= len(data):
            self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
            return
        total = "*" if config.star_total else str(len(data))
        self._send(config.range_status, {**validators, "Content-Range": f"bytes {first}-{last}/{total}"},
                   data[first:last + 1], head)

    def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
        self.send_response_only(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
