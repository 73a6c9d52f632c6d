"""What a benchmark does to the machine: page cache, timed reads, mounts,
the daemons behind them (memory, counters, log lines) and the cache's own
files. `cachefs bench` and the scripts in bench/ both measure with these.

Mounts are made and removed with the real `cachefs` command of this
interpreter (a subprocess), exactly as a user would; `Mounts.unmount_all`
leaves none behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TextIO, TypeVar

from cachefs.kernel import mounting
from cachefs.runtime import NotRunning, holder_of_mount

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000  # throughput in decimal MB/s, as dd and curl report it
READ_BLOCK = MiB
RAND_BLOCK = 4 * KiB
STATE_XATTR = "user.cachefs.state"
STATS_XATTR = "user.cachefs.stats"

MOUNT_TIMEOUT_S = 120.0
UMOUNT_TIMEOUT_S = 90.0
COMPLETE_TIMEOUT_S = 60.0

# Lines of a daemon log worth reporting.
_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")

P = ParamSpec("P")
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot go on; printed as one line."""


# -- page cache and reads -----------------------------------------------------


def can_drop_page_cache() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_page_cache() -> bool:
    """sync, then drop clean page cache, dentries and inodes; False if not root."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def read_whole(path: Path, buf: bytearray | None = None) -> int:
    """Read `path` start to end in READ_BLOCK reads, like `dd bs=1M`; return the byte count."""
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


def sequential_mbps(path: Path, size: int, buf: bytearray) -> float:
    start = time.perf_counter()
    n = read_whole(path, buf)
    seconds = time.perf_counter() - start
    if n != size:
        raise BenchError(f"read {n} bytes of {path}, expected {size}")
    return n / MB / seconds


def first_byte_ms(path: Path) -> float:
    """Milliseconds from open() to the first 4 KiB read returning."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, RAND_BLOCK, 0)
    finally:
        elapsed = time.perf_counter() - start
        os.close(fd)
    if not data:
        raise BenchError(f"{path}: the first read returned nothing")
    return elapsed * 1000


def random_offsets(seed: int, size: int, count: int) -> list[int]:
    """`count` 4 KiB-aligned offsets inside a file of `size` bytes, fixed by `seed`."""
    blocks = max(size // RAND_BLOCK, 1)
    rng = random.Random(seed)
    return [rng.randrange(blocks) * RAND_BLOCK for _ in range(count)]


def random_reads_per_s(path: Path, offsets: list[int], min_seconds: float = 0.0) -> float:
    """4 KiB preads at `offsets`; repeated until `min_seconds` have passed.

    Repeating only makes sense when the data is already in the page cache
    (the hot mode): there a single pass is too short to time reliably.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return random_reads_on(fd, offsets, min_seconds)
    finally:
        os.close(fd)


def random_reads_on(fd: int, offsets: list[int], min_seconds: float = 0.0,
                    expect: bytes | None = None) -> float:
    """`random_reads_per_s` through a handle the caller opened. With `expect`
    (the file's whole content) every read's bytes are checked against it."""
    pread, done = os.pread, 0
    start = time.perf_counter()
    while True:
        if expect is None:
            for off in offsets:
                pread(fd, RAND_BLOCK, off)
        else:
            for off in offsets:
                if pread(fd, RAND_BLOCK, off) != expect[off:off + RAND_BLOCK]:
                    raise BenchError(f"wrong bytes at {off}")
        done += len(offsets)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def read_files(paths: list[Path], expected: dict[Path, str] | None = None,
               readers: int = 1) -> float:
    """Open, read and close every file in order (with `readers` > 1, that many
    threads take them in turn); return files/s.

    With `expected` (path -> sha256) every file's bytes are checked too; the
    hash of a small file costs little next to its open and read.
    """

    def read_right(path: Path) -> bool:
        with open(path, "rb", buffering=0) as f:
            data = f.read()
        return expected is None or hashlib.sha256(data).hexdigest() == expected[path]

    start = time.perf_counter()
    if readers == 1:
        right = [read_right(path) for path in paths]
    else:
        with ThreadPoolExecutor(readers) as pool:
            right = list(pool.map(read_right, paths))
    seconds = time.perf_counter() - start
    wrong = [path for path, ok in zip(paths, right) if not ok]
    if wrong:
        raise BenchError(f"{len(wrong)} files read back wrong, e.g. {wrong[0]}")
    return len(paths) / seconds


def cache_state(path: Path) -> str:
    """The file's state as its daemon tells it (absent, partial BYTES/SIZE,
    complete, passthrough opens=N), or why it cannot be read."""
    try:
        return os.getxattr(path, STATE_XATTR).decode()
    except OSError as e:
        return f"unavailable ({e.strerror})"


def wait_complete(paths: list[Path]) -> None:
    """Wait until the daemon records every file complete (after a full read)."""
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    for path in paths:
        while not cache_state(path).startswith(("complete", "passthrough")):
            if time.monotonic() > deadline:
                raise BenchError(f"{path} not complete in the cache after a full read "
                                 f"({cache_state(path)})")
            time.sleep(0.05)


# -- signals -------------------------------------------------------------------


def sigterm_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so every `finally` cleans up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# -- the cachefs command and its mounts -----------------------------------------


def cachefs(*args: str, timeout: float = MOUNT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run this environment's `cachefs` command to its end, even through Ctrl-C.

    A `cachefs mount` cut short would leave its daemon (already detached)
    mounting on its own after our cleanup had looked: so the command runs in
    its own session (a terminal's Ctrl-C reaches only us), and on an
    interrupt we let it finish, with further interrupts ignored, before
    passing the interrupt on. Cleanup then finds the mount and removes it.
    """
    argv = [sys.executable, "-m", "cachefs.cli", *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except KeyboardInterrupt:
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        raise
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def is_mounted(path: Path) -> bool:
    return mounting.is_mounted(os.path.realpath(path))


def lazy_unmount(path: Path) -> None:
    """Last resort: detach the mount now; its daemon exits once it is idle."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@dataclass
class Mounts:
    """cachefs mounts made by the benchmark."""

    active: list[Path] = field(default_factory=list)

    def mount(self, url: str, mountpoint: Path, cache_dir: Path, *options: str) -> None:
        # Remembered before asking: a mount that times out may still appear.
        self.active.append(mountpoint)
        done = cachefs("mount", url, str(mountpoint), "--cache-dir", str(cache_dir), *options)
        if done.returncode != 0:
            raise BenchError(f"cachefs mount failed: {done.stderr.strip() or done.returncode}")

    def unmount(self, mountpoint: Path) -> None:
        """`cachefs umount` (waits for the daemon to exit); lazy if that fails."""
        if mountpoint in self.active:
            self.active.remove(mountpoint)
        if not is_mounted(mountpoint):
            return
        try:
            done = cachefs("umount", str(mountpoint), timeout=UMOUNT_TIMEOUT_S)
            failed, reason = done.returncode != 0, done.stderr.strip()
        except subprocess.TimeoutExpired:
            failed, reason = True, "timed out"
        if failed:
            lazy_unmount(mountpoint)
            raise BenchError(f"cachefs umount {mountpoint} failed ({reason}); detached it lazily")

    def unmount_all(self) -> None:
        """Unmount everything still mounted; never raises."""
        for mountpoint in reversed(list(self.active)):
            try:
                self.unmount(mountpoint)
            except (BenchError, OSError) as e:
                print(f"cachefs bench: {e}", file=sys.stderr)


@dataclass(frozen=True)
class Daemon:
    """A running mount's daemon, from its state file in /run/cachefs/mounts."""

    mountpoint: str
    pid: int
    folder: Path  # the source's folder in the cache dir
    source: str


def daemon_of(mountpoint: Path) -> Daemon:
    try:
        holder = holder_of_mount(os.path.realpath(mountpoint))
    except NotRunning as e:
        raise BenchError(str(e)) from None
    return Daemon(holder.mountpoint, holder.pid, Path(holder.cache_dir), holder.source)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of `pid`: the most resident memory it has had, in MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # the kernel reports kB
    except OSError as e:
        raise BenchError(f"cannot read the daemon's memory (pid {pid}): {e.strerror}") from None
    raise BenchError(f"/proc/{pid}/status has no VmHWM")


def daemon_stats(mountpoint: Path) -> dict[str, Any]:
    """The daemon's counters (fuse_reads, opens by mode, passthrough...), from
    the user.cachefs.stats xattr of the mount's root."""
    return json.loads(os.getxattr(mountpoint, STATS_XATTR))


def passthrough_state(mountpoint: Path) -> tuple[bool | None, str]:
    """Whether the mount's daemon has passthrough on, and why not (None: unknown)."""
    try:
        stats = daemon_stats(mountpoint)
        return bool(stats["passthrough"]), str(stats.get("passthrough_reason", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None, "the daemon does not say"


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


def evict(paths: list[Path]) -> None:
    """`cachefs evict` the files. A file closed a moment ago may still count as
    open (FUSE's release is asynchronous), so files kept are asked again."""
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    while True:
        done = cachefs("evict", *map(str, paths))
        if done.returncode != 0:
            raise BenchError(f"cachefs evict failed: {done.stderr.strip() or done.returncode}")
        if "kept" not in done.stdout:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"cachefs evict kept files: {done.stdout.strip()}")
        time.sleep(0.1)


def cache_files(folder: Path, keys: list[str]) -> dict[str, Path]:
    """The data files of those `keys` the cache records complete."""
    db = folder / "state.db"
    # Read-only: the benchmark must never take a write lock from the daemon.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        found: dict[str, Path] = {}
        for key in keys:
            row = conn.execute("SELECT data_name FROM objects WHERE key = ? AND complete = 1",
                               (key,)).fetchone()
            if row:
                found[key] = folder / "data" / row[0][:2] / row[0]
        return found
    finally:
        conn.close()


def wait_cache_file(mountpoint: Path, key: str) -> Path:
    """The data file of `key` in the cache of the mount, once the cache records
    it complete (the daemon may take a moment after a full read)."""
    folder = daemon_of(mountpoint).folder
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    while not (found := cache_files(folder, [key])):
        if time.monotonic() > deadline:
            raise BenchError(f"{key} not recorded complete in the cache "
                             f"{COMPLETE_TIMEOUT_S:.0f} s after a full read")
        time.sleep(0.1)
    return found[key]


# -- progress ---------------------------------------------------------------------


class StatusLine:
    """One line per step on stderr; on a terminal, a single line redrawn in place."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty()
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        if self.quiet:
            return
        line = f"[{time.monotonic() - self.started:5.1f}s] {text}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.live and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()
