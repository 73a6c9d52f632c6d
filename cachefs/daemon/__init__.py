"""The mount daemon: the composition root that wires remote, cache,
filesystem, kernel session and control socket into one running mount.

`run_daemon` serves a `MountConfig` in this process; `python -m
cachefs.daemon` is the detached daemon `cachefs mount` starts.
"""

from .log import setup_logging
from .run import run_daemon
from .serve import MountConfig, StartupError

__all__ = ["MountConfig", "StartupError", "run_daemon", "setup_logging"]
