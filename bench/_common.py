"""Helpers shared by the cachefs benchmarks.

Everything here is about running a measurement honestly and cleaning up after
it: a private work directory, mounts made with the real `cachefs` command and
always unmounted, page-cache control, timed sequential reads, robust summaries
(median/min/max) and a plain-text table. Nothing here knows which figures a
particular benchmark reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import ParamSpec, TypeVar

from cachefs.benchmark.system import BenchError, Mounts, cachefs, is_mounted
from cachefs.kernel.mounting import mounts_under
from cachefs.localstore.tree import write_seeded_file

# Re-exported: the scripts here and `cachefs bench` share one way to run the
# cachefs command and keep track of mounts.
__all__ = ["BenchError", "Mounts", "cachefs", "is_mounted"]

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000  # throughput is reported in decimal MB/s, as dd and curl do

READ_BLOCK = MiB  # like `dd bs=1M`

# Lines of a daemon log worth reporting.
_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")

P = ParamSpec("P")
T = TypeVar("T")


# -- statistics -----------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one figure."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None


# -- processes and signals --------------------------------------------------------


def sigterm_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so every `finally` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def ignore_interrupts() -> None:
    """From now on, Ctrl-C and SIGTERM cannot cut cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")


# -- mounts -------------------------------------------------------------------------


def lazy_unmount(path: Path) -> None:
    """Last resort: detach the mount now; its daemon exits once it is idle."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# -- work directory -----------------------------------------------------------------


class Workspace:
    """A private temp directory; removed on close unless something is still
    mounted inside it (then it is left and named, never deleted through a mount)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def fresh_dir(self, name: str) -> Path:
        path = self.path / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def remove_dir(self, path: Path) -> None:
        """Delete `path` (inside the workspace) unless something is mounted in it."""
        if mounts_under(path):
            print(f"bench: still mounted under {path}; left it in place", file=sys.stderr)
            return
        shutil.rmtree(path, ignore_errors=True)

    def remove(self) -> None:
        """Lazily unmount anything left inside, then delete everything."""
        for mountpoint in reversed(mounts_under(self.path)):
            lazy_unmount(Path(mountpoint))
        self.remove_dir(self.path)


# -- page cache and reads --------------------------------------------------------------


def sync() -> None:
    os.sync()


def drop_page_cache() -> bool:
    """sync, then drop clean caches (root only); False if not permitted."""
    sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def read_whole(path: Path, buf: bytearray | None = None) -> int:
    """Read `path` start to end in READ_BLOCK requests; return the byte count."""
    view = memoryview(buf if buf is not None else bytearray(READ_BLOCK))
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def hash_whole(path: Path) -> tuple[int, str]:
    """Read `path` like read_whole, hashing it; return (bytes, sha256 hex)."""
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            total += len(block)
    return total, digest.hexdigest()


def make_hot(paths: Iterable[Path]) -> None:
    """Read files once so that they sit in the page cache."""
    buf = bytearray(READ_BLOCK)
    for path in paths:
        read_whole(path, buf)


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[float, T]:
    """Run fn(*args, **kwargs); return (seconds it took, its result)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# -- data -------------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> str:
    """Fill `path` with `size` pseudo-random bytes; return their sha256 hex."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_seeded_file(path, f"bench/{path.name}/{size}", size)


# -- daemon logs -------------------------------------------------------------------------


def daemon_log_problems(cache_dir: Path, limit: int = 20) -> list[str]:
    """Warning, error and traceback lines of every daemon log in `cache_dir`."""
    problems: list[str] = []
    for log in sorted(cache_dir.glob("*/daemon.log")):
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if _LOG_PROBLEM.search(line):
                    problems.append(line.rstrip())
                    if len(problems) >= limit:
                        return problems
    return problems


# -- output ------------------------------------------------------------------------------


def fmt_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def emit_report(table: str, report: dict, json_path: Path | None) -> None:
    """Print the table; write the raw numbers as JSON when asked."""
    print()
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"raw numbers: {json_path}")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the others."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
