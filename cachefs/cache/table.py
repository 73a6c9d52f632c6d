"""The object versions open in this process, and the uses that keep them open.

There is one `CachedObject` per (key, version), shared by everything that
uses it. Each open handle, running fetch, chunk waiting in the journal and
page push holds one use of it: taken with `add` (the first) or `retain`,
given back with `release`. This table is the only place uses are counted;
when the last one goes, the data file is closed and the object leaves it.

An object whose remote version changed is taken out at once (`take_out`),
so that the next open of its (key, version) starts afresh; it stays open
for those who hold it until they release it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .objects import CachedObject


class ObjectTable:
    """Open objects by (key, version), with their use counts."""

    def __init__(self, on_closed: Callable[[CachedObject], None]) -> None:
        """`on_closed(obj)` is called once the last use of `obj` is gone and
        its data file is closed."""
        self._open: dict[tuple[str, str], CachedObject] = {}
        self._uses: dict[CachedObject, int] = {}
        self._on_closed = on_closed

    def find(self, key: str, version: str) -> CachedObject | None:
        """The open object of this version, without a new use."""
        return self._open.get((key, version))

    def is_open(self, key: str, version: str) -> bool:
        """Whether the object is open, being fetched or recorded."""
        return (key, version) in self._open

    def __iter__(self) -> Iterator[CachedObject]:
        return iter(self._open.values())

    def add(self, obj: CachedObject) -> CachedObject:
        """A newly opened object, with its first use."""
        ident = (obj.key, obj.version)
        assert ident not in self._open, "one object per version"
        self._open[ident] = obj
        self._uses[obj] = 1
        return obj

    def retain(self, obj: CachedObject) -> CachedObject:
        """One more use of an object someone already holds; pair with `release`.
        Its data file stays open (and its fd number ours) until then."""
        assert obj in self._uses, "retain needs a holder"
        self._uses[obj] += 1
        return obj

    def release(self, obj: CachedObject) -> None:
        left = self._uses[obj] - 1
        if left:
            self._uses[obj] = left
            return
        del self._uses[obj]
        obj.close()
        ident = (obj.key, obj.version)
        if self._open.get(ident) is obj:
            del self._open[ident]
        self._on_closed(obj)

    def uses(self, obj: CachedObject) -> int:
        return self._uses.get(obj, 0)

    def take_out(self, obj: CachedObject) -> None:
        """New opens no longer find `obj`; those who hold it keep it."""
        ident = (obj.key, obj.version)
        if self._open.get(ident) is obj:
            del self._open[ident]

    def close_all(self) -> None:
        for obj in self._uses:
            obj.close()
        self._open.clear()
        self._uses.clear()
