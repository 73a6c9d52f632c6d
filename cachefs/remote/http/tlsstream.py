"""TLS over a socket in trio (`PlainStream`), driven through memory buffers (`ssl.MemoryBIO`).

trio's own SSLStream hands back at most one TLS record (16 KiB) per
`receive_some`, each through its locks and retry loop: on an HTTPS download
that machinery cost the daemon about ten times the decryption itself. Here
one `receive_some` decrypts every whole record the socket has delivered, up
to the size asked for, so a fast body costs a few Python calls per 256 KiB
instead of per 16 KiB.

Like `PlainStream`, it can be used without waiting (`receive_nowait`,
`send_nowait`): what the socket holds already needs no trip through trio's
scheduler and no cancel scope.

It is meant for one request at a time on a connection, as the HTTP/1.1
transport uses it: sending and receiving never overlap, so there are no
locks. Certificates are checked by the `ssl.SSLContext` given (hostname
and chain, with SNI), exactly as `SSLContext.wrap_socket` would.

End of stream: the peer's close_notify, or the connection simply ending
without one (what HTTPS clients accept, as trio's SSLStream does with
`https_compatible=True`), reads as b"" once every whole record is read.
HTTP framing (Content-Length, chunked coding) is what tells a whole body
from a cut one. Anything TLS rejects (a certificate, a bad record) is
`trio.BrokenResourceError` with the `ssl` error as its cause.
"""

from __future__ import annotations

import ssl
import threading

import trio

from .sockstream import PlainStream

# Ciphertext asked of the socket at once. TLS records carry at most 16 KiB
# of plaintext, so one read holds up to 16 of them.
RAW_RECEIVE_SIZE = 256 * 1024
DEFAULT_RECEIVE_SIZE = 256 * 1024

# Where records are decrypted before they are copied out, one per thread:
# a decryption never awaits, so every connection of a thread can share it
# (one per connection would cost up to 256 KiB of memory each).
_scratch = threading.local()


class TlsStream(trio.abc.Stream):
    """A client TLS session over `transport` (a connected socket).

    Call `do_handshake()` first. Not safe for concurrent use by two tasks.
    """

    def __init__(self, transport: PlainStream, context: ssl.SSLContext, server_hostname: str) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                     server_hostname=server_hostname)
        self._eof = False  # the peer's side has ended: only b"" from now on

    async def do_handshake(self) -> None:
        """Negotiate and verify; the certificate errors are `ssl`'s, as the
        cause of a BrokenResourceError."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("the server closed the connection during the TLS handshake")
            except ssl.SSLError as e:
                await self._flush_quietly()  # the alert saying why, if any
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
        await self._flush()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                written = self._tls.write(view)
            except ssl.SSLWantReadError:
                # Only during a renegotiation: the peer must answer first.
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("the server closed the connection") from None
                continue
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS failed: {e}") from e
            view = view[written:]
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The plaintext of every whole record received so far (at most
        `max_bytes`), waiting for the socket only when there is none."""
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else max_bytes
        while True:
            data = self._decrypt(size)
            if data or self._eof:
                return data
            if self._outgoing.pending:
                await self._flush()  # e.g. an answer to a key update
            if not await self._fill():
                # Every whole record was read above: what is left, if
                # anything, is a record cut short, which HTTPS clients read
                # as the end too (the HTTP framing tells).
                self._eof = True
                return b""

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Plaintext from what the socket has already received (b"" at the
        end of the stream), or None if that holds no whole record."""
        data = self._decrypt(max_bytes)
        if data or self._eof:
            return data
        if self._outgoing.pending:
            return None  # receive_some sends it first
        raw = self.transport.receive_nowait(RAW_RECEIVE_SIZE)
        if raw is None:
            return None
        if not raw:
            self._incoming.write_eof()
            self._eof = True
            return b""
        self._incoming.write(raw)
        data = self._decrypt(max_bytes)
        return data if data or self._eof else None

    def send_nowait(self, data: bytes) -> bool:
        """Encrypt `data` and send what the socket takes now; True if that
        was all of it, else the rest goes first with the next `send_all`."""
        try:
            self._tls.write(data)
        except ssl.SSLWantReadError:
            raise trio.BrokenResourceError("TLS renegotiation is not supported") from None
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS failed: {e}") from e
        return self.transport.send_nowait(self._outgoing.read())

    def _decrypt(self, size: int) -> bytes:
        """Every whole record received so far, decrypted (at most `size`
        bytes); b"" if none, or at the end of the stream (then `_eof`)."""
        if size < 1:
            raise ValueError("max_bytes must be at least 1")
        scratch = getattr(_scratch, "buffer", None)
        if scratch is None or size > len(scratch):
            scratch = _scratch.buffer = bytearray(max(size, DEFAULT_RECEIVE_SIZE))
        view = memoryview(scratch)
        incoming, tls = self._incoming, self._tls
        got = 0
        try:
            # Only while received bytes are left: a read without any costs
            # an exception (SSLWantReadError).
            while got < size and (incoming.pending or tls.pending()):
                n = tls.read(size - got, view[got:])
                if not n:  # the peer's close_notify
                    self._eof = True
                    break
                got += n
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # close_notify, or the connection ended without one.
            self._eof = True
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS failed: {e}") from e
        return bytes(view[:got]) if got else b""

    async def _fill(self) -> bool:
        """Move received ciphertext into the TLS session; False at the end of the stream."""
        data = await self.transport.receive_some(RAW_RECEIVE_SIZE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await self.transport.send_all(self._outgoing.read())

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def silent(self) -> bool:
        """Whether nothing at all has arrived since the last receive (see
        PlainStream.silent); a close_notify is something."""
        return not (self._eof or self._incoming.pending or self._tls.pending()) and self.transport.silent()

    def close(self) -> None:
        """Close the socket now, without a close_notify (see aclose)."""
        self._eof = True
        self.transport.close()

    async def aclose(self) -> None:
        """Close the socket without a close_notify: HTTP/1.1 framing, not
        TLS, says where a response ends, so nothing waits for one."""
        self._eof = True
        await self.transport.aclose()
