"""A small built-in HTTP store, for machines without nginx.

`BuiltinStore` serves a directory on a free loopback port from a thread of
this process, with what cachefs needs of a plain store and no more: GET and
HEAD, single byte ranges (206, 416), Last-Modified and Content-Length, and
directory listings in the JSON shape of nginx's `autoindex_format json` under
/data/. It has the same `url`, `start()`, `stop()` and context-manager face as
`NginxStore`, so `cachefs bench` can use either. nginx stays the reference:
this one is slower and exists only so that the built-in benchmark runs
anywhere.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.parse
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from cachefs.localstore.nginx import DATA_PREFIX, LOOPBACK

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_COPY_BLOCK = 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    """Answers for one connection; `server.root` is the served directory."""

    # Keep-alive, as nginx does: cachefs reuses connections.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # a benchmark's server must not write a line per request

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not path.startswith(DATA_PREFIX):
            return self._status(HTTPStatus.NOT_FOUND, body)
        rel = path[len(DATA_PREFIX):]
        local = (self.server.root / rel).resolve()
        # Never serve outside the root, whatever '..' the request holds.
        if local != self.server.root and self.server.root not in local.parents:
            return self._status(HTTPStatus.NOT_FOUND, body)
        if local.is_dir():
            if not path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", urllib.parse.quote(path) + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._listing(local, body)
        if local.is_file():
            return self._file(local, body)
        return self._status(HTTPStatus.NOT_FOUND, body)

    def _status(self, status: HTTPStatus, body: bool) -> None:
        text = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def _listing(self, directory: Path, body: bool) -> None:
        items = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            st = entry.stat()
            item = {"name": entry.name, "type": "directory" if entry.is_dir() else "file",
                    "mtime": formatdate(st.st_mtime, usegmt=True)}
            if not entry.is_dir():
                item["size"] = st.st_size
            items.append(item)
        data = json.dumps(items, ensure_ascii=False).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _file(self, local: Path, body: bool) -> None:
        st = local.stat()
        start, end = 0, st.st_size  # [start, end)
        status = HTTPStatus.OK
        wanted = self.headers.get("Range")
        if wanted:
            m = _RANGE.match(wanted.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                return self._status(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, body)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, st.st_size) if m.group(2) else st.st_size
            else:  # suffix range: the last N bytes
                start = max(st.st_size - int(m.group(2)), 0)
            if start >= st.st_size or start >= end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{st.st_size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{st.st_size}")
        self.end_headers()
        if body:
            with open(local, "rb") as f:
                f.seek(start)
                remaining = end - start
                while remaining > 0:
                    block = f.read(min(_COPY_BLOCK, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive
    root: Path


class BuiltinStore:
    """A threaded HTTP server serving `root` under /data/ on a free loopback port."""

    def __init__(self, root: Path, workdir: Path | None = None) -> None:
        """`workdir` is accepted for symmetry with NginxStore; nothing is written there."""
        self.root = Path(root).resolve()
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{DATA_PREFIX}"

    @property
    def pid(self) -> int | None:
        """None: the server is a thread of this process, there is nothing to kill."""
        return None

    def start(self) -> BuiltinStore:
        server = _Server((LOOPBACK, 0), _Handler)
        server.root = self.root
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="cachefs-http",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BuiltinStore:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["BuiltinStore"]
