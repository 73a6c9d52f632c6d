"""Backing ids of complete small files, kept registered between opens.

Without this, every warm open of a small file through passthrough looks its
object up in SQLite, opens its data file and registers it with the kernel
(BACKING_OPEN), and the RELEASE that follows undoes all three. Once the last
passthrough handle of a complete small object is closed, its backing id and
one use of the object (which keeps the data file open) are kept here
instead, so the next open of the same version, even by a new inode after
the kernel forgot the old one, is answered from memory.

A backing id belongs to the connection, not to an inode: the kernel drops
an inode's reference to it when the inode's last passthrough file is
released, before the daemon sees the RELEASE, so a kept id is never in use
by the kernel and may be handed to another inode or closed at any time.

What is kept is only a speed-up, so it lets go readily: the least recently
closed first when over `max_count` or `max_bytes`; an old version when a new
one of the same key is kept; and, through the filesystem, when the version
is superseded on the remote, when its path is evicted, and when the cache
needs room (a kept object is open, and the
cache never evicts an open object).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cachefs.cache import CachedObject


@dataclass(eq=False)
class KeptBacking:
    """A registered backing id with no handle on it, and the use of its object it holds."""

    obj: CachedObject
    backing_id: int


class KeptBackings:
    """Kept backing ids by key, one version each, least recently kept first."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        # By key alone: keeping a new version of a key lets go of the old one.
        self._kept: OrderedDict[str, KeptBacking] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def fits(self, obj: CachedObject) -> bool:
        """Whether `obj` may be kept at all."""
        return self.max_count > 0 and obj.size <= self.max_bytes

    def take(self, key: str, version: str) -> KeptBacking | None:
        """The kept id of this version, no longer kept; None if there is none."""
        kept = self._kept.get(key)
        if kept is None or kept.obj.version != version:
            return None
        return self._pop(key)

    def take_key(self, key: str) -> list[KeptBacking]:
        """The kept id of any version of `key`, no longer kept."""
        return [self._pop(key)] if key in self._kept else []

    def keep(self, kept: KeptBacking) -> list[KeptBacking]:
        """Keep `kept`; return what no longer fits (another version of its
        key, then the oldest), for the caller to close. An id of a version
        already kept is returned itself."""
        key = kept.obj.key
        old = self._kept.get(key)
        if old is not None and old.obj.version == kept.obj.version or not self.fits(kept.obj):
            return [kept]
        out = self.take_key(key)
        self._kept[key] = kept
        self.bytes += kept.obj.size
        while len(self._kept) > self.max_count or self.bytes > self.max_bytes:
            out.append(self._pop(next(iter(self._kept))))
        return out

    def take_where(self, wanted: Callable[[str], bool]) -> list[KeptBacking]:
        """Take every kept id whose key is `wanted`."""
        return [self._pop(key) for key in [k for k in self._kept if wanted(k)]]

    def take_all(self) -> list[KeptBacking]:
        return self.take_where(lambda _key: True)

    def _pop(self, key: str) -> KeptBacking:
        kept = self._kept.pop(key)
        self.bytes -= kept.obj.size
        return kept
