"""A private mount namespace a test can change freely, and drive step by step.

`PrivateNamespace(setup)` starts `unshare --mount --propagation private`,
runs `setup` (shell, as root) in it, and keeps it alive with a holder
process. `run(...)` runs a command inside it (`nsenter --mount`), as root or
as another user (setpriv). What is mounted in it (tmpfs over /run, an
overlay over /usr/sbin, FUSE mounts...) is never seen by the host, and the
host's files are never changed: the namespace ends with its last process.

`close()` detaches every mount made in it after setup, waits for the
processes still running in it (cachefs daemons) to exit, SIGKILLs those that
do not, by pid, and then ends the holder. Only processes whose mount
namespace is this one are ever signalled: nothing else can be in it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from cachefs.kernel import mounting
from cachefs.kernel.mounting import MountInfo

PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = 65534
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 15.0
POLL_S = 0.05


def expose_to_others(paths: list[Path], aside_in: str = "/run/.exposed") -> str:
    """Shell (run as root in the namespace) making each of `paths` reachable
    by any user, without changing a permission on the host.

    The venv's interpreter may live where only root can look (a pyenv under
    /root, mode 0700). For each path behind such a folder, the path is
    bind-mounted aside, a tmpfs (0755) goes over the outermost folder others
    cannot search, and the path is bind-mounted back at its own name: the
    same absolute paths work, for every user, in this namespace only.
    `aside_in` must be on a filesystem private to the namespace (a tmpfs the
    setup mounted first)."""
    blocked: dict[Path, list[Path]] = {}
    for path in paths:
        path = path.resolve()
        for ancestor in reversed([path, *path.parents][1:]):
            if not os.stat(ancestor).st_mode & 0o001:
                blocked.setdefault(ancestor, []).append(path)
                break
    steps = [f"mkdir -p {aside_in}"]
    moves = []
    for i, path in enumerate(p for group in blocked.values() for p in group):
        aside = f"{aside_in}/{i}"
        steps += [f"mkdir {aside}", f"mount --rbind {shlex.quote(str(path))} {aside}"]
        moves.append((aside, path))
    for ancestor in blocked:
        steps.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(ancestor))}")
    for aside, path in moves:
        q = shlex.quote(str(path))
        steps += [f"mkdir -p {q}", f"mount --rbind {aside} {q}"]
    return " && ".join(steps)


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class PrivateNamespace:
    def __init__(self, setup: str = "true") -> None:
        self.setup = setup
        self._holder: subprocess.Popen[str] | None = None
        self.ns: str | None = None
        self._mounts_after_setup: set[str] = set()

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> PrivateNamespace:
        script = f"{self.setup} && echo ready && exec sleep infinity"
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-euc", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd="/", env={"PATH": PLAIN_PATH, "LANG": "C.UTF-8"},
        )
        line = self._holder.stdout.readline() if self._holder.stdout else ""
        if line.strip() != "ready":
            self._holder.wait(START_TIMEOUT_S)
            err = self._holder.stderr.read() if self._holder.stderr else ""
            self._holder = None
            raise RuntimeError(f"namespace setup failed: {err.strip()}")
        self.ns = _mount_ns(self._holder.pid)
        assert self.ns != _mount_ns(os.getpid()), "unshare did not make a new mount namespace"
        self._mounts_after_setup = {m for m, _ in self.mounts()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        holder = self._holder
        if holder is None:
            return
        try:
            # Newest first: a mount over another goes before it.
            for mountpoint, _fstype in reversed(self.mounts()):
                if mountpoint not in self._mounts_after_setup:
                    self.run("umount", "-l", mountpoint, timeout=EXIT_TIMEOUT_S)
            deadline = time.monotonic() + EXIT_TIMEOUT_S
            while self.processes(exclude=holder.pid) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            for pid in self.processes(exclude=holder.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._holder = None
            holder.kill()
            holder.wait(EXIT_TIMEOUT_S)
            for stream in (holder.stdout, holder.stderr):
                if stream:
                    stream.close()

    # -- inside ---------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self._holder is not None, "namespace not started"
        return self._holder.pid

    def run(self, *cmd: str | Path, user: int | None = None, env: dict[str, str] | None = None,
            timeout: float = COMMAND_TIMEOUT_S, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the namespace, as root or as uid/gid `user`."""
        argv = ["nsenter", f"--target={self.pid}", "--mount", "--"]
        if user is not None:
            argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        argv += [str(c) for c in cmd]
        if env is None:
            env = {"PATH": PLAIN_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env, cwd="/", input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def path(self, path: str | Path) -> Path:
        """`path` as seen in the namespace, for root in the test process."""
        return Path(f"/proc/{self.pid}/root") / str(path).lstrip("/")

    def mounts(self) -> list[tuple[str, str]]:
        """(mountpoint, fstype) of every mount in the namespace, in order."""
        return [(m.mountpoint, m.fstype) for m in mounting.mounts(f"/proc/{self.pid}/mountinfo")]

    def mount_of(self, mountpoint: str | Path) -> MountInfo | None:
        """The visible mount at exactly `mountpoint`."""
        found = None
        for info in mounting.mounts(f"/proc/{self.pid}/mountinfo"):
            if info.mountpoint == str(mountpoint):
                found = info
        return found

    def processes(self, exclude: int | None = None) -> list[int]:
        """Pids of the processes in this mount namespace (but `exclude`)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != exclude and _mount_ns(int(entry)) == self.ns:
                pids.append(int(entry))
        return pids


