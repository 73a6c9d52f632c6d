"""A remote wrapper that notices when the store goes away and comes back.

It passes every call through unchanged and logs once when calls start
failing with `Unreachable`, and once when one succeeds again, instead of a
line per failed request. Offline, cached files and listings keep working;
only what needs the network fails (after the remote's own bounded retries).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .base import Pin, Remote, RemoteEntry, Unreachable

log = logging.getLogger(__name__)


class WatchedRemote:
    """Implements `Remote` by delegation; see the module docstring."""

    def __init__(self, inner: Remote) -> None:
        self._inner = inner
        self.source = inner.source
        self.reachable = True

    def _up(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.warning("remote %s is reachable again", self.source)

    def _down(self, error: Unreachable) -> None:
        if self.reachable:
            self.reachable = False
            log.warning("remote %s is unreachable (%s); serving what is cached", self.source, error)

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        try:
            entries = await self._inner.list_dir(path)
        except Unreachable as e:
            self._down(e)
            raise
        self._up()
        return entries

    @asynccontextmanager
    async def list_dir_pages(self, path: str) -> AsyncIterator[AsyncIterator[list[RemoteEntry]]]:
        """`list_dir` in batches as they come, where the remote can (see base.Remote)."""
        pages = getattr(self._inner, "list_dir_pages", None)
        try:
            if pages is None:
                yield _one_batch(await self._inner.list_dir(path))
            else:
                async with pages(path) as batches:
                    yield batches
        except Unreachable as e:
            self._down(e)
            raise
        self._up()

    async def stat(self, path: str) -> RemoteEntry:
        try:
            entry = await self._inner.stat(path)
        except Unreachable as e:
            self._down(e)
            raise
        self._up()
        return entry

    @asynccontextmanager
    async def read_range(
        self, path: str, start: int, end: int, version: str, pin: Pin | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            async with self._inner.read_range(path, start, end, version, pin) as body:
                self._up()
                yield body
        except Unreachable as e:
            self._down(e)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _one_batch(entries: list[RemoteEntry]) -> AsyncIterator[list[RemoteEntry]]:
    yield entries
