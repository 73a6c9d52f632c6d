"""The FUSE kernel protocol, spoken directly over /dev/fuse on trio (no libfuse)."""

from .channel import Channel, DevFuseChannel
from .mounting import MountError, MountOptions, find_mount, mount, unmount
from .ops import Connection, DirEntry, Entry, FuseError, Opened, Operations, StatFs
from .session import Session

__all__ = [
    "Channel", "Connection", "DevFuseChannel", "DirEntry", "Entry", "FuseError", "MountError", "MountOptions", "Opened",
    "Operations", "Session", "StatFs", "find_mount", "mount", "unmount",
]
