"""What the benchmark does to the machine: page cache, timed reads, mounts,
daemon memory and the cache's own files.

Mounts are made and removed with the real `cachefs` command of this
interpreter (a subprocess), exactly as a user would; `Mounts.unmount_all`
leaves none behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cachefs.kernel import mounting
from cachefs.runtime import running_mounts

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


def read_whole(path: Path, buf: bytearray) -> int:
    """Read `path` start to end in READ_BLOCK reads, like `dd bs=1M`."""
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


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


def random_reads_on(fd: int, offsets: list[int], min_seconds: float = 0.0) -> float:
    """`random_reads_per_s` through a handle the caller opened."""
    pread, done = os.pread, 0
    start = time.perf_counter()
    while True:
        for off in offsets:
            pread(fd, RAND_BLOCK, off)
        done += len(offsets)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def read_files(paths: list[Path], expected: dict[Path, str] | None = None) -> float:
    """Open, read and close every file in order; return files/s.

    With `expected` (path -> sha256) every file's bytes are checked too; the
    hash of a small file costs little next to its open and read.
    """
    wrong: list[Path] = []
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            data = f.read()
        if expected is not None and hashlib.sha256(data).hexdigest() != expected[path]:
            wrong.append(path)
    seconds = time.perf_counter() - start
    if wrong:
        raise BenchError(f"{len(wrong)} files read back wrong, e.g. {wrong[0]}")
    return len(paths) / seconds


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cache_state(path: Path) -> str:
    try:
        return os.getxattr(path, STATE_XATTR).decode()
    except OSError:
        return "absent"


def wait_complete(paths: list[Path]) -> None:
    """Wait until the daemon records every file complete (after a full read)."""
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    for path in paths:
        while not cache_state(path).startswith(("complete", "passthrough")):
            if time.monotonic() > deadline:
                raise BenchError(f"{path} not complete in the cache after a full read "
                                 f"({cache_state(path)})")
            time.sleep(0.05)


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
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
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
    target = os.path.realpath(mountpoint)
    for holder in running_mounts():
        if holder.mountpoint == target:
            return Daemon(holder.mountpoint, holder.pid, Path(holder.cache_dir), holder.source)
    raise BenchError(f"no running cachefs daemon found for {target}")


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


def passthrough_state(mountpoint: Path) -> tuple[bool | None, str]:
    """Whether the mount's daemon has passthrough on, and why not (None: unknown)."""
    try:
        stats = json.loads(os.getxattr(mountpoint, STATS_XATTR))
        return bool(stats["passthrough"]), str(stats.get("passthrough_reason", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None, "the daemon does not say"


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


# -- progress ---------------------------------------------------------------------


class Progress:
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
