"""FUSE passthrough: registering backing files with the kernel.

A file opened with FOPEN_PASSTHROUGH and a backing id is read by the kernel
straight from the backing file; the daemon never sees those reads. INIT
succeeds even when passthrough cannot work, so `probe` tries one real
BACKING_OPEN and explains a failure in words a user can act on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import wire


class BackingError(OSError):
    """BACKING_OPEN or BACKING_CLOSE failed."""


@dataclass(frozen=True)
class ProbeResult:
    available: bool
    reason: str  # why not, or "" when available


_REASONS = {
    errno.EPERM: "not permitted: the daemon needs CAP_SYS_ADMIN (run as root)",
    errno.ELOOP: "the cache dir is on overlayfs or a FUSE filesystem (stacking too deep)",
    errno.ENOTTY: "this kernel has no FUSE passthrough (needs Linux 6.9 or later)",
    errno.EINVAL: "the kernel refused the cache dir's files as backing files",
    errno.EOPNOTSUPP: "the kernel refused passthrough for this mount",
}


class BackingFiles:
    """BACKING_OPEN / BACKING_CLOSE on one /dev/fuse connection."""

    def __init__(self, dev_fd: int) -> None:
        self._dev_fd = dev_fd

    def open(self, fd: int) -> int:
        """Register `fd` as a backing file; returns its backing id (> 0)."""
        # A mutable buffer makes ioctl() return the call's result (the id)
        # rather than a copy of the buffer.
        arg = bytearray(wire.BACKING_MAP.pack(fd, 0, 0))
        try:
            return fcntl.ioctl(self._dev_fd, wire.FUSE_DEV_IOC_BACKING_OPEN, arg, True)
        except OSError as e:
            raise BackingError(e.errno, os.strerror(e.errno)) from None

    def close(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self._dev_fd, wire.FUSE_DEV_IOC_BACKING_CLOSE,
                        bytearray(wire.BACKING_ID.pack(backing_id)), True)
        except OSError as e:
            raise BackingError(e.errno, os.strerror(e.errno)) from None

    def probe(self, directory: Path) -> ProbeResult:
        """Register and release one file in `directory`, where data files live."""
        with tempfile.TemporaryFile(dir=directory) as f:
            try:
                backing_id = self.open(f.fileno())
            except BackingError as e:
                reason = _REASONS.get(e.errno, f"BACKING_OPEN failed: {e.strerror}")
                return ProbeResult(False, reason)
            self.close(backing_id)
        return ProbeResult(True, "")
