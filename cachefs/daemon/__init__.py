"""The mount daemon: the composition root that wires remote, cache,
filesystem, kernel session and control socket into one running mount.

`run_daemon` serves a `MountConfig` in this process; `python -m
cachefs.daemon` is the detached daemon `cachefs mount` starts.

The names below load their modules on first use: the detached daemon's
entry point (`__main__`) must run before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachefs import lazy

if TYPE_CHECKING:
    from .log import setup_logging
    from .run import run_daemon
    from .config import MountConfig
    from .serve import StartupError

__all__ = ["MountConfig", "StartupError", "run_daemon", "setup_logging"]

_HOMES = {"MountConfig": "config", "StartupError": "serve", "run_daemon": "run", "setup_logging": "log"}
__getattr__ = lazy.exports(__name__, _HOMES)
