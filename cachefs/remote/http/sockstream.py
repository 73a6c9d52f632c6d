"""A TCP connection for the HTTP/1.1 transport, that can also be used without waiting.

trio's SocketStream makes every call a checkpoint (a trip through the
scheduler), and the transport puts each wait under a cancel scope with a
deadline: together about 30 µs per call on our machines, paid even when
the bytes are already there or the socket can take them at once, which is
most of the time (a request head always fits; a response often arrived
whole). `PlainStream` adds `receive_nowait` and `send_nowait`, which never
wait; the transport tries them first and only waits, under its timeouts,
when they cannot do the job. The async methods are trio's usual Stream.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import trio


class PlainStream(trio.abc.Stream):
    """A connected, non-blocking TCP socket. Not safe for concurrent use by
    two tasks in the same direction."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._unsent = b""  # what send_nowait could not send yet

    @classmethod
    async def connect(cls, host: str, port: int) -> PlainStream:
        """Connect as trio does (every address of `host`, Happy Eyeballs),
        with TCP_NODELAY; straight to an IP address given as one."""
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            return await cls._connect_by_name(host, port)
        # A server that closes after each answer (HTTP/1.0, some proxies)
        # costs a connection per request: trio's general way took 2.5 times
        # the CPU of this one.
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.connect((host, port))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    async def _connect_by_name(cls, host: str, port: int) -> PlainStream:
        stream = await trio.open_tcp_stream(host, port)
        try:
            fd = stream.socket.detach()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return cls(socket.socket(fileno=fd))

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Bytes already received (b"" at the end of the stream), or None if none yet."""
        try:
            return self.socket.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = 65536 if max_bytes is None else max_bytes
        while (data := self.receive_nowait(size)) is None:
            await trio.lowlevel.wait_readable(self.socket)
        return data

    def send_nowait(self, data: bytes) -> bool:
        """Send what the socket takes now; True if that was all of it, else
        the rest goes first with the next `send_all`."""
        if self._unsent:
            self._unsent += data
            return False
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return True
        self._unsent = data[sent:]
        return False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(self._unsent + bytes(data)) if self._unsent else memoryview(data)
        self._unsent = b""
        while view:
            try:
                sent = self.socket.send(view)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_writable(self.socket)
                continue
            view = view[sent:]
        await trio.lowlevel.checkpoint_if_cancelled()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    def silent(self) -> bool:
        """Whether nothing at all has arrived: no bytes, no end of stream.
        An idle HTTP/1.1 connection must be silent; one whose server has
        closed it is not, and is not worth a request."""
        try:
            self.socket.recv(1, socket.MSG_PEEK)  # b"" at the end of the stream
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            pass
        return False

    def close(self) -> None:
        """Close now; nothing to wait for."""
        if self.socket.fileno() >= 0:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
