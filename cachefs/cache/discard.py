"""Versions that changed on the remote: taken from new opens, then dropped.

A fetch that finds the remote's bytes changed under the version an object
holds (VersionChanged) discards the object. New opens no longer find it, so
the next open of the path starts a new version from nothing, and its record
and data file are dropped in the background; opens of the same (key,
version) wait until that is done. Handles already open keep reading the
chunks it has, all of the one version pinned; a fetch for them of another
version fails. Old and new bytes are never mixed in one file.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import trio

from .db import CacheDB
from .evictor import Evictor
from .journal import Journal
from .objects import CachedObject
from .table import ObjectTable

log = logging.getLogger(__name__)


class Discards:
    """See the module docstring."""

    def __init__(self, objects: ObjectTable, journal: Journal, evictor: Evictor, db: CacheDB,
                 nursery: trio.Nursery, listeners: list[Callable[[str, str], None]]) -> None:
        """`listeners` are told (key, version) of every object discarded: the
        layer above must stop serving that version."""
        self._objects = objects
        self._journal = journal
        self._evictor = evictor
        self._db = db
        self._nursery = nursery
        self._listeners = listeners
        self._dropping: dict[tuple[str, str], trio.Event] = {}

    def pending(self, key: str, version: str) -> trio.Event | None:
        """Set once this version's discard is done; None: none under way."""
        return self._dropping.get((key, version))

    def discard(self, obj: CachedObject) -> None:
        """The remote no longer has the version `obj` holds (module docstring)."""
        if obj.stale:
            return
        obj.stale = True
        ident = (obj.key, obj.version)
        self._objects.take_out(obj)
        log.info("%s changed on the remote; dropping what is cached of the old version", obj.key)
        for listener in self._listeners:
            listener(obj.key, obj.version)
        done = trio.Event()
        previous = self._dropping.get(ident)
        self._dropping[ident] = done
        self._objects.retain(obj)  # keeps its file open until it is dropped
        self._nursery.start_soon(self._drop, obj, ident, done, previous)

    async def _drop(
        self, obj: CachedObject, ident: tuple[str, str], done: trio.Event, previous: trio.Event | None
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()
            # Chunks queued before it went stale may be recording its row now.
            await self._journal.settle()
            if obj.object_id is not None:
                row = self._db.find_object(obj.key, obj.version)
                if row is not None and row.id == obj.object_id:
                    await self._evictor.drop(row)
        except (OSError, sqlite3.Error) as e:
            # Kept, the record still holds one version only: a later fetch of
            # another fails and discards it again.
            log.error("could not drop the stale cached part of %s: %s", obj.key, e)
        finally:
            if obj.object_id is None:
                # Nothing of it is recorded (the journal skips stale objects),
                # so its file goes, even when the daemon is stopping; no new
                # object of this ident exists while it is being discarded.
                try:
                    obj.path.unlink(missing_ok=True)
                except OSError as e:
                    log.error("could not remove %s: %s", obj.path, e)
            if self._dropping.get(ident) is done:
                del self._dropping[ident]
            done.set()
            self._objects.release(obj)
