"""A client's process tree as /proc shows it: peak memory and CPU time.

A FUSE client may be one process (rclone, s3fs) or several (a daemon and the
helpers it starts), so the figures are over the process and its live
descendants: peak RSS is the sum of each one's VmHWM (an upper bound of the
tree's peak, as the peaks need not coincide), CPU time the sum of user and
system time. Processes that exit between two readings drop out of the CPU
sum; the clients measured here keep theirs alive while mounted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeUsage:
    """One reading of a process tree."""

    pids: tuple[int, ...]
    cpu_s: float  # user + system seconds, summed over the tree
    peak_rss_mib: float  # VmHWM summed over the tree


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, user + system seconds) from the text of /proc/PID/stat."""
    # The command name may hold spaces and parentheses: split after the last
    # ")". The fields after it start at the state (field 3 of proc(5)).
    fields = text.rpartition(")")[2].split()
    ppid = int(fields[1])
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return ppid, (utime + stime) / CLOCK_TICKS


def parse_hwm_mib(status_text: str) -> float:
    """VmHWM in MiB from the text of /proc/PID/status; 0 for kernel threads."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return 0.0


def _all_stats() -> dict[int, tuple[int, float]]:
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    return out


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """`root` and every pid below it, given each pid's parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_usage(root: int) -> TreeUsage:
    """CPU seconds and peak RSS of `root` and its descendants, now."""
    stats = _all_stats()
    if root not in stats:
        return TreeUsage((), 0.0, 0.0)
    pids = descendants(root, {pid: s[0] for pid, s in stats.items()})
    cpu = sum(stats[pid][1] for pid in pids if pid in stats)
    rss = 0.0
    for pid in pids:
        try:
            rss += parse_hwm_mib(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
    return TreeUsage(tuple(pids), cpu, rss)
