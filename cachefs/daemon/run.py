"""Run one mount in this process, as the foreground command or the detached daemon."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from cachefs.runtime import state_file

from . import sdnotify
from .log import log_to_file
from .config import MountConfig
from .serve import StartupError, serve
from .startup import StartupTimes

log = logging.getLogger("cachefs")


def run_daemon(config: MountConfig, ready_fd: int | None,
               show_error: Callable[[str], None] | None = None, times: StartupTimes | None = None) -> int:
    """Serve the mount in this process until it is unmounted; the exit status.

    A detached daemon reports readiness once to `ready_fd` ("OK", "OK
    warning" or "ERR reason"), which `cachefs mount` waits on. In the
    foreground (`ready_fd` None) a failure to mount goes to `show_error`,
    and readiness to systemd when it started us. `times` holds the marks of
    the start so far; the daemon logs them all once the mount answers.
    """
    import trio

    reported = False

    def ready(error: str | None, warning: str | None = None) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        if ready_fd is None:
            if error:
                (show_error or log.error)(error)
            else:
                log.info("mounted at %s", config.mountpoint)
                if warning:
                    log.warning("%s", warning)
                # Under systemd (Type=notify): the unit is up once the mount answers.
                sdnotify.ready(f"mounted at {config.mountpoint}" + (f"; {warning}" if warning else ""))
            return
        line = f"ERR {error}" if error else (f"OK {warning}" if warning else "OK")
        os.write(ready_fd, (line.replace("\n", " ") + "\n").encode())
        os.close(ready_fd)

    try:
        # Where the log goes when daemon.log cannot be written (a full disk).
        fallback = state_file(config.mountpoint).with_suffix(".log")
        trio.run(serve, config, ready, None if ready_fd is None else lambda p: log_to_file(p, fallback),
                 times or StartupTimes())
    except StartupError as e:
        ready(str(e))
        return 1
    except KeyboardInterrupt:
        ready("interrupted")
        return 130
    except Exception as e:
        log.exception("daemon failed")
        ready(f"internal error: {e}")
        return 1
    return 0
