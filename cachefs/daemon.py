"""The mount daemon: wires remote, cache, filesystem and kernel session.

`serve` runs one mount until it is unmounted (from outside, by `cachefs
umount`, or on SIGINT/SIGTERM). It reports readiness exactly once through the
`ready` callback: None once the kernel has finished INIT (the mount answers),
or a one-line reason why the mount could not be made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from cachefs.cache import Cache, CacheBusy, CacheDirError
from cachefs.cache.store import DEFAULT_MIN_FREE
from cachefs.cache.db import CorruptDatabase
from cachefs.control import server as control_server
from cachefs.control.commands import Commands
from cachefs.fs import Filesystem
from cachefs.fs.prefetch import Prefetcher
from cachefs.kernel import MountError, MountOptions, Session, find_mount, mount, unmount
from cachefs.kernel.mounting import FSTYPE, set_read_ahead
from cachefs.remote import NotFound, RemoteError, RequestLimits, S3Options, open_remote
from cachefs.remote.health import WatchedRemote
from cachefs.remote.httpcommon import (
    DEFAULT_MAX_LISTING_BYTES,
    DEFAULT_MIN_RATE,
    DEFAULT_REQUEST_TIMEOUT_S,
)

log = logging.getLogger(__name__)

# Kernel read-ahead in files of the mount: one chunk (see set_read_ahead).
READ_AHEAD_KIB = 8 * 1024


# ready(error, warning): error None means mounted; a warning still mounts.
Ready = Callable[[str | None, str | None], None]


@dataclass(frozen=True)
class MountConfig:
    source: str
    mountpoint: str
    cache_dir: Path
    metadata_ttl: float = 60.0
    cap_bytes: int | None = None
    min_free_bytes: int = DEFAULT_MIN_FREE
    proxy: str | None = None
    allow_other: bool = False
    passthrough: bool = True
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    min_rate: int = DEFAULT_MIN_RATE
    max_listing_size: int = DEFAULT_MAX_LISTING_BYTES
    # The daemon gives up on a source that has not answered after this long
    # (None: never). `cachefs mount` sets it a little below its own wait, so
    # that it can report why, and no daemon stays whose mount it reported failed.
    startup_timeout: float | None = None
    # Endpoint, region, profile... for s3:// sources; must stay default otherwise.
    s3: S3Options = S3Options()

    def to_dict(self) -> dict:
        """Plain data, to hand the configuration to a detached daemon."""
        d = dataclasses.asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MountConfig":
        return cls(**{**d, "cache_dir": Path(d["cache_dir"]), "s3": S3Options(**d["s3"])})


class StartupError(Exception):
    """The mount cannot be made; the message says why, in one line."""


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
                raise StartupError(f"runtime folder {level} is not a folder owned by uid {os.geteuid()}")
            if st.st_mode & 0o077:
                os.chmod(level, 0o700)
        except OSError as e:
            # XDG_RUNTIME_DIR naming a folder that is gone, a read-only /run...
            raise StartupError(f"cannot create the runtime folder {level}: {e.strerror or e}") from None
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
    return runtime_dir() / (hashlib.sha256(mountpoint.encode()).hexdigest()[:16] + ".json")


async def _check_remote(fs: Filesystem, remote: WatchedRemote) -> str | None:
    """Check the source; returns a warning when only the cache can serve it."""
    # Listing the root through the filesystem both checks the source and
    # warms the listing the first lookup needs.
    source = fs.cache.remote.source
    try:
        await fs.listings.get("")
    except RemoteError as e:
        # A remote that knows what went wrong (no such bucket, wrong
        # credentials...) says so in a line of its own.
        if e.summary:
            raise StartupError(e.summary) from None
        if isinstance(e, NotFound):
            raise StartupError(f"source {source} not found (HTTP 404)") from None
        raise StartupError(f"cannot list {source}: {e}") from None
    if not remote.reachable:
        # A cached root listing got us here: offline, serving the cache.
        return f"{source} is unreachable; serving what is cached until it is back"
    return None


async def serve(config: MountConfig, ready: Ready, log_path: Callable[[Path], None] | None = None) -> None:
    """Mount and serve until unmounted. Raises StartupError before ready."""
    try:
        limits = RequestLimits(config.request_timeout, config.min_rate, config.max_listing_size)
        remote = WatchedRemote(open_remote(config.source, proxy=config.proxy, s3=config.s3, limits=limits))
    except ValueError as e:
        raise StartupError(str(e)) from None
    try:
        try:
            cache = Cache(config.cache_dir, remote, cap_bytes=config.cap_bytes,
                          min_free_bytes=config.min_free_bytes)
        except (CacheBusy, CacheDirError, CorruptDatabase) as e:
            raise StartupError(str(e)) from None
        if log_path is not None:
            log_path(cache.root / "daemon.log")
        try:
            await _serve_mounted(config, cache, ready)
        except StartupError:
            # Nothing was served: a folder made for this mount only would
            # be left empty (the reason goes to the user, not the log).
            cache.close()
            cache.discard_new()
            raise
        except BaseException:
            cache.close()
            raise
        cache.close()
    finally:
        with trio.CancelScope(shield=True):
            await remote.aclose()


async def _serve_mounted(config: MountConfig, cache: Cache, ready: Ready) -> None:
    # Before mounting: a failure here must leave nothing mounted.
    prepare_runtime_dir()
    fs = Filesystem(cache, config.metadata_ttl, passthrough=config.passthrough)
    assert isinstance(cache.remote, WatchedRemote)
    limit = math.inf if config.startup_timeout is None else config.startup_timeout
    with trio.move_on_after(limit) as startup:
        warning = await _check_remote(fs, cache.remote)
    if startup.cancelled_caught:
        raise StartupError(f"{cache.remote.source} did not answer within {limit:g} s")
    try:
        # The remote's own source string: credentials given in the URL stay out.
        fd = mount(config.mountpoint, MountOptions(source=cache.remote.source, allow_other=config.allow_other))
    except MountError as e:
        raise StartupError(str(e)) from None

    def initialized(_conn: object) -> None:
        # Only now: INIT's answer sets the read-ahead (to at most 128 KiB).
        if not set_read_ahead(config.mountpoint, READ_AHEAD_KIB):
            log.debug("kernel read-ahead left at its default (not root?)")
        ready(None, warning)

    session = Session(fd, fs, want_passthrough=config.passthrough, on_init=initialized)
    state = state_file(config.mountpoint)
    control = state.with_suffix(".sock")
    try:
        async with trio.open_nursery() as nursery:
            # First: a SIGTERM from now on (systemd stopping a unit that is
            # still starting, say) unmounts cleanly instead of killing us.
            await nursery.start(_stop_on_signal, config.mountpoint, session)
            await nursery.start(cache.run)
            await nursery.start(fs.run)
            prefetcher = Prefetcher(cache, fs.listings, nursery)
            await nursery.start(control_server.serve, control, Commands(fs, prefetcher).handlers())
            try:
                _write_state(state, config, cache, control)
            except OSError as e:
                # The mount serves without it; only `cachefs umount` and
                # `status` cannot find this daemon by its mountpoint.
                log.error("cannot write the state file %s: %s", state, e.strerror or e)
            await session.run()
            nursery.cancel_scope.cancel()
    finally:
        state.unlink(missing_ok=True)
        os.close(fd)
        _detach_if_mounted(config.mountpoint)
    log.info("daemon for %s stopped", config.mountpoint)


def _detach_if_mounted(mountpoint: str) -> None:
    """After a failure, leave no dead mount behind (a clean exit has none)."""
    info = find_mount(mountpoint)
    if info is not None and info.fstype == FSTYPE:
        try:
            unmount(mountpoint, lazy=True)
        except MountError as e:
            log.error("could not detach %s: %s", mountpoint, e)


def _write_state(path: Path, config: MountConfig, cache: Cache, control: Path) -> None:
    info = {
        "mountpoint": config.mountpoint,
        "pid": os.getpid(),
        "source": cache.remote.source,
        "cache_dir": str(cache.root),
        "control": str(control),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)


async def _stop_on_signal(mountpoint: str, session: Session,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
            try:
                await trio.to_thread.run_sync(unmount, mountpoint)
            except MountError:
                # Busy: detach it now; open files see the end of the session.
                await trio.to_thread.run_sync(lambda: unmount(mountpoint, lazy=True))
                session.stop()
            return
