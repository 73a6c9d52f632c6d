"""The control socket's protocol, over a real unix socket in tmp_path: one
JSON request line in, reply lines out, errors as {"error": ...}. The client
side is `cachefs.control.client.request`, as the CLI uses it."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from cachefs.control import server
from cachefs.control.client import ControlError, request
from cachefs.control.server import RequestError


async def count(req: dict) -> AsyncIterator[dict]:
    for i in range(req.get("n", 3)):
        yield {"i": i}


async def fails_after_one(req: dict) -> AsyncIterator[dict]:
    yield {"first": True}
    raise RequestError("'x' must be a whole number")


async def slow(req: dict) -> AsyncIterator[dict]:
    for i in range(1000):
        yield {"i": i, "pad": "x" * 4096}
        await trio.sleep(0.001)


async def breaks(req: dict) -> AsyncIterator[dict]:
    # A bug, or a database gone bad under a status request.
    raise KeyError("not a RequestError")
    yield {}


HANDLERS = {"count": count, "fails": fails_after_one, "slow": slow, "breaks": breaks}


async def ask(path: Path, message: dict) -> list[dict]:
    return await trio.to_thread.run_sync(lambda: list(request(path, message, timeout=10)))


def serving(tmp_path: Path, test) -> None:
    path = tmp_path / "control.sock"

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, path, HANDLERS)
                await test(path)
                nursery.cancel_scope.cancel()
        assert not path.exists()  # removed when the daemon stops

    trio.run(main)


def test_a_request_gets_every_reply_of_its_handler(tmp_path: Path) -> None:
    async def test(path: Path) -> None:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await ask(path, {"op": "count", "n": 4}) == [{"i": i} for i in range(4)]
        assert await ask(path, {"op": "count", "n": 0}) == []

    serving(tmp_path, test)


def test_bad_requests_are_answered_with_an_error(tmp_path: Path) -> None:
    def raw(path: Path, data: bytes) -> list[dict]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return [json.loads(line) for line in sock.makefile("rb")]

    async def test(path: Path) -> None:
        with pytest.raises(ControlError, match="unknown request"):
            await ask(path, {"op": "format"})
        for data in (b"not json\n", b"[1, 2]\n", b'{"no": "op"}\n', b""):
            [reply] = await trio.to_thread.run_sync(raw, path, data)
            assert set(reply) == {"error"}, data
        # Replies already sent stay sent; the error comes after them.
        replies = await trio.to_thread.run_sync(raw, path, b'{"op": "fails"}\n')
        assert replies == [{"first": True}, {"error": "'x' must be a whole number"}]
        with pytest.raises(ControlError, match="whole number"):
            await ask(path, {"op": "fails"})

    serving(tmp_path, test)


def test_a_request_line_past_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_REQUEST", 1000)

    def endless_line(path: Path) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(b'{"op": "count", "pad": "' + b"x" * 5000)  # and no end of line
            return json.loads(sock.makefile("rb").readline())

    async def test(path: Path) -> None:
        assert await trio.to_thread.run_sync(endless_line, path) == {"error": "request too long"}
        assert await ask(path, {"op": "count", "n": 1}) == [{"i": 0}]

    serving(tmp_path, test)


def test_a_client_that_goes_away_leaves_the_daemon_serving(tmp_path: Path) -> None:
    async def test(path: Path) -> None:
        def hang_up_after_one_reply() -> dict:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
                sock.sendall(b'{"op": "slow"}\n')
                return json.loads(sock.makefile("rb").readline())

        assert await trio.to_thread.run_sync(hang_up_after_one_reply) == {"i": 0, "pad": "x" * 4096}
        assert await ask(path, {"op": "count", "n": 2}) == [{"i": 0}, {"i": 1}]

    serving(tmp_path, test)


def test_a_stale_socket_file_is_replaced_and_no_daemon_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # left behind by a daemon that was killed
    with pytest.raises(ControlError, match="does not answer"):
        list(request(path, {"op": "count"}, timeout=5))

    async def test(served: Path) -> None:
        assert served == path
        assert await ask(path, {"op": "count", "n": 1}) == [{"i": 0}]

    serving(tmp_path, test)


def test_a_handler_that_breaks_answers_an_error_and_the_server_serves_on(tmp_path: Path) -> None:
    async def test(path: Path) -> None:
        with pytest.raises(ControlError, match="internal error"):
            await ask(path, {"op": "breaks"})
        assert await ask(path, {"op": "count", "n": 2}) == [{"i": 0}, {"i": 1}]

    serving(tmp_path, test)
