"""The command line's end of the control socket, and finding a path's mount."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachefs.kernel import find_mount
from cachefs.kernel.mounting import FSTYPE


class ControlError(Exception):
    """The daemon cannot be reached, or refused the request."""


@dataclass(frozen=True)
class Target:
    """A path inside a cachefs mount: the mount and the path's key in it."""

    mountpoint: str
    key: str


def locate(path: str) -> Target:
    """The cachefs mount holding `path`, and the path relative to it."""
    full = os.path.realpath(path)
    candidate = full
    while True:
        info = find_mount(candidate)
        if info is not None:
            if info.fstype != FSTYPE:
                raise ControlError(f"{path} is not inside a cachefs mount (it is on {info.fstype})")
            key = os.path.relpath(full, candidate)
            return Target(candidate, "" if key == "." else key)
        parent = os.path.dirname(candidate)
        if parent == candidate:
            raise ControlError(f"{path} is not inside a cachefs mount")
        candidate = parent


def request(socket_path: Path, message: dict, timeout: float | None = 30.0) -> Iterator[dict]:
    """Send one request and yield the daemon's replies as they come."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except OSError as e:
            raise ControlError(f"the daemon does not answer on {socket_path}: {e.strerror}") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as replies:
            for line in replies:
                reply = json.loads(line)
                if "error" in reply:
                    raise ControlError(reply["error"])
                yield reply


def locate_all(paths: list[str]) -> tuple[str, list[str]]:
    """The one cachefs mount all `paths` are in, and their keys in it."""
    targets = [locate(p) for p in paths]
    if len({t.mountpoint for t in targets}) > 1:
        raise ControlError("the paths are in different mounts; run one command per mount")
    return targets[0].mountpoint, [t.key for t in targets]
