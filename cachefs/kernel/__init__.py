"""The FUSE kernel protocol, spoken directly over /dev/fuse on trio (no libfuse).

`mounting` (mount, unmount, the mount table) is plain Python; the session
and channel need trio. The names below load their modules on first use, so
a command that only reads the mount table (`cachefs status`, `umount`)
does not import trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachefs import lazy

if TYPE_CHECKING:
    from .channel import Channel, DevFuseChannel
    from .mounting import MountError, MountOptions, find_mount, mount, unmount
    from .ops import Connection, DirEntry, Entry, FuseError, Opened, Operations, StatFs
    from .session import Session

__all__ = [
    "Channel", "Connection", "DevFuseChannel", "DirEntry", "Entry", "FuseError", "MountError", "MountOptions", "Opened",
    "Operations", "Session", "StatFs", "find_mount", "mount", "unmount",
]

_HOMES = {
    "Channel": "channel", "DevFuseChannel": "channel",
    "MountError": "mounting", "MountOptions": "mounting", "find_mount": "mounting", "mount": "mounting",
    "unmount": "mounting",
    "Connection": "ops", "DirEntry": "ops", "Entry": "ops", "FuseError": "ops", "Opened": "ops",
    "Operations": "ops", "StatFs": "ops",
    "Session": "session",
}
__getattr__ = lazy.exports(__name__, _HOMES)
