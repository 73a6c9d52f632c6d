"""The /dev/fuse channel's I/O loop, on a socketpair in place of the device.

A SOCK_SEQPACKET socket keeps message boundaries as /dev/fuse does: one
read is one request, one writev one reply. The far end plays the kernel.
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from cachefs.kernel import DevFuseChannel, Session
from cachefs.kernel import wire
from cachefs.kernel.channel import READ_BUFFER
from cachefs.kernel.passthrough import BackingFiles
from cachefs.kernel.wire import ROOT_ID, Opcode
from fake_kernel import init_in, parse_attr_out, parse_init_out

from test_session import ScriptedFs


def request(opcode: Opcode, unique: int, nodeid: int = ROOT_ID, body: bytes = b"") -> bytes:
    return wire.IN_HEADER.pack(wire.IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0) + body


@pytest.fixture
def pair():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield ours, kernel
    ours.close()
    kernel.close()


def test_each_read_is_one_request_until_the_handler_says_stop(pair) -> None:
    ours, kernel = pair
    seen: list[bytes] = []

    def handle(buf: bytes) -> bool:
        seen.append(buf)
        return len(seen) < 3

    async def main() -> None:
        channel = DevFuseChannel(ours.fileno())
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.serve, handle)
                await trio.sleep(0.01)  # the loop waits for the descriptor
                for i in range(4):
                    kernel.send(bytes([i]) * (100 + i))
        # The fourth stays unread: the handler ended the loop at the third.
        assert seen == [bytes([i]) * (100 + i) for i in range(3)]

    trio.run(main)


def test_a_request_as_large_as_the_negotiated_maximum_fits(pair) -> None:
    ours, kernel = pair
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * READ_BUFFER)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * READ_BUFFER)
    big = b"x" * (READ_BUFFER - 4096)
    seen: list[int] = []

    async def main() -> None:
        kernel.send(big)
        with trio.fail_after(10):
            await DevFuseChannel(ours.fileno()).serve(lambda buf: seen.append(len(buf)) and False)
        assert seen == [len(big)]

    trio.run(main)


def test_the_loop_ends_when_the_other_end_is_gone(pair) -> None:
    ours, kernel = pair

    async def main() -> None:
        kernel.send(b"one")
        kernel.shutdown(socket.SHUT_WR)
        seen: list[bytes] = []
        with trio.fail_after(10):
            await DevFuseChannel(ours.fileno()).serve(lambda buf: seen.append(buf) or True)
        assert seen == [b"one"]

    trio.run(main)


def test_replies_and_notifications_are_one_message_each(pair, caplog: pytest.LogCaptureFixture) -> None:
    ours, kernel = pair
    channel = DevFuseChannel(ours.fileno())
    channel.reply([b"head", memoryview(b"-body")])
    channel.notify([b"note"])
    assert kernel.recv(100) == b"head-body"
    assert kernel.recv(100) == b"note"
    assert isinstance(channel.backing_files(), BackingFiles)
    kernel.close()
    # A notification the kernel cannot take is logged, never raised (it runs
    # in a worker thread); a reply that fails otherwise than ENOENT/ENODEV raises.
    with caplog.at_level(logging.WARNING, logger="cachefs.kernel.channel"):
        channel.notify([b"late"])
    assert "kernel notification failed" in caplog.text
    with pytest.raises(OSError):
        channel.reply([b"late"])


def test_a_session_over_the_channel_answers_init_and_getattr(pair) -> None:
    ours, kernel = pair
    fs = ScriptedFs()

    async def main() -> None:
        session = Session(DevFuseChannel(ours.fileno()), fs)
        kernel_side = trio.socket.from_stdlib_socket(kernel)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run)
                await kernel_side.send(request(Opcode.INIT, 2, 0, init_in(7, 45, 65536, 0)))
                reply = await kernel_side.recv(4096)
                length, error, unique = wire.OUT_HEADER.unpack_from(reply)
                assert (length, error, unique) == (len(reply), 0, 2)
                assert parse_init_out(reply[wire.OUT_HEADER.size:]).max_readahead == 65536
                await kernel_side.send(request(Opcode.GETATTR, 4, ROOT_ID, bytes(16)))
                reply = await kernel_side.recv(4096)
                assert wire.OUT_HEADER.unpack_from(reply)[1:] == (0, 4)
                assert parse_attr_out(reply[wire.OUT_HEADER.size:])[1].ino == ROOT_ID
                kernel.shutdown(socket.SHUT_WR)  # "unmounted": the session ends
        assert fs.connection is not None

    trio.run(main)
