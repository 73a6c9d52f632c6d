"""The detached daemon, started before the command has checked its arguments.

`cachefs mount` spends a tenth of a second loading and checking before it
has the mount's configuration; the daemon takes longer than that to load
trio, the cache and the filesystem before it can use one. So the entry point
starts the daemon first (`begin`, for a `mount` that will detach), and the
command hands it the configuration through a pipe once it has one: the two
load side by side, on two cores. A command that fails before that, or turns
out not to need it (`--foreground`), stops it (`abandon`).

The daemon is a fresh program (exec), so no mount option (a proxy
password...) shows in its command line. Since its source is not known when
it starts, it starts without the credential variables of every remote type
(AWS_*...); those of its source's type come through the pipe (`payload`),
so they never show in /proc/PID/environ either.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Arguments of `cachefs mount` after which no daemon will be detached:
# help, and --foreground (also abbreviated, as argparse allows).
_NO_DETACH = ("-h", "--help", "--fore")


@dataclass
class DaemonProcess:
    """A daemon we started, waiting for its configuration on `config_w`;
    it reports readiness on `ready_r`. Our child, not yet reaped: its pid
    cannot name another process."""

    pid: int
    config_w: int
    ready_r: int
    spawned: float  # time.monotonic() when it was started

    def send(self, payload: Mapping[str, Any]) -> None:
        """Hand over the configuration (small enough for the pipe's buffer)."""
        try:
            with os.fdopen(self.config_w, "w") as f:
                self.config_w = -1
                json.dump(payload, f)
        except BrokenPipeError:
            pass  # it has died already: its ready pipe ends empty, which says so

    def stop(self) -> None:
        """End a daemon that was never handed a configuration: it has only
        been loading modules, so nothing is left behind."""
        for fd in (self.config_w, self.ready_r):
            if fd >= 0:
                os.close(fd)
        self.config_w = self.ready_r = -1
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def base_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without any remote type's credential variables."""
    from cachefs.remote import REGISTRY

    # "" is a source of no type: no type's variables are kept.
    return REGISTRY.environ_for("", environ)


def payload_environ(source: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a daemon serving `source` needs beyond `base_environ`."""
    from cachefs.remote import REGISTRY

    base = base_environ(environ)
    return {k: v for k, v in REGISTRY.environ_for(source, environ).items() if k not in base}


def spawn() -> DaemonProcess:
    """Start `python -m cachefs.daemon`, detached, waiting for its configuration."""
    environ = base_environ(os.environ)
    ready_r, ready_w = os.pipe()
    config_r, config_w = os.pipe()
    spawned = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(config_w)
        os.setsid()
        os.umask(0o077)  # cache files hold the user's data: private by default
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.set_inheritable(ready_w, True)
        os.set_inheritable(config_r, True)
        # -P: `-m` would put the working directory first on sys.path, and a
        # cachefs/ folder there (a checkout, say) would run instead of the
        # installed package.
        try:
            os.execve(sys.executable, [sys.executable, "-P", "-m", "cachefs.daemon",
                                       "--config-fd", str(config_r), "--ready-fd", str(ready_w)], environ)
        finally:
            os._exit(127)
    os.close(ready_w)
    os.close(config_r)
    return DaemonProcess(pid, config_w, ready_r, spawned)


# The command's start, and the daemon `begin` started for it, if any.
_started: float | None = None
_early: DaemonProcess | None = None


def begin(argv: list[str], started: float) -> None:
    """Called first by the entry point: start the daemon now if `argv`
    (the command's arguments) is a mount that will detach."""
    global _started, _early
    _started = started
    if argv[:1] == ["mount"] and not any(a.startswith(_NO_DETACH) for a in argv[1:]):
        _early = spawn()


def started() -> float | None:
    """When the command started (time.monotonic()), if the entry point said."""
    return _started


def take() -> DaemonProcess | None:
    """The daemon `begin` started, now the caller's to hand a configuration or stop."""
    global _early
    process, _early = _early, None
    return process


def abandon() -> None:
    """Stop the daemon `begin` started if nobody took it (the command failed first)."""
    process = take()
    if process is not None:
        process.stop()
