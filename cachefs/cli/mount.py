"""`cachefs mount` and `cachefs umount`.

`mount` checks what it can before anything starts (the mountpoint, the cache
folder, the options), then starts a detached daemon and waits until the
mount answers or has failed; `--foreground` serves in this process.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from cachefs.cache import CHUNK_SIZE, DEFAULT_MIN_FREE, CacheDirError, default_cache_dir, prepare_dir
from cachefs.daemon.config import MountConfig
from cachefs.kernel import MountError, find_mount, unmount
from cachefs.kernel.mounting import FSTYPE
from cachefs.remote import REGISTRY
from cachefs.remote.limits import (
    DEFAULT_MAX_LISTING_BYTES,
    DEFAULT_MIN_RATE,
    DEFAULT_REQUEST_TIMEOUT_S,
)
from cachefs.runtime import daemon_alive, state_file

from . import argtypes, early
from .errors import UserError, one_line

# How long `cachefs mount` waits for the daemon to answer, and `umount` for
# it to finish writing its state.
READY_TIMEOUT = 120.0
EXIT_TIMEOUT = 60.0
# How long a daemon that missed READY_TIMEOUT gets to exit on SIGTERM.
STOP_TIMEOUT = 10.0
# The daemon's own limit on reaching the source is this much shorter, so
# that a slow source is reported as such rather than as a silent daemon.
STARTUP_MARGIN = 10.0
# Accepted values of the request limits (cachefs mount --help shows them).
REQUEST_TIMEOUT_RANGE = (1.0, 3600.0)
MIN_RATE_RANGE = (1, 1 << 30)
MAX_LISTING_SIZE_RANGE = (64 * 1024, 1 << 34)


# --- mount -------------------------------------------------------------------


def check_mountpoint(path: str, allow_non_empty: bool) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UserError(
                f"{path} is a cachefs mount whose daemon died; run: cachefs umount {path}"
            ) from None
        raise UserError(f"mountpoint {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mountpoint {path} is not a directory")
    mounted = find_mount(path)
    if mounted is not None:
        raise UserError(f"{path} is already mounted ({mounted.fstype} from {mounted.source})")
    if not allow_non_empty and any(os.scandir(path)):
        raise UserError(f"mountpoint {path} is not empty (use --allow-non-empty to mount over it)")


def daemon_environ(source: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a daemon serving `source` may see.

    Only an s3:// source needs AWS credentials; a daemon of any other kind
    would keep them readable in /proc/PID/environ for as long as it runs
    (each remote type names the variables that are its own). A detached
    daemon starts without any (see `early`); in the foreground they are
    removed, but the process's initial environment block keeps them.
    """
    return REGISTRY.environ_for(source, environ)


def _daemonize(config: MountConfig, log_level: str) -> int:
    """Hand the mount to a detached daemon (started early by the entry point,
    or now); return once the mount answers or has failed."""
    daemon = early.take() or early.spawn()
    pid, rfd = daemon.pid, daemon.ready_r
    daemon.send({**config.to_dict(), "log_level": log_level,
                 "environ": early.payload_environ(config.source, os.environ),
                 "started": early.started(), "spawned": daemon.spawned})
    try:
        readable, _, _ = select.select([rfd], [], [], READY_TIMEOUT)
        message = os.read(rfd, 4096).decode(errors="replace").strip() if readable else ""
    except KeyboardInterrupt:
        _stop_daemon(pid, config.mountpoint)
        raise
    finally:
        os.close(rfd)
    if message == "OK":
        return 0
    if message.startswith("OK "):
        print(f"cachefs: warning: {message[3:]}", file=sys.stderr)
        return 0
    if message.startswith("ERR "):
        os.waitpid(pid, 0)
        raise UserError(message[4:])
    if not readable:
        _stop_daemon(pid, config.mountpoint)
        raise UserError(f"the daemon (pid {pid}) did not answer within {READY_TIMEOUT:.0f} s; stopped it")
    os.waitpid(pid, 0)
    raise UserError("the daemon exited before the mount was ready (see its log)")


def _stop_daemon(pid: int, mountpoint: str) -> None:
    """End a daemon whose mount we report as failed, and any mount it made.

    It is our child and not yet reaped, so `pid` cannot name another process.
    """
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    info = find_mount(mountpoint)
    if info is not None and info.fstype == FSTYPE:
        try:
            unmount(mountpoint, lazy=True)
        except MountError:
            pass


def _identities(path: str) -> list[tuple[str, tuple[int, int]]]:
    """(path, (st_dev, st_ino)) of `path` and each of its parents that exists."""
    out = []
    for p in (path, *map(str, Path(path).parents)):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((p, (st.st_dev, st.st_ino)))
    return out


def check_apart(mountpoint: str, cache_dir: Path) -> None:
    """Refuse a cache dir at or under the mountpoint, and a mountpoint under
    the cache dir.

    The daemon would create its data files through its own mount and wait on
    itself forever (mount, ls and umount hung). Paths are compared resolved,
    and folders by device and inode too, which catches symlinks and bind
    mounts of the same folder.
    """
    cache = os.path.realpath(cache_dir)
    mp_ids = _identities(mountpoint)
    cache_ids = _identities(cache)
    mp_id = mp_ids[0][1] if mp_ids and mp_ids[0][0] == mountpoint else None
    cache_id = cache_ids[0][1] if cache_ids and cache_ids[0][0] == cache else None
    if (cache == mountpoint or Path(cache).is_relative_to(mountpoint)
            or any(ident == mp_id for _p, ident in cache_ids)):
        raise UserError(f"cache dir {cache_dir} is inside the mountpoint {mountpoint}; "
                        "choose a cache dir outside it")
    if Path(mountpoint).is_relative_to(cache) or any(ident == cache_id for _p, ident in mp_ids):
        raise UserError(f"mountpoint {mountpoint} is inside the cache dir {cache_dir}; "
                        "choose a cache dir apart from it")


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    check_mountpoint(mountpoint, args.allow_non_empty)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    check_apart(mountpoint, cache_dir)
    try:
        prepare_dir(cache_dir)
    except CacheDirError as e:
        raise UserError(str(e)) from None
    config = mount_config(args, mountpoint, cache_dir)
    if args.foreground:
        early.abandon()  # started for an abbreviation of --foreground, say
        # Best effort: this process's initial environment block keeps them.
        for name in set(os.environ) - set(daemon_environ(config.source, os.environ)):
            del os.environ[name]
        os.umask(0o077)
        from cachefs.daemon.startup import StartupTimes
        from cachefs.daemon import run_daemon, setup_logging  # the whole daemon: only here

        setup_logging(args.log_level, sys.stderr)
        return run_daemon(config, None, lambda error: print(f"cachefs: {one_line(error)}", file=sys.stderr),
                          StartupTimes(early.started()))
    return _daemonize(config, args.log_level)


def mount_config(args: argparse.Namespace, mountpoint: str, cache_dir: Path) -> MountConfig:
    """The daemon's configuration from `cachefs mount`'s arguments.

    The source's remote type takes its own options from `args`; another
    type's options are refused (UserError), as is a source of no known type.
    """
    try:
        remote_options = REGISTRY.options_from_args(args.source, args)
    except ValueError as e:
        raise UserError(str(e)) from None
    return MountConfig(
        source=args.source,
        mountpoint=mountpoint,
        cache_dir=cache_dir.resolve(),
        metadata_ttl=args.metadata_ttl,
        cap_bytes=args.cache_size,
        min_free_bytes=args.min_free,
        proxy=args.proxy,
        allow_other=args.allow_other,
        passthrough=not args.no_passthrough,
        request_timeout=args.request_timeout,
        min_rate=args.min_rate,
        max_listing_size=args.max_listing_size,
        startup_timeout=READY_TIMEOUT - STARTUP_MARGIN if READY_TIMEOUT > STARTUP_MARGIN else None,
        remote_options=remote_options,
    )


# --- umount ------------------------------------------------------------------



def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    mounted = find_mount(mountpoint)
    if mounted is None:
        raise UserError(f"{mountpoint} is not mounted")
    if mounted.fstype != FSTYPE:
        raise UserError(f"{mountpoint} is not a cachefs mount (it is {mounted.fstype})")
    state = state_file(mountpoint)
    try:
        pid = json.loads(state.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        pid = None
    try:
        unmount(mountpoint, lazy=args.lazy)
    except MountError as e:
        if "busy" in str(e).lower():
            raise UserError(f"{mountpoint} is busy: close the files open in it, or use --lazy") from None
        raise UserError(str(e)) from None
    # The daemon sees the unmount, flushes its state and exits: wait for it
    # so a new mount on the same cache finds everything recorded.
    deadline = time.monotonic() + EXIT_TIMEOUT
    while pid is not None and not args.lazy and daemon_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid is not None and not daemon_alive(pid):
        state.unlink(missing_ok=True)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("mount", help="mount a remote store read-only")
    m.add_argument("source", help=REGISTRY.source_help())
    m.add_argument("mountpoint")
    m.add_argument("--cache-dir", help=f"cache directory (default {default_cache_dir()})")
    m.add_argument("--metadata-ttl", type=argtypes.seconds, default=60.0, metavar="SECONDS",
                   help="how long listings and attributes are trusted (default 60)")
    m.add_argument("--cache-size", type=argtypes.size_at_least(CHUNK_SIZE, " (one chunk)"), metavar="SIZE",
                   help="evict least recently used files to keep the cache under SIZE (e.g. 20G)")
    m.add_argument("--min-free", type=argtypes.size, default=DEFAULT_MIN_FREE, metavar="SIZE",
                   help="evict to keep at least SIZE free on the cache's disk (default 1G)")
    m.add_argument("--proxy", type=argtypes.proxy_url, metavar="URL", help="HTTP proxy for all requests")
    m.add_argument("--request-timeout", type=argtypes.seconds_between(*REQUEST_TIMEOUT_RANGE),
                   default=DEFAULT_REQUEST_TIMEOUT_S, metavar="SECONDS",
                   help="a request fails once it has taken SECONDS plus 1 s per --min-rate bytes of "
                   "body received, so a server that trickles or never finishes fails, and a big body "
                   f"at a fair rate does not (default {DEFAULT_REQUEST_TIMEOUT_S:g}, "
                   f"from {REQUEST_TIMEOUT_RANGE[0]:g} to {REQUEST_TIMEOUT_RANGE[1]:g})")
    m.add_argument("--min-rate", type=argtypes.size_between(*MIN_RATE_RANGE),
                   default=DEFAULT_MIN_RATE, metavar="BYTES",
                   help="slowest average rate, bytes per second, a body may come at "
                   "(see --request-timeout; default 4K, from 1 to 1G)")
    m.add_argument("--max-listing-size", type=argtypes.size_between(*MAX_LISTING_SIZE_RANGE),
                   default=DEFAULT_MAX_LISTING_BYTES, metavar="SIZE",
                   help="a directory listing larger than SIZE fails (default 64M, from 64K to 16G)")
    m.add_argument("--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    m.add_argument("--no-passthrough", action="store_true",
                   help="serve complete files from the daemon (page cache) instead of the kernel")
    m.add_argument("--allow-non-empty", action="store_true", help="mount over a non-empty directory")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # One group of options per remote type (s3:// sources: --endpoint-url...).
    REGISTRY.add_arguments(m)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount and wait for the daemon to finish")
    u.add_argument("mountpoint")
    u.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    u.set_defaults(func=cmd_umount)
