"""Entry point of a detached daemon: `python -m cachefs.daemon`.

`cachefs mount` forks, and the child execs this module instead of running
on in the fork, so the daemon's command line (/proc/PID/cmdline, ps) holds
no mount option: a proxy password or any other secret given to `cachefs
mount` does not outlive that command. The configuration comes through an
inherited pipe, and readiness goes back through another.

The daemon is started before the command has its configuration (see
`cachefs.cli.early`): it loads what every mount needs first, then waits for
the configuration. End of file instead means the command gave up first.
"""

from __future__ import annotations

import os
import sys
import time

# Before any import of ours: the interpreter's start-up ends here.
PYTHON_READY = time.monotonic()


def main() -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="cachefs-daemon")
    parser.add_argument("--config-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args()

    from .startup import StartupTimes

    # What every mount needs (trio, the cache, the filesystem, the kernel
    # session), while the command still checks its arguments.
    from .config import MountConfig
    from .log import setup_logging
    from .run import run_daemon

    imported = time.monotonic()
    with os.fdopen(args.config_fd, "r") as f:
        text = f.read()
    if not text:
        return 0  # the command failed, or was stopped, before handing over a mount
    payload = json.loads(text)
    times = StartupTimes(payload.pop("started", None))
    times.mark("command", payload.pop("spawned", None))
    times.mark("python", PYTHON_READY)
    times.mark("imports", imported)
    times.mark("config")
    # The credentials of the source's remote type (AWS_*...): through the
    # pipe, never in this process's initial environment (/proc/PID/environ).
    os.environ.update(payload.pop("environ", {}))
    setup_logging(payload.pop("log_level"), None)
    return run_daemon(MountConfig.from_dict(payload), args.ready_fd, times=times)


if __name__ == "__main__":
    sys.exit(main())
