"""A CONNECT-only HTTP proxy on loopback, for HTTPS through a proxy.

Clients ask `CONNECT host:port HTTP/1.1`; the proxy opens that connection
and copies bytes both ways until either side closes. With `credentials`
set, a tunnel needs the matching Proxy-Authorization (407 otherwise).
`tunnels` counts the tunnels opened, `refused` the requests refused.
"""

from __future__ import annotations

import base64
import socket
import threading
from types import TracebackType

LOOPBACK = "127.0.0.1"
PIECE = 256 * 1024


class TunnelProxy:
    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.tunnels = 0
        self.refused = 0
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closing = False

    @property
    def url(self) -> str:
        if self.credentials:
            return f"http://{self.credentials[0]}:{self.credentials[1]}@{LOOPBACK}:{self.port}"
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> TunnelProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing = True
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if method != "CONNECT":
                self.refused += 1
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            if self.credentials:
                token = base64.b64encode(":".join(self.credentials).encode()).decode()
                if headers.get("proxy-authorization") != f"Basic {token}":
                    self.refused += 1
                    client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                   b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
                    return
            host, _, port = target.rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels += 1
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.settimeout(None)
            with upstream:
                back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
                back.start()
                _copy(client, upstream)
                back.join()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from `source` to `sink` until `source` ends; then end `sink`'s side."""
    try:
        while data := source.recv(PIECE):
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
