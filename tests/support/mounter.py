"""Real mounts for the e2e tests, and the helpers they share.

`Mounter` runs the real `cachefs mount` (detached, or `--foreground` as a
child) and tears down every mount it made, even one whose daemon a test
killed; its watchdog kills a test's daemons past TEST_DEADLINE_S so a hung
FUSE read fails instead of hanging the run. `Tree` is the generated source
tree and what a reader must see through a mount. Processes are only ever
signalled by pid: a daemon's pid comes from the state file it writes for a
mount made here. The e2e conftest wraps these in fixtures (`mount`, `tree`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from cachefs.kernel.mounting import MountInfo, find_mount
from cachefs.localstore import TreeSpec
from cachefs.runtime import runtime_dir

CACHEFS = Path(sys.executable).parent / "cachefs"
# Where the daemon records each mount: {"mountpoint", "pid", "source", "cache_dir"}
# (/run/cachefs/mounts as root).
STATE_DIR = runtime_dir()
FUSECTL_DIR = Path("/sys/fs/fuse/connections")

READ_PIECE = 1024 * 1024
MOUNT_TIMEOUT_S = 60.0
UMOUNT_TIMEOUT_S = 30.0
# A daemon should exit on its own soon after its mount goes away.
DAEMON_EXIT_TIMEOUT_S = 10.0
# A hung FUSE read cannot be interrupted from Python; past this, the watchdog
# kills the test's daemons so blocked reads fail with ENOTCONN instead.
TEST_DEADLINE_S = 300.0
POLL_S = 0.05
# Lines of each daemon log attached to a failed test's report.
LOG_TAIL_LINES = 40
# The state file should exist when `cachefs mount` returns; allow some slack.
STATE_FILE_WAIT_S = 2.0


# -- helpers on paths and processes --------------------------------------------


def sha256_of(path: Path, piece: int = READ_PIECE) -> str:
    """Hash a file with plain sequential reads, as cat would read it."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(piece):
            digest.update(chunk)
    return digest.hexdigest()


def mount_info(path: Path) -> MountInfo | None:
    """The mount at exactly `path` (mountinfo's minor number of a FUSE mount is
    its connection id under fusectl)."""
    return find_mount(path)


def is_mounted(path: Path) -> bool:
    return find_mount(path) is not None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited as far as we care.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_cachefs_process(pid: int) -> bool:
    # Guards against pid reuse before we signal a pid read from a file.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"cachefs" in cmdline


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()


def run(
    cmd: list[str | Path], timeout: float, *, env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False,
        env=env, cwd=cwd,
    )


def default_cache_dir_in(env: dict[str, str]) -> Path:
    """The README's default cache dir for a command run with `env`."""
    return Path(env.get("XDG_CACHE_HOME") or Path(env["HOME"]) / ".cache") / "cachefs"



# -- the tree ------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """The generated source tree and what a reader must see through a mount."""

    root: Path
    spec: TreeSpec
    hashes: dict[str, str]

    @property
    def files(self) -> list[str]:
        return sorted(self.hashes)

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def read(self, rel: str, start: int, count: int) -> bytes:
        """Source bytes [start, start+count) of a file, short at EOF."""
        with open(self.root / rel, "rb") as f:
            return os.pread(f.fileno(), count, start)

    @staticmethod
    def sha256_of(path: Path) -> str:
        return sha256_of(path)


# -- mounts --------------------------------------------------------------------


def _find_logs(top: Path) -> list[Path]:
    """daemon.log files below `top`, stepping around mounts (a dead one fails
    every access with ENOTCONN)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        found += [Path(dirpath) / f for f in filenames if f == "daemon.log"]
    return found


@dataclass
class Mounted:
    mountpoint: Path
    cache_dir: Path
    source: str
    pid: int | None
    # Set for `cachefs mount --foreground`: the daemon is then our child.
    process: subprocess.Popen[bytes] | None = None


class Mounter:
    """Makes real mounts for one test, and tears every one of them down."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounts: list[Mounted] = []  # still to be torn down
        self._made: list[Mounted] = []  # every mount made, for remove_caches
        self._count = 0
        self._watchdog = threading.Timer(TEST_DEADLINE_S, self._abort_all)
        self._watchdog.daemon = True
        self._watchdog.start()

    def new_dir(self, prefix: str) -> Path:
        self._count += 1
        path = self.base / f"{prefix}{self._count}"
        path.mkdir(parents=True)
        return path

    def run_mount(
        self, source: str, mountpoint: Path, cache_dir: Path | None, *extra_args: str,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cachefs mount`, whatever its outcome; a mount it made is tracked.

        `cache_dir` None: no --cache-dir, the default one for `env`."""
        cache_option = [] if cache_dir is None else ["--cache-dir", cache_dir]
        if cache_dir is None:
            cache_dir = default_cache_dir_in(os.environ if env is None else env)
        cmd = [CACHEFS, "mount", source, mountpoint, *cache_option, *extra_args]
        try:
            result = run(cmd, MOUNT_TIMEOUT_S, env=env, cwd=cwd)
        finally:
            # Even a failed or timed-out command may have left a mount.
            if is_mounted(mountpoint) and not any(
                m.mountpoint == mountpoint for m in self.mounts
            ):
                self._track(Mounted(mountpoint, cache_dir, source, self._find_pid(mountpoint)))
        return result

    def __call__(self, source: str, cache_dir: Path | None = None, *extra_args: str) -> Path:
        """Mount `source` on a new mountpoint and return it; fail if that fails."""
        mountpoint = self.new_dir("mnt")
        cache_dir = cache_dir or self.base / f"cache{self._count}"
        result = self.run_mount(source, mountpoint, cache_dir, *extra_args)
        assert result.returncode == 0, (
            f"cachefs mount exited {result.returncode}\nstderr: {result.stderr}\n"
            f"stdout: {result.stdout}\n{self.log_tails([cache_dir])}"
        )
        assert is_mounted(mountpoint), "cachefs mount returned 0 but nothing is mounted"
        return mountpoint

    @staticmethod
    def is_mounted(path: Path) -> bool:
        return is_mounted(path)

    def log_tails(self, cache_dirs: list[Path] | None = None) -> str:
        """The end of every daemon log under the given (default: all) cache dirs."""
        if cache_dirs is None:
            cache_dirs = [self.base]  # every cache dir this test made lies below
        parts = []
        for cache_dir in cache_dirs:
            for log in sorted(_find_logs(Path(cache_dir))):
                lines = log.read_text("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
                parts.append(f"--- {log}\n" + "\n".join(lines))
        return "\n".join(parts)

    def start_foreground(
        self, source: str, cache_dir: Path | None = None, *extra_args: str
    ) -> tuple[Path, subprocess.Popen[bytes]]:
        """Run `cachefs mount --foreground` as our child; return once mounted."""
        mountpoint = self.new_dir("mnt")
        cache_dir = cache_dir or self.base / f"cache{self._count}"
        log_path = self.base / f"foreground{self._count}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(CACHEFS), "mount", "--foreground", source, str(mountpoint),
                 "--cache-dir", str(cache_dir), *extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self._track(Mounted(mountpoint, cache_dir, source, process.pid, process))
        ready = wait_until(
            lambda: is_mounted(mountpoint) or process.poll() is not None, MOUNT_TIMEOUT_S
        )
        output = log_path.read_text("utf-8", "replace")
        assert ready and is_mounted(mountpoint), f"foreground mount failed:\n{output}"
        return mountpoint, process

    def get(self, mountpoint: Path) -> Mounted:
        for m in self.mounts:
            if m.mountpoint == mountpoint:
                return m
        raise KeyError(mountpoint)

    def daemon_pid(self, mountpoint: Path) -> int:
        mounted = self.get(mountpoint)
        if mounted.pid is None:
            mounted.pid = self._find_pid(mountpoint)
        assert mounted.pid is not None, f"no daemon state file in {STATE_DIR} for {mountpoint}"
        return mounted.pid

    def umount(self, mountpoint: Path) -> subprocess.CompletedProcess[str]:
        """`cachefs umount`, asserting it worked; the daemon then exits by itself."""
        result = run([CACHEFS, "umount", mountpoint], UMOUNT_TIMEOUT_S)
        assert result.returncode == 0, f"cachefs umount failed: {result.stderr}"
        assert not is_mounted(mountpoint), "cachefs umount returned 0 but still mounted"
        return result

    def cleanup(self, mountpoint: Path) -> None:
        """Unmount by any means, even a dead mount; stop its daemon if it stays."""
        mounted = self.get(mountpoint)
        if mounted.pid is None:
            mounted.pid = self._find_pid(mountpoint)
        if is_mounted(mountpoint):
            with contextlib.suppress(subprocess.TimeoutExpired):
                run([CACHEFS, "umount", mountpoint], UMOUNT_TIMEOUT_S)
        if is_mounted(mountpoint):
            # A dead daemon's mount, or a hung one: detach it regardless.
            self._abort_connection(mountpoint)
            run(["umount", "-l", mountpoint], UMOUNT_TIMEOUT_S)
        pid = mounted.pid
        if (
            pid is not None
            and pid_alive(pid)
            and _is_cachefs_process(pid)
            and not wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT_S)
        ):
            warnings.warn(f"cachefs daemon {pid} still running after unmount; killing it",
                          stacklevel=2)
            os.kill(pid, signal.SIGKILL)
        if mounted.process is not None:
            mounted.process.wait(DAEMON_EXIT_TIMEOUT_S)  # reap our child
        self.mounts.remove(mounted)

    def close(self) -> None:
        self._watchdog.cancel()
        errors = []
        for mounted in reversed(list(self.mounts)):
            try:
                self.cleanup(mounted.mountpoint)
            except Exception as exc:  # keep unmounting the others
                errors.append(f"{mounted.mountpoint}: {exc!r}")
        leftovers = [str(m) for m in self.mounts if is_mounted(m.mountpoint)]
        assert not leftovers and not errors, f"teardown failed: {errors} {leftovers}"

    def remove_caches(self) -> None:
        """Delete the cache dirs of this test's mounts (all unmounted by now)."""
        for cache_dir in {m.cache_dir for m in self._made}:
            if cache_dir.is_relative_to(self.base):
                shutil.rmtree(cache_dir, ignore_errors=True)

    # -- internals --

    def _track(self, mounted: Mounted) -> None:
        self.mounts.append(mounted)
        self._made.append(mounted)

    def _find_pid(self, mountpoint: Path) -> int | None:
        """The daemon pid from its state file, waiting briefly for it to appear."""
        target = os.path.abspath(mountpoint)

        def lookup() -> int | None:
            for state_file in STATE_DIR.glob("*.json"):
                try:
                    state = json.loads(state_file.read_text())
                except (OSError, ValueError):
                    continue  # being written or removed
                if os.path.abspath(state.get("mountpoint", "")) == target:
                    return int(state["pid"])
            return None

        wait_until(lambda: lookup() is not None, STATE_FILE_WAIT_S)
        return lookup()

    def _abort_connection(self, mountpoint: Path) -> None:
        # Aborting the FUSE connection fails every pending and future request,
        # so readers blocked on a hung daemon return and umount can proceed.
        info = mount_info(mountpoint)
        if info is None:
            return
        abort = FUSECTL_DIR / str(info.device[1]) / "abort"
        # Without fusectl mounted this fails; killing the daemon does the same.
        with contextlib.suppress(OSError):
            abort.write_text("1")

    def _abort_all(self) -> None:
        warnings.warn(f"test exceeded {TEST_DEADLINE_S:g}s; aborting its mounts", stacklevel=2)
        for mounted in list(self.mounts):
            pid = mounted.pid
            if pid is not None and pid_alive(pid) and _is_cachefs_process(pid):
                os.kill(pid, signal.SIGKILL)
            self._abort_connection(mounted.mountpoint)
