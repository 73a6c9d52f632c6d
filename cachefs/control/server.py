"""The daemon's end of the control socket."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20
SOCKET_MODE = 0o600

# An op's handler takes the request and yields reply objects.
Handler = Callable[[dict], AsyncIterator[dict]]


class RequestError(Exception):
    """A bad request; the message goes back to the client."""


async def serve(path: Path, handlers: dict[str, Handler], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on `path` until cancelled, running one handler per connection."""
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, SOCKET_MODE)
    sock.listen()
    try:
        await trio.serve_listeners(
            lambda stream: _handle(stream, handlers), [trio.SocketListener(sock)], task_status=task_status
        )
    finally:
        path.unlink(missing_ok=True)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_REQUEST:
            raise RequestError("request too long")
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


async def _send(stream: trio.SocketStream, reply: dict) -> None:
    await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _handle(stream: trio.SocketStream, handlers: dict[str, Handler]) -> None:
    async with stream:
        try:
            try:
                request = json.loads(await _read_line(stream))
                if not isinstance(request, dict) or request.get("op") not in handlers:
                    raise RequestError(f"unknown request {request!r:.80}")
                async for reply in handlers[request["op"]](request):
                    await _send(stream, reply)
            except (RequestError, ValueError) as e:
                await _send(stream, {"error": str(e)})
            except Exception as e:
                # A failing request must not end the daemon: its mount serves on.
                log.exception("control request failed")
                await _send(stream, {"error": f"internal error: {e}"})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (e.g. Ctrl-C); whatever it started goes on
