"""cachefs side by side with other HTTP caching clients on the same data (issue 7).

One loopback nginx serves the data set of bench_core.py (a big file of random
bytes and many 16 KiB files). Each client mounts it in turn and gets the same
measurements, the columns of design.md's "Reference numbers":

- big file cold MB/s: fresh cache, new mount, source hot in the page cache;
- big file warm MB/s: the same cache after a remount, page cache dropped;
- big file hot MB/s: read again at once;
- small files cold files/s: fresh cache and mount, every file read once;
- ls -lR cold s: fresh cache and mount, `ls -lR` of the small-file tree.

Clients: cachefs always; "local disk" (the source files read directly, page
cache dropped) as the reference; with --add, other clients if installed:

- rclone: `rclone mount` of its http backend, --vfs-cache-mode full;
- httpdirfs: `httpdirfs --cache`.

Both read nginx's HTML index (they do not parse its JSON one). A client that
is not installed is skipped with a note (Debian: apt-get install rclone
httpdirfs; this script never installs anything). Other clients run as our
child processes in the foreground, are unmounted with umount and stopped by
pid; everything is removed at the end, also after an error or Ctrl-C.

    .venv/bin/python bench/bench_clients.py [--add rclone,httpdirfs|all]
        [--big-size MiB] [--small-count N] [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.benchmark.data import BIG_NAME, SMALL_DIR, FileSet, generate
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import fmt_number, format_table
from cachefs.benchmark.rig import MountBench, Rig
from cachefs.benchmark.system import (BenchError, KiB, MiB, drop_page_cache, is_mounted,
                                      lazy_unmount, make_hot, sequential_mbps,
                                      sigterm_as_interrupt, timed)
from cachefs.localstore.nginx import NginxError, NginxStore

SMALL_SIZE = 16 * KiB
MOUNT_WAIT_S = 60.0
EXIT_WAIT_S = 30.0
# Columns of the table, in order: key -> (title, unit).
FIGURES = {
    "big_cold": ("big file cold", "MB/s"),
    "big_warm": ("big file warm", "MB/s"),
    "big_hot": ("big file hot", "MB/s"),
    "small_cold": ("small files cold", "files/s"),
    "ls_cold": ("ls -lR cold", "s"),
    "mount": ("mount until it lists", "s"),
}


# -- clients --------------------------------------------------------------------------


@dataclass
class Client:
    """How one client mounts `store` at a mountpoint with a cache dir."""

    name: str
    label: str
    binary: str | None  # None: always available

    def available(self) -> bool:
        return self.binary is None or shutil.which(self.binary) is not None

    def version(self) -> str:
        if self.binary is None:
            return ""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             check=False)
        lines = (out.stdout + out.stderr).strip().splitlines()
        # httpdirfs prints its libraries' versions too: take the line naming it.
        mine = [line for line in lines if self.binary.lower() in line.lower()]
        return (mine or lines or ["?"])[0].strip()

    def argv(self, store: NginxStore, mountpoint: Path, cache: Path, work: Path) -> list[str]:
        """The foreground command that mounts; overridden per external client."""
        raise NotImplementedError


class Rclone(Client):
    def argv(self, store: NginxStore, mountpoint: Path, cache: Path, work: Path) -> list[str]:
        # An empty config file: the remote is given on the command line only.
        config = work / "rclone.conf"
        config.touch()
        return ["rclone", "mount", ":http:", str(mountpoint), "--config", str(config),
                "--http-url", store.html_url, "--vfs-cache-mode", "full",
                "--cache-dir", str(cache), "--read-only"]


class Httpdirfs(Client):
    def argv(self, store: NginxStore, mountpoint: Path, cache: Path, work: Path) -> list[str]:
        # httpdirfs 1.2.5's own range check fails against nginx, which does
        # answer ranged GETs with 206 (bench_core's curl and cachefs rely on
        # it); without --no-range-check it refuses to read any file.
        return ["httpdirfs", "-f", "--cache", "--no-range-check", "--cache-location", str(cache),
                # httpdirfs drops one trailing slash of the root URL; nginx needs it.
                store.html_url + "/", str(mountpoint)]


CACHEFS = Client("cachefs", "cachefs", None)
LOCAL = Client("local", "local disk", None)
EXTERNAL: dict[str, Client] = {
    "rclone": Rclone("rclone", "rclone mount (http, vfs full)", "rclone"),
    "httpdirfs": Httpdirfs("httpdirfs", "httpdirfs --cache", "httpdirfs"),
}


class ChildMount:
    """An external client run as our child in the foreground; mounted until stop()."""

    def __init__(self, argv: list[str], mountpoint: Path, log: Path) -> None:
        self.mountpoint = mountpoint
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not (is_mounted(mountpoint) and _lists(mountpoint)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text("utf-8", "replace").strip().splitlines()[-5:]
                self.stop()
                raise BenchError(f"{argv[0]} did not mount: {' | '.join(tail) or 'no output'}")
            time.sleep(0.05)

    def stop(self) -> None:
        """umount, wait for the process; kill it by pid only if it does not exit."""
        if is_mounted(self.mountpoint):
            done = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, check=False)
            if done.returncode != 0:
                lazy_unmount(self.mountpoint)
        try:
            self.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _lists(path: Path) -> bool:
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


# -- the benchmark ------------------------------------------------------------------------


class ClientBench(MountBench):
    def __init__(self, rig: Rig, store: NginxStore, files: FileSet) -> None:
        super().__init__(rig, store.url, Record())
        self.store = store
        self.files = files
        # client name -> figure key -> Series
        self.series: dict[str, dict[str, Series]] = {}
        self.children: list[ChildMount] = []

    def add(self, client: Client, key: str, value: float) -> None:
        title, unit = FIGURES[key]
        per = self.series.setdefault(client.name, {})
        per.setdefault(key, Series(title, unit)).add(value)

    @contextlib.contextmanager
    def shown_by(self, client: Client, cache: Path, *, time_mount: bool = False) -> Iterator[Path]:
        """The data as `client` shows it (for local disk: the source dir itself).

        `time_mount`: record the time from starting the client until its
        mount lists the root (the "mount" figure)."""
        if client is LOCAL:
            yield self.store.root
            return
        started = time.monotonic()
        if client is CACHEFS:
            self.mount(cache)
            if not _lists(self.mountpoint):
                raise BenchError("cachefs mounted, but its root does not list")
            if time_mount:
                self.add(client, "mount", time.monotonic() - started)
            try:
                yield self.mountpoint
            finally:
                self.unmount()
            return
        work = self.rig.workspace.path
        argv = client.argv(self.store, self.mountpoint, cache, work)
        child = ChildMount(argv, self.mountpoint, work / f"{client.name}.log")
        if time_mount:
            self.add(client, "mount", time.monotonic() - started)
        self.children.append(child)
        try:
            yield self.mountpoint
        finally:
            child.stop()
            self.children.remove(child)

    def log_tail(self, client: Client, lines: int = 3) -> str:
        log = self.rig.workspace.path / f"{client.name}.log"
        try:
            return " | ".join(log.read_text("utf-8", "replace").strip().splitlines()[-lines:])
        except OSError:
            return "none"

    def stop_children(self) -> None:
        for child in list(self.children):
            child.stop()

    def read_big(self, root: Path) -> float:
        return sequential_mbps(root / BIG_NAME, self.files.big_size, self.buf)

    def source_hot(self) -> None:
        make_hot([self.store.root / BIG_NAME, *self.files.small_paths(self.store.root)])
        os.sync()

    def run_once(self, client: Client, i: int) -> None:
        cache = self.rig.workspace.fresh_dir(f"cache-{client.name}-{i}")
        local = client is LOCAL
        if local:
            drop_page_cache()
        else:
            self.source_hot()
        with self.shown_by(client, cache) as root:
            self.add(client, "big_cold", self.read_big(root))
        with self.shown_by(client, cache) as root:
            drop_page_cache()
            self.add(client, "big_warm", self.read_big(root))
            self.add(client, "big_hot", self.read_big(root))
        self.rig.workspace.remove_dir(cache)

        cache = self.rig.workspace.fresh_dir(f"cache-{client.name}-{i}")
        drop_page_cache() if local else self.source_hot()
        with self.shown_by(client, cache) as root:
            paths = self.files.small_paths(root)
            seconds, _ = timed(make_hot, paths)
            self.add(client, "small_cold", len(paths) / seconds)
        self.rig.workspace.remove_dir(cache)

        cache = self.rig.workspace.fresh_dir(f"cache-{client.name}-{i}")
        if local:
            drop_page_cache()
        with self.shown_by(client, cache, time_mount=True) as root:
            seconds, out = timed(subprocess.run, ["ls", "-lR", str(root / SMALL_DIR)],
                                 capture_output=True, text=True, check=True)
            listed = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
            if listed != len(self.files.small):
                raise BenchError(f"{client.name}: ls -lR listed {listed} files, "
                                 f"not {len(self.files.small)}")
            self.add(client, "ls_cold", seconds)
        self.rig.workspace.remove_dir(cache)


# -- report -------------------------------------------------------------------------------


def render(bench: ClientBench, clients: list[Client], notes: list[str], header: str) -> str:
    rows = []
    for client in clients:
        per = bench.series.get(client.name, {})
        row = [client.label]
        for key, (_title, unit) in FIGURES.items():
            s = per.get(key)
            digits = 2 if unit == "s" else 0
            if s is None or s.median is None:
                row.append("n/a")
            else:
                row.append(f"{fmt_number(s.median, digits)} ({fmt_number(s.low, digits)}-"
                           f"{fmt_number(s.high, digits)})")
        rows.append(row)
    head = ["client", *(f"{t} {u}" for t, u in FIGURES.values())]
    return "\n".join([header, "", format_table(head, rows), "",
                      "median (min-max) of the runs; warm = cache complete, page cache dropped; "
                      "hot = page cache kept.", *notes])


def choose_clients(wanted: str) -> tuple[list[Client], list[str]]:
    names = [] if not wanted else (list(EXTERNAL) if wanted == "all" else wanted.split(","))
    clients, notes = [LOCAL, CACHEFS], []
    for name in names:
        client = EXTERNAL.get(name.strip())
        if client is None:
            raise BenchError(f"unknown client {name!r}; known: {', '.join(EXTERNAL)}")
        if client.available():
            clients.append(client)
        else:
            notes.append(f"skipped {name}: not installed (Debian: apt-get install {client.binary})")
    return clients, notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--add", default="", metavar="LIST",
                   help=f"other clients to measure, comma-separated ({', '.join(EXTERNAL)}) or 'all'")
    p.add_argument("--big-size", type=int, default=256, metavar="MiB", help="big file (default 256)")
    p.add_argument("--small-count", type=int, default=500, metavar="N",
                   help="16 KiB files (default 500)")
    p.add_argument("--runs", type=int, default=3, metavar="N", help="repetitions (default 3)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all raw numbers here")
    args = p.parse_args(argv)
    if min(args.big_size, args.small_count, args.runs) < 1:
        p.error("--big-size, --small-count and --runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_interrupt()
    try:
        clients, notes = choose_clients(args.add)
        with Rig("cachefs-clients-") as rig:
            print(f"generating {args.big_size} MiB + {args.small_count} x 16 KiB in "
                  f"{rig.workspace.path} ...", file=sys.stderr, flush=True)
            source = rig.workspace.fresh_dir("store")
            files = generate(source, args.big_size * MiB, args.small_count, SMALL_SIZE)
            store = rig.serve(NginxStore(source, rig.workspace.fresh_dir("nginx")))
            bench = ClientBench(rig, store, files)
            rig.callback(bench.stop_children)
            load = [os.getloadavg()[0]]
            failed: set[str] = set()
            for i in range(args.runs):
                # Clients take turns within a run, so drift spreads over all of them.
                for client in clients:
                    if client.name in failed:
                        continue
                    print(f"run {i + 1}/{args.runs}: {client.label} ...", file=sys.stderr, flush=True)
                    try:
                        bench.run_once(client, i)
                    except (BenchError, OSError, subprocess.CalledProcessError) as e:
                        if client is CACHEFS or client is LOCAL:
                            raise
                        # Another client failing says something about it, not
                        # about cachefs: note it and go on with the others.
                        failed.add(client.name)
                        notes.append(f"{client.name} failed in run {i + 1}: {e}; "
                                     f"log: {bench.log_tail(client)}")
            load.append(os.getloadavg()[0])
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (BenchError, NginxError, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    versions = [f"{c.name}: {c.version()}" for c in clients if c.binary]
    notes = [*notes, f"versions: {'; '.join(versions)}" if versions else "",
             f"load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end "
             f"({os.cpu_count()} CPUs)"]
    header = (f"clients side by side: big file {args.big_size} MiB, {args.small_count} x 16 KiB, "
              f"nginx on loopback, {args.runs} runs (MB = 10^6 bytes)")
    print(render(bench, clients, [n for n in notes if n], header))
    if args.json:
        report: dict[str, Any] = {
            "config": vars(args) | {"json": str(args.json)},
            "clients": {c.name: {k: {"runs": s.values, "median": s.median, "min": s.low,
                                     "max": s.high, "unit": s.unit}
                                 for k, s in bench.series.get(c.name, {}).items()}
                        for c in clients},
            "notes": notes,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
