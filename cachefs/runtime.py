"""Where running daemons announce themselves, and how commands find them.

A daemon writes one JSON state file per mount into the runtime folder
(mountpoint, pid, source, cache folder, control socket) and removes it when
it stops. `cachefs umount`, `status`, `prefetch`, `fsck` and the benchmarks
read these files; nothing else tells them which daemon serves a mount.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path


class RuntimeDirError(Exception):
    """The runtime folder cannot be made ours; the message says why, in one line."""


class NotRunning(Exception):
    """No live daemon serves the mount asked about."""


@dataclass(frozen=True)
class Holder:
    """A running daemon, as its state file shows it."""

    mountpoint: str
    pid: int
    source: str
    cache_dir: str  # its source folder
    control: str  # its control socket


def runtime_dir() -> Path:
    """Where running daemons register themselves (one JSON file per mount)."""
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path("/run/cachefs/mounts")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cachefs-{os.getuid()}"
    return Path(base) / "cachefs" / "mounts"


def prepare_runtime_dir() -> Path:
    """Create the runtime folder (and its cachefs parents) private to us.

    A fresh machine has none of it: /run is a tmpfs emptied at boot, and
    XDG_RUNTIME_DIR may be unset. Under a shared /tmp, a folder someone else
    made first is refused rather than trusted.
    """
    path = runtime_dir()
    # Every level from the first one named "cachefs*" down is ours to create.
    ours = [p for p in (path, *path.parents) if p.name.startswith("cachefs") or p == path]
    for level in reversed(ours):
        try:
            try:
                level.mkdir(mode=0o700)
            except FileExistsError:
                pass
            st = level.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise RuntimeDirError(f"runtime folder {level} is not a folder owned by uid {os.geteuid()}")
            if st.st_mode & 0o077:
                os.chmod(level, 0o700)
        except OSError as e:
            # XDG_RUNTIME_DIR naming a folder that is gone, a read-only /run...
            raise RuntimeDirError(f"cannot create the runtime folder {level}: {e.strerror or e}") from None
    return path


def daemon_alive(pid: int) -> bool:
    """Whether `pid` still runs. A zombie has finished: a detached daemon's
    new parent may be slow to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The state letter follows the command name in parentheses.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def state_file(mountpoint: str) -> Path:
    """The state file of the daemon serving `mountpoint` (it may not exist)."""
    return runtime_dir() / (hashlib.sha256(mountpoint.encode()).hexdigest()[:16] + ".json")


def write_state(holder: Holder) -> Path:
    """Announce a daemon; readers never see a half-written file."""
    path = state_file(holder.mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "mountpoint": holder.mountpoint,
        "pid": holder.pid,
        "source": holder.source,
        "cache_dir": holder.cache_dir,
        "control": holder.control,
    }))
    tmp.replace(path)
    return path


def _read_state(path: Path) -> Holder | None:
    try:
        s = json.loads(path.read_text())
        return Holder(s["mountpoint"], int(s["pid"]), s["source"], s["cache_dir"], s["control"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, being written or removed


def running_mounts() -> list[Holder]:
    """Mounts whose daemon is alive. A daemon killed hard leaves its state
    file behind; its pid no longer runs, so it is left out."""
    found = [h for h in map(_read_state, sorted(runtime_dir().glob("*.json"))) if h is not None]
    return sorted((h for h in found if daemon_alive(h.pid)), key=lambda h: h.mountpoint)


def holder_of_mount(mountpoint: str) -> Holder:
    """The live daemon serving `mountpoint`; NotRunning when there is none."""
    holder = _read_state(state_file(mountpoint))
    if holder is None or not daemon_alive(holder.pid):
        raise NotRunning(f"no running cachefs daemon found for {mountpoint}")
    return holder


def holder_of_folder(folder: Path) -> Holder | None:
    """The live daemon using the cache folder `folder`, if any."""
    target = os.path.realpath(folder)
    return next((h for h in running_mounts() if os.path.realpath(h.cache_dir) == target), None)
