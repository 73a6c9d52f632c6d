"""The mount daemon: wires remote, cache, filesystem and kernel session.

`serve` runs one mount until it is unmounted (from outside, by `cachefs
umount`, or on SIGINT/SIGTERM). It reports readiness exactly once through the
`ready` callback: None once the kernel has finished INIT (the mount answers),
or a one-line reason why the mount could not be made.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from cachefs.cache import (
    Cache,
    CacheBusy,
    CacheConfig,
    CacheDirError,
    CorruptDatabase,
    open_cache,
)
from cachefs.control import server as control_server
from cachefs.control.commands import Commands
from cachefs.fs import Filesystem
from cachefs.fs.prefetch import Prefetcher
from cachefs.kernel import MountError, MountOptions, Session, find_mount, mount, unmount
from cachefs.kernel.mounting import FSTYPE, set_read_ahead
from cachefs.remote import NotFound, RemoteError
from cachefs.remote.health import WatchedRemote
from cachefs.remote.record import write_record
from cachefs.runtime import Holder, RuntimeDirError, prepare_runtime_dir, state_file, write_state

from .config import MountConfig
from .startup import StartupTimes

log = logging.getLogger(__name__)

# Kernel read-ahead in files of the mount: one chunk (see set_read_ahead).
READ_AHEAD_KIB = 8 * 1024


# ready(error, warning): error None means mounted; a warning still mounts.
Ready = Callable[[str | None, str | None], None]


class StartupError(Exception):
    """The mount cannot be made; the message says why, in one line."""


async def _check_remote(fs: Filesystem, remote: WatchedRemote) -> str | None:
    """Check the source; returns a warning when only the cache can serve it."""
    # Listing the root through the filesystem both checks the source and
    # warms the listing the first lookup needs.
    source = remote.source
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


def raise_open_file_limit() -> int:
    """Take the hard limit on open files as the soft one; returns the soft limit now.

    Every open cached file, and every backing id kept for a small file's
    next open, holds a descriptor. The soft limit is often 1024, a default
    for programs that use select(); trio uses epoll, so the hard limit is
    ours to take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.debug("open-file limit left at %s: %s", soft, e)
    return soft


async def serve(config: MountConfig, ready: Ready, log_path: Callable[[Path], None] | None = None,
                times: StartupTimes | None = None) -> None:
    """Mount and serve until unmounted. Raises StartupError before ready.
    Logs `times`, with the steps of this function added, once the mount answers."""
    times = times or StartupTimes()
    raise_open_file_limit()  # before the filesystem sizes its kept backing ids by it
    if "command" not in times.marks:
        times.mark("command")  # in the foreground, the command is the daemon
    try:
        remote = WatchedRemote(config.open_remote())
    except ValueError as e:
        raise StartupError(str(e)) from None
    times.mark("remote")
    try:
        async with AsyncExitStack() as stack:
            try:
                cache = await stack.enter_async_context(open_cache(
                    CacheConfig(config.cache_dir, cap_bytes=config.cap_bytes, min_free_bytes=config.min_free_bytes),
                    remote))
            except (CacheBusy, CacheDirError, CorruptDatabase) as e:
                raise StartupError(str(e)) from None
            times.mark("cache")
            if log_path is not None:
                log_path(cache.folder / "daemon.log")
            try:
                await _serve_mounted(config, cache, remote, ready, times)
            except StartupError:
                # Nothing was served: a folder made for this mount only would
                # be left empty (the reason goes to the user, not the log).
                cache.remove_when_closed()
                raise
    finally:
        with trio.CancelScope(shield=True):
            await remote.aclose()


async def _serve_mounted(config: MountConfig, cache: Cache, remote: WatchedRemote, ready: Ready,
                         times: StartupTimes) -> None:
    # Before mounting: a failure here must leave nothing mounted.
    try:
        prepare_runtime_dir()
    except RuntimeDirError as e:
        raise StartupError(str(e)) from None
    fs = Filesystem(cache, remote, config.metadata_ttl, passthrough=config.passthrough)
    limit = math.inf if config.startup_timeout is None else config.startup_timeout
    with trio.move_on_after(limit) as startup:
        warning = await _check_remote(fs, remote)
    if startup.cancelled_caught:
        raise StartupError(f"{remote.source} did not answer within {limit:g} s")
    times.mark("listing")
    if warning is None:
        _record_remote(config, cache.folder)
    try:
        # The remote's own source string: credentials given in the URL stay out.
        fd = mount(config.mountpoint, MountOptions(source=remote.source, allow_other=config.allow_other))
    except MountError as e:
        raise StartupError(str(e)) from None
    times.mark("mount")

    def initialized(_conn: object) -> None:
        times.mark("init")
        # Only now: INIT's answer sets the read-ahead (to at most 128 KiB).
        if not set_read_ahead(config.mountpoint, READ_AHEAD_KIB):
            log.debug("kernel read-ahead left at its default (not root?)")
        log.info("%s", times.line())
        ready(None, warning)

    session = Session(fd, fs, want_passthrough=config.passthrough, on_init=initialized)
    state = state_file(config.mountpoint)
    control = state.with_suffix(".sock")
    try:
        async with trio.open_nursery() as nursery:
            # First: a SIGTERM from now on (systemd stopping a unit that is
            # still starting, say) unmounts cleanly instead of killing us.
            await nursery.start(_stop_on_signal, config.mountpoint, session)
            await nursery.start(fs.run)
            prefetcher = Prefetcher(cache, fs.listings, nursery)
            await nursery.start(control_server.serve, control, Commands(fs, prefetcher).handlers())
            try:
                write_state(Holder(config.mountpoint, os.getpid(), remote.source,
                                   str(cache.folder), str(control)))
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


def _record_remote(config: MountConfig, folder: Path) -> None:
    """Write down how the remote was opened, for `fsck --verify-remote`.

    Only once it has answered: options that did not work must not replace
    those of an earlier mount that did.
    """
    try:
        write_record(folder, config.source, config.remote_options)
    except OSError as e:
        # The mount serves without it; fsck then opens the source with default options.
        log.warning("cannot record the remote's options in %s: %s", folder, e.strerror or e)


def _detach_if_mounted(mountpoint: str) -> None:
    """After a failure, leave no dead mount behind (a clean exit has none)."""
    info = find_mount(mountpoint)
    if info is not None and info.fstype == FSTYPE:
        try:
            unmount(mountpoint, lazy=True)
        except MountError as e:
            log.error("could not detach %s: %s", mountpoint, e)


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
