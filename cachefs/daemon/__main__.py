"""Entry point of a detached daemon: `python -m cachefs.daemon`.

`cachefs mount` forks, and the child execs this module instead of running
on in the fork, so the daemon's command line (/proc/PID/cmdline, ps) holds
no mount option: a proxy password or any other secret given to `cachefs
mount` does not outlive that command. The configuration comes through an
inherited pipe, and readiness goes back through another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# sqlite_utils imports numpy whenever it is installed (matplotlib, for
# `cachefs bench`'s chart, brings it), to map numpy types to columns the
# daemon never stores: a third of the daemon's import time, on every mount.
sys.modules.setdefault("numpy", None)  # type: ignore[assignment]

from .log import setup_logging  # noqa: E402 (after the line above, on purpose)
from .run import run_daemon  # noqa: E402
from .config import MountConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="cachefs-daemon")
    parser.add_argument("--config-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args()
    with os.fdopen(args.config_fd, "r") as f:
        payload = json.load(f)
    setup_logging(payload.pop("log_level"), None)
    return run_daemon(MountConfig.from_dict(payload), args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
