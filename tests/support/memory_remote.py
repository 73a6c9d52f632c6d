"""An in-memory Remote for unit tests: objects in a dict, no network.

It keeps the promises of `cachefs.remote.base.Remote` that the layers above
rely on: directories are implied by keys, each object has a version that
changes whenever its bytes do, and `read_range` yields exactly the bytes
asked for, or raises VersionChanged when the object is no longer the version
(or pin) the reader holds. Tests change objects between calls with `put`
and `delete`, make calls fail with `fail_next`, hold reads at a gate with
`hold_reads`, and count what was asked with `calls`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from cachefs.remote.base import NotFound, Pin, RemoteEntry, RemoteError, VersionChanged

# Pieces `read_range` yields, like a network's reads.
PIECE = 64 * 1024


@dataclass
class StoredObject:
    data: bytes
    mtime: float
    version: str


class MemoryRemote:
    """A Remote over a dict of keys to bytes; see the module docstring."""

    def __init__(self, objects: dict[str, bytes] | None = None, *, source: str = "memory://test") -> None:
        self.source = source
        self.objects: dict[str, StoredObject] = {}
        self.calls: Counter[str] = Counter()
        self.closed = False
        self._failures: dict[str, list[RemoteError]] = {}
        self._gate: trio.Event | None = None
        self._generation = 0
        for key, data in (objects or {}).items():
            self.put(key, data)

    # -- what tests do to the store -------------------------------------------

    def put(self, key: str, data: bytes, mtime: float = 1_700_000_000.0) -> str:
        """Create or replace an object; returns its new version."""
        self._generation += 1
        digest = hashlib.sha256(data).hexdigest()[:16]
        version = f'"{digest}-{self._generation}"'
        self.objects[key] = StoredObject(data, mtime, version)
        return version

    def delete(self, key: str) -> None:
        del self.objects[key]

    def fail_next(self, operation: str, error: RemoteError) -> None:
        """Make the next call of `operation` ("list_dir", "stat", "read_range") raise `error`."""
        self._failures.setdefault(operation, []).append(error)

    def hold_reads(self) -> trio.Event:
        """Reads wait until the returned event is set."""
        self._gate = trio.Event()
        return self._gate

    # -- the Remote interface ---------------------------------------------------

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)

    def _entry(self, key: str) -> RemoteEntry:
        obj = self.objects[key]
        return RemoteEntry(key.rsplit("/", 1)[-1], False, len(obj.data), obj.mtime, obj.version)

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        self._enter("list_dir")
        await trio.lowlevel.checkpoint()
        prefix = f"{path}/" if path else ""
        files: dict[str, RemoteEntry] = {}
        dirs: set[str] = set()
        for key in self.objects:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            name, slash, _ = rest.partition("/")
            if slash:
                dirs.add(name)
            else:
                files[name] = self._entry(key)
        if path and not files and not dirs:
            raise NotFound(f"no directory {path!r}")
        entries = list(files.values()) + [RemoteEntry(d, True) for d in sorted(dirs - set(files))]
        return sorted(entries, key=lambda e: e.name)

    async def stat(self, path: str) -> RemoteEntry:
        self._enter("stat")
        await trio.lowlevel.checkpoint()
        if path in self.objects:
            return self._entry(path)
        if any(key.startswith(f"{path}/") for key in self.objects):
            return RemoteEntry(path.rsplit("/", 1)[-1], True)
        raise NotFound(f"no object {path!r}")

    @asynccontextmanager
    async def read_range(self, path: str, start: int, end: int, version: str,
                         pin: Pin | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        self._enter("read_range")
        if self._gate is not None:
            await self._gate.wait()
        obj = self.objects.get(path)
        if obj is None:
            raise NotFound(f"no object {path!r}")
        if version and obj.version != version:
            raise VersionChanged(f"{path}: version {obj.version}, reader holds {version}")
        if pin is not None:
            if pin.size != len(obj.data):
                raise VersionChanged(f"{path}: {len(obj.data)} bytes, pinned {pin.size}")
            validator = f"etag:{obj.version}"
            if pin.validator is None:
                pin.validator = validator
            elif pin.validator != validator:
                raise VersionChanged(f"{path}: validator {validator}, pinned {pin.validator}")
        if not 0 <= start <= end <= len(obj.data):
            raise RemoteError(f"{path}: range {start}-{end} outside {len(obj.data)} bytes")
        data = obj.data[start:end]

        async def pieces() -> AsyncIterator[bytes]:
            for at in range(0, len(data), PIECE):
                await trio.lowlevel.checkpoint()
                yield data[at:at + PIECE]

        yield pieces()

    async def aclose(self) -> None:
        self.closed = True

