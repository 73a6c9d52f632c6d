"""A first run on a fresh machine, with whichever cachefs this Python imports.

    python tests/fresh_machine.py [--cachefs PATH]

Runs the `cachefs` command next to this interpreter (or PATH) the way a new
user would, on state no earlier run can have left:

- in a private mount namespace (`unshare --mount --propagation private`) with
  an empty tmpfs over /run, as after a boot: no /run/cachefs at all, and the
  host's /run is neither seen nor touched;
- with a new, empty HOME and a minimal environment (no XDG_* variable, no
  proxy, no PYTHON* variable), so the default cache dir ~/.cache/cachefs
  does not exist yet;
- from a working directory that holds no `cachefs` package.

Then: a generated tree served by the package's own local nginx
(cachefs.localstore) is mounted with the default cache dir, listed by `cachefs
status`, fetched whole by `cachefs prefetch`, read back file by file and
compared by sha256 with the tree (no data request may reach nginx: the
prefetch cached it all), unmounted with `cachefs umount`; a second mount finds
the cache it left and reads everything again from it. Each check prints one
line; the first failure ends the run with exit status 1.

CI runs it against a wheel installed in a new virtualenv
(.ci/smoke-fresh-install); tests/test_fresh_state.py runs it against the
development install. Everything it starts is stopped by pid and its temp
dir removed, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND_TIMEOUT_S = 60.0
DAEMON_EXIT_TIMEOUT_S = 10.0
# What a login shell on Debian starts with; /usr/sbin holds nginx.
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FSTYPE = "fuse.cachefs"
TAG = "fresh-machine"


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"{TAG}: {message}", flush=True)


def check(condition: object, what: str, detail: object = "") -> None:
    """One named check: print it when it holds, stop the run when not."""
    if not condition:
        raise CheckFailed(f"{what}" + (f"\n{detail}" if detail != "" else ""))
    say(f"ok   {what}")


# -- outside the namespace ----------------------------------------------------------


def outside(cachefs: Path) -> int:
    """Set up the fresh state, run `inside` in a private mount namespace, clean up."""
    work = Path(tempfile.mkdtemp(prefix="cachefs-fresh-"))
    home = work / "home"
    home.mkdir(mode=0o700)
    env = {"PATH": PLAIN_PATH, "HOME": str(home), "LANG": "C.UTF-8",
           "USER": os.environ.get("USER", "root"), "LOGNAME": os.environ.get("LOGNAME", "root")}
    cmd = ["unshare", "--mount", "--propagation", "private", "--",
           sys.executable, os.path.abspath(__file__), "--inside", str(work), "--cachefs", str(cachefs)]
    try:
        # A neutral working directory: `python -m` would import a cachefs/ found there.
        return subprocess.run(cmd, env=env, cwd=work, stdin=subprocess.DEVNULL, check=False).returncode
    finally:
        _stop_leftovers(work / "pids")
        shutil.rmtree(work, ignore_errors=True)


def _stop_leftovers(pids_file: Path) -> None:
    """Stop what the inside run started and did not stop (it was killed, say).

    Only pids it recorded, and only while they still run the program
    recorded with them: a reused pid is left alone. SIGTERM first (nginx's
    master then stops its workers; a daemon unmounts), SIGKILL for what is
    left, children included. A daemon keeps its mount namespace, and the
    mount in it, alive: it must go.
    """
    try:
        lines = pids_file.read_text().splitlines()
    except FileNotFoundError:
        return
    targets: list[int] = []
    for line in lines:
        pid, _, marker = line.partition(" ")
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and _alive(int(pid)):
            say(f"stopping leftover pid {pid} ({marker})")
            targets += [int(pid), *_children_of(int(pid))]
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT_S
    while any(_alive(pid) for pid in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in targets:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == parent:
                    children.append(int(entry.name))
    return children


# -- inside the namespace -----------------------------------------------------------


def mount_type(path: Path) -> str | None:
    """The filesystem type mounted at exactly `path`, from mountinfo."""
    from cachefs.kernel.mounting import find_mount  # the cachefs under test, imported late like the rest

    info = find_mount(path)
    return info.fstype if info else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def walk(top: Path) -> tuple[set[str], set[str]]:
    """Relative paths of the files and of the directories under `top`."""
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for name in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, name)))
        for name in filenames:
            files.add(os.path.normpath(os.path.join(rel, name)))
    return files, dirs


def private_mode(path: Path) -> str:
    st = path.lstat()
    return f"{path}: mode {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid}"


def is_private(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


class Inside:
    def __init__(self, work: Path, cachefs: Path) -> None:
        self.work = work
        self.cachefs = cachefs
        self.home = Path(os.environ["HOME"])
        self.pids_file = work / "pids"
        self.mountpoints: list[Path] = []
        self.daemons: list[int] = []

    def record_pid(self, pid: int, marker: str) -> None:
        with open(self.pids_file, "a") as f:
            f.write(f"{pid} {marker}\n")

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.cachefs), *map(str, args)]
        say("run  " + " ".join(cmd).replace(str(self.work), "$WORK"))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)

    def main(self) -> None:
        self.fresh_state()
        from cachefs.localstore import NginxStore, demo_spec, make_tree

        tree = self.work / "tree"
        hashes = make_tree(tree, demo_spec())
        tree_files, tree_dirs = walk(tree)
        check(tree_files == set(hashes), f"generated a tree of {len(hashes)} files, "
              f"{sum((tree / f).stat().st_size for f in hashes)} bytes")
        idle = self.run("status")
        check(idle.returncode == 0 and idle.stdout.strip() == "no cachefs mounts"
              and not Path("/run/cachefs").exists(),
              "before any mount, cachefs status says: no cachefs mounts (and creates nothing)",
              f"exit {idle.returncode}\n{idle.stdout}{idle.stderr}")
        with NginxStore(tree, self.work / "nginx") as store:
            self.record_pid(store.pid, "nginx")
            check(store.pid is not None, f"local nginx (pid {store.pid}) serves it at {store.url}")
            try:
                self.first_mount(store, tree, hashes, tree_dirs)
                self.second_mount(store, hashes)
            finally:
                self.cleanup()

    def fresh_state(self) -> None:
        import cachefs

        say(f"cachefs package: {Path(cachefs.__file__).parent}")
        say(f"cachefs command: {self.cachefs}")
        say(f"WORK={self.work}")
        check(mount_type(Path("/run")) == "tmpfs" and not Path("/run/cachefs").exists(),
              "/run is a new tmpfs: /run/cachefs does not exist")
        check(not any(self.home.iterdir()), f"HOME is a new empty dir ({self.home})")
        leftover = sorted(k for k in os.environ if k.startswith(("XDG_", "PYTHON")) or "proxy" in k.lower())
        check(not leftover, "no XDG_*, PYTHON* or proxy variable is set", leftover)
        check(not (Path.cwd() / "cachefs").exists(), f"the working dir {Path.cwd()} holds no cachefs package")

    def mount(self, store, name: str) -> Path:
        mountpoint = self.work / name
        mountpoint.mkdir()
        result = self.run("mount", store.url, mountpoint)
        if mount_type(mountpoint) is not None:
            self.mountpoints.append(mountpoint)
        check(result.returncode == 0 and mount_type(mountpoint) == FSTYPE,
              f"cachefs mount (default cache dir) mounted {FSTYPE} on {name}",
              f"exit {result.returncode}, mounted: {mount_type(mountpoint)}\n{result.stderr}"
              + self.daemon_logs())
        return mountpoint

    def daemon_pid(self, mountpoint: Path) -> int | None:
        for state in Path("/run/cachefs/mounts").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(state.read_text())
                if info["mountpoint"] == str(mountpoint):
                    return int(info["pid"])
        return None

    def first_mount(self, store, tree: Path, hashes: dict[str, str], tree_dirs: set[str]) -> None:
        mountpoint = self.mount(store, "mnt")
        runtime = Path("/run/cachefs/mounts")
        check(runtime.is_dir() and is_private(runtime.parent) and is_private(runtime),
              "the daemon created /run/cachefs/mounts, mode 0700",
              "\n".join(private_mode(p) for p in (runtime.parent, runtime) if p.exists()))
        pid = self.daemon_pid(mountpoint)
        check(pid is not None, f"the daemon (pid {pid}) registered the mount in {runtime}",
              sorted(os.listdir(runtime)))
        self.record_pid(pid, "cachefs")
        self.daemons.append(pid)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        interpreter = Path(os.fsdecode(argv[0]))
        check(interpreter.parent == self.cachefs.parent,
              f"the daemon runs the Python of the command's own environment ({interpreter})",
              b" ".join(argv).decode(errors="replace"))
        cache_dir = self.home / ".cache" / "cachefs"
        check(cache_dir.is_dir() and is_private(cache_dir),
              "the default cache dir $HOME/.cache/cachefs was created, mode 0700",
              private_mode(cache_dir) if cache_dir.exists() else f"{cache_dir} does not exist")
        folders = [p for p in cache_dir.iterdir() if p.is_dir()]
        check(len(folders) == 1 and (folders[0] / "state.db").is_file(),
              f"it holds the source's folder {folders[0].name if folders else None}", folders)

        status = self.run("status", "--json")
        entries = json.loads(status.stdout) if status.returncode == 0 else []
        check(status.returncode == 0 and [e.get("mountpoint") for e in entries] == [str(mountpoint)]
              and entries[0]["pid"] == pid and entries[0]["cache_dir"] == str(folders[0]),
              "cachefs status lists exactly this mount, its daemon and its cache folder",
              f"exit {status.returncode}\n{status.stdout}{status.stderr}")
        text = self.run("status", mountpoint)
        check(text.returncode == 0 and str(folders[0]) in text.stdout and store.url in text.stdout,
              "cachefs status MOUNTPOINT names the source and the cache dir", text.stdout + text.stderr)

        total = sum((tree / rel).stat().st_size for rel in hashes)
        prefetch = self.run("prefetch", mountpoint, "--json")
        summary = json.loads(prefetch.stdout) if prefetch.returncode == 0 else {}
        check(prefetch.returncode == 0 and summary.get("state") == "done" and not summary.get("failures")
              and summary.get("files_total") == len(hashes) and summary.get("files_done") == len(hashes)
              and summary.get("bytes_fetched") == total,
              f"cachefs prefetch fetched all {len(hashes)} files, {total} bytes",
              f"exit {prefetch.returncode}\n{prefetch.stdout}{prefetch.stderr}")

        store.clear_access_log()
        self.read_back(mountpoint, hashes, tree_dirs)
        fetched = [e.raw_uri for e in store.access_log() if not e.is_listing]
        check(not fetched, "no file data was fetched while reading back: it all came from the cache",
              fetched[:10])
        self.umount(mountpoint, pid)

    def read_back(self, mountpoint: Path, hashes: dict[str, str], tree_dirs: set[str] | None = None) -> None:
        files, dirs = walk(mountpoint)
        check(files == set(hashes), f"the mount lists the same {len(hashes)} files",
              f"missing {sorted(set(hashes) - files)[:10]}, extra {sorted(files - set(hashes))[:10]}")
        if tree_dirs is not None:
            check(dirs == tree_dirs, f"and the same {len(tree_dirs)} directories",
                  f"missing {sorted(tree_dirs - dirs)[:10]}, extra {sorted(dirs - tree_dirs)[:10]}")
        wrong = [rel for rel in sorted(hashes) if sha256_of(mountpoint / rel) != hashes[rel]]
        check(not wrong, f"every file reads back byte-identical (sha256 of {len(hashes)} files)", wrong[:10])

    def umount(self, mountpoint: Path, pid: int) -> None:
        result = self.run("umount", mountpoint)
        check(result.returncode == 0 and mount_type(mountpoint) is None,
              "cachefs umount unmounted it", f"exit {result.returncode}\n{result.stderr}")
        self.mountpoints.remove(mountpoint)
        check(not _alive(pid), f"its daemon (pid {pid}) has exited")
        check(self.daemon_pid(mountpoint) is None, "and its registration is gone from /run/cachefs/mounts")
        idle = self.run("status")
        check(idle.returncode == 0 and idle.stdout.strip() == "no cachefs mounts",
              "cachefs status: no cachefs mounts", idle.stdout + idle.stderr)

    def second_mount(self, store, hashes: dict[str, str]) -> None:
        mountpoint = self.mount(store, "mnt-again")
        pid = self.daemon_pid(mountpoint)
        check(pid is not None, f"a second daemon (pid {pid}) registered")
        self.record_pid(pid, "cachefs")
        self.daemons.append(pid)
        store.clear_access_log()
        self.read_back(mountpoint, hashes)
        fetched = [e.raw_uri for e in store.access_log() if not e.is_listing]
        check(not fetched, "the second mount read everything from the cache the first one left",
              fetched[:10])
        self.umount(mountpoint, pid)

    def daemon_logs(self) -> str:
        logs = sorted((self.home / ".cache" / "cachefs").glob("*/daemon.log"))
        return "".join(f"\n--- {log}\n" + "\n".join(log.read_text("utf-8", "replace").splitlines()[-20:])
                       for log in logs)

    def cleanup(self) -> None:
        for mountpoint in list(self.mountpoints):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run("umount", mountpoint)
            if mount_type(mountpoint) is not None:
                subprocess.run(["umount", "-l", str(mountpoint)], check=False)
            say(f"cleanup: unmounted {mountpoint}")
        for pid in self.daemons:
            deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT_S
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid) and b"cachefs" in Path(f"/proc/{pid}/cmdline").read_bytes():
                say(f"cleanup: killing daemon {pid}")
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def inside(work: Path, cachefs: Path) -> int:
    # Our own, empty /run: only this namespace sees it.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", "/run"], check=True)
    started = time.monotonic()
    try:
        Inside(work, cachefs).main()
    except CheckFailed as e:
        say(f"FAIL {e}")
        return 1
    except Exception as e:
        say(f"FAIL {type(e).__name__}: {e}")
        raise
    say(f"passed in {time.monotonic() - started:.1f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cachefs", type=Path, default=Path(sys.executable).parent / "cachefs",
                        help="the cachefs command to run (default: the one next to this Python)")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside is not None:
        return inside(args.inside, args.cachefs)
    if os.geteuid() != 0:
        say("FAIL needs root (a mount namespace, a tmpfs over /run, FUSE mounts)")
        return 2
    return outside(args.cachefs.absolute())


if __name__ == "__main__":
    sys.exit(main())
