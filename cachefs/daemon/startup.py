"""How long a mount took to answer, step by step: the daemon's `startup:` line.

The steps are timed with CLOCK_MONOTONIC, one clock for every process of the
machine, so `cachefs mount` hands the daemon its own readings (when the
command started, when it started the daemon) along with the configuration,
and the daemon logs, once the mount answers, one line such as

    startup: answered 0.291 s after the command started: command 0.012,
    python 0.038, imports 0.142, config 0.000, remote 0.031, cache 0.009,
    listing 0.041, mount 0.004, init 0.014

(on one line). Each step is named by what happened during it, in seconds:
the command until it started the daemon; the daemon's interpreter until its
first line; its imports; the wait for the configuration (the command checks
its arguments meanwhile); opening the remote, the cache; listing the root;
the mount call; the kernel's INIT. A foreground mount has no python, imports
or config step: the command is the daemon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# In order; each mark is the moment its step ended.
STEPS = ("command", "python", "imports", "config", "remote", "cache", "listing", "mount", "init")


@dataclass
class StartupTimes:
    """The marks of one mount's start; `started` is the command's start."""

    started: float | None = None
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str, at: float | None = None) -> None:
        self.marks[step] = time.monotonic() if at is None else at

    def line(self) -> str:
        """The `startup:` log line (module docstring)."""
        shown = [(step, self.marks[step]) for step in STEPS if step in self.marks]
        if not shown:
            return "startup: no steps timed"
        start = self.started if self.started is not None else shown[0][1]
        parts = []
        previous = start
        for step, at in shown:
            parts.append(f"{step} {max(0.0, at - previous):.3f}")
            previous = max(previous, at)
        since = "the command started" if self.started is not None else "its first step"
        return f"startup: answered {previous - start:.3f} s after {since}: {', '.join(parts)}"
