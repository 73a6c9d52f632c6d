"""Mounting and unmounting a FUSE filesystem without libfuse.

As root we open /dev/fuse and call mount(2) with its fd in the options. As an
unprivileged user we let the setuid fusermount3 helper do the mount; it hands
the /dev/fuse fd back over a unix socket named by the _FUSE_COMMFD variable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

FSTYPE = "fuse.cachefs"
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_S_IFDIR_OCTAL = "40000"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class MountError(Exception):
    """Mounting or unmounting failed; the message is meant for the user."""


@dataclass(frozen=True)
class MountOptions:
    source: str
    allow_other: bool = False


def _option_string(fd: int, opts: MountOptions) -> str:
    parts = [
        f"fd={fd}",
        f"rootmode={_S_IFDIR_OCTAL}",
        f"user_id={os.getuid()}",
        f"group_id={os.getgid()}",
        # The kernel checks permissions from the modes we report, so the
        # daemon need not implement ACCESS checks for every request.
        "default_permissions",
    ]
    if opts.allow_other:
        parts.append("allow_other")
    return ",".join(parts)


def mount(mountpoint: str, opts: MountOptions) -> int:
    """Mount a new FUSE filesystem at `mountpoint`; return the /dev/fuse fd."""
    if os.geteuid() == 0:
        return _mount_as_root(mountpoint, opts)
    return _mount_with_fusermount(mountpoint, opts)


def _mount_as_root(mountpoint: str, opts: MountOptions) -> int:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = _option_string(fd, opts).encode()
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    rc = _libc.mount(opts.source.encode(), mountpoint.encode(), FSTYPE.encode(), flags, data)
    if rc != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise MountError(f"mount {mountpoint}: {os.strerror(err)}")
    return fd


def _mount_with_fusermount(mountpoint: str, opts: MountOptions) -> int:
    helper = shutil.which("fusermount3")
    if helper is None:
        raise MountError("fusermount3 not found: install the fuse3 package (or mount as root)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        options = ["ro", "nosuid", "nodev", f"fsname={opts.source}", "subtype=cachefs",
                   "default_permissions"]
        if opts.allow_other:
            options.append("allow_other")
        proc = subprocess.run(
            [helper, "-o", ",".join(options), "--", mountpoint],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=[theirs.fileno()],
            capture_output=True,
            text=True,
        )
        theirs.close()
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines()[-1:] or ["fusermount3 failed"])[0]
            if "/dev/fuse" in msg and "denied" in msg:
                # No udev rule made it 0666 as Debian's fuse3 package does
                # (a container, a machine without udev).
                msg += " (users need /dev/fuse mode 0666: as root, chmod 0666 /dev/fuse)"
            raise MountError(f"mount {mountpoint}: {msg}")
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise MountError(f"mount {mountpoint}: fusermount3 passed no file descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        if theirs.fileno() != -1:
            theirs.close()


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount; `lazy` detaches it even while files are still open."""
    if os.geteuid() == 0:
        rc = _libc.umount2(mountpoint.encode(), _MNT_DETACH if lazy else 0)
        if rc != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                raise MountError(f"{mountpoint} is not mounted")
            raise MountError(f"unmount {mountpoint}: {os.strerror(err)}")
        return
    helper = shutil.which("fusermount3")
    if helper is None:
        raise MountError("fusermount3 not found: install the fuse3 package")
    args = [helper, "-u"] + (["-z"] if lazy else []) + ["--", mountpoint]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(proc.stderr.strip() or f"unmount {mountpoint} failed")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    source: str
    mountpoint: str
    fstype: str
    device: tuple[int, int] = (0, 0)  # the superblock's (major, minor); a FUSE minor is its connection id
    options: tuple[str, ...] = ()  # the mount's options, then the superblock's


def _unescape(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def mounts(table: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Every mount of this mount namespace (or of the one `table` belongs
    to, e.g. /proc/PID/mountinfo), in the kernel's order: a later mount on
    the same point hides an earlier one."""
    found = []
    with open(table, "rb") as f:
        for line in f:
            left, _, right = line.partition(b" - ")
            fields, rest = left.split(), right.split()
            major, minor = fields[2].split(b":")
            options = os.fsdecode(fields[5]).split(",") + os.fsdecode(rest[2]).split(",")
            found.append(MountInfo(_unescape(rest[1]), _unescape(fields[4]), os.fsdecode(rest[0]),
                                   (int(major), int(minor)), tuple(options)))
    return found


def find_mount(mountpoint: str | os.PathLike[str]) -> MountInfo | None:
    """The visible mount at exactly `mountpoint` (an absolute path), if any.

    Read from the mount table, never by stat(): on a mount whose daemon died,
    stat fails with ENOTCONN, and a daemon stat-ing its own mount waits for
    itself.
    """
    target = os.path.abspath(mountpoint)
    found = None
    for info in mounts():
        if info.mountpoint == target:
            found = info
    return found


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return find_mount(path) is not None


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mountpoints strictly inside the folder `path`, deepest last."""
    inside = os.path.abspath(path).rstrip(os.sep) + os.sep
    return [m.mountpoint for m in mounts() if m.mountpoint.startswith(inside)]


def set_read_ahead(mountpoint: str, kib: int) -> bool:
    """Let the kernel read ahead up to `kib` KiB in files of this mount.

    The kernel starts a FUSE mount at 128 KiB: a sequential reader through
    the page cache then costs a daemon round trip per 128 KiB (311 MB/s cold
    here, against 516-600 MB/s with 4-8 MiB). Needs root (sysfs); returns
    whether it was set.
    """
    info = find_mount(mountpoint)
    if info is None:
        return False
    major, minor = info.device
    try:
        with open(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError:
        return False
    return True
