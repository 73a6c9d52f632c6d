"""Passthrough benchmark of cachefs against a local nginx (issue 3).

One run generates a big file of random bytes in a temp dir, serves it with a
loopback nginx, makes it complete in a fresh cache by reading it once through
a `cachefs` mount, and then compares reads of it through the mount, where the
kernel reads the cache file itself (FOPEN_PASSTHROUGH), with native reads of
that cache file:

- sequential read in 1 MiB reads, MB/s: page cache dropped, and hot;
- 4 KiB random reads, reads/s (fio if installed, else a Python pread loop;
  the same offsets and count for every path): page cache dropped, and hot;
- the same through a mount with --no-passthrough (the daemon serves the
  reads, with FOPEN_KEEP_CACHE), for contrast.

Each figure is the median of --runs repetitions, with min and max; mount and
native alternate which goes first. Issue 3's target is >= 0.95x native for
each passthrough figure. The daemon's FUSE_READ counter is read before and
after every passthrough measurement and must not move. The bytes are checked
once: sha256 through the mount, of the cache file and of the source must
agree. Everything made (mounts, nginx, data) is removed at the end, also on
errors and Ctrl-C.

    .venv/bin/python bench/bench_passthrough.py [--big-size MiB] [--runs N]
        [--rand-cold-count N] [--rand-hot-count N] [--seed N]
        [--rand-tool auto|fio|python] [--json FILE]

fio is optional (Debian: apt-get install -y fio); this script never installs
anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.benchmark.data import BIG_NAME, data_gets, write_random_file
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import fmt_number, format_table, load_line, script_document
from cachefs.benchmark.rig import MountBench, Rig, require_tools, run_script
from cachefs.benchmark.system import (MB, RAND_BLOCK, BenchError, MiB, cache_state, daemon_stats,
                                      drop_page_cache, hash_whole, make_hot, random_offsets,
                                      sequential_mbps, wait_cache_file)
from cachefs.localstore.nginx import NginxStore

# Issue 3's target, judged on the median: passthrough >= 0.95x native.
TARGET_RATIO = 0.95

# The measured ways to read the file, in table order.
NATIVE = "native"
PASSTHROUGH = "passthrough"
NO_PASSTHROUGH = "no_passthrough"
PATH_LABELS = {
    NATIVE: "native read of the cache file",
    PASSTHROUGH: "mount, passthrough",
    NO_PASSTHROUGH: "mount, --no-passthrough",
}
# figure key -> (title, unit)
FIGURES = {
    "seq_cold": ("sequential 1 MiB reads, page cache dropped", "MB/s"),
    "seq_hot": ("sequential 1 MiB reads, hot", "MB/s"),
    "rand_cold": ("4 KiB random reads, page cache dropped", "reads/s"),
    "rand_hot": ("4 KiB random reads, hot", "reads/s"),
}


# -- random reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class RandomReader:
    """4 KiB random reads of one file: `count` reads at offsets fixed by `seed`.

    With fio: one job, psync, iodepth 1, buffered, `randseed` fixed, so every
    path sees the same offset sequence. `invalidate=0` keeps fio from dropping
    the file's page cache itself (it would, by default, and only the native
    file's), and `fadvise_hint=0` keeps it from advising POSIX_FADV_RANDOM,
    which reaches a native file's readahead state but not the backing file
    behind a passthrough one; both paths then read with the kernel's default
    readahead. The Python fallback does the same: os.pread of 4 KiB at
    4 KiB-aligned offsets drawn from random.Random(seed).
    """

    tool: str  # "fio" or "python"
    seed: int

    @property
    def description(self) -> str:
        if self.tool == "fio":
            return (f"{fio_version()} (randread, psync, iodepth 1, buffered, randseed {self.seed}, "
                    "invalidate=0, fadvise_hint=0)")
        return f"Python os.pread loop (random.Random({self.seed}), 4 KiB-aligned offsets)"

    def run(self, path: Path, size: int, count: int) -> float:
        """Do the reads; return reads/s."""
        if self.tool == "fio":
            return self._fio(path, size, count)
        return self._python(path, size, count)

    def _fio(self, path: Path, size: int, count: int) -> float:
        if ":" in str(path):
            raise BenchError(f"fio cannot take a file name with ':' in it: {path}")
        out = subprocess.run(
            ["fio", "--name=randread", f"--filename={path}", "--readonly", "--rw=randread",
             f"--bs={RAND_BLOCK}", "--ioengine=psync", "--iodepth=1", "--numjobs=1",
             "--invalidate=0", "--fadvise_hint=0", "--norandommap", "--randrepeat=0",
             f"--randseed={self.seed}", f"--size={size}", f"--io_size={count * RAND_BLOCK}",
             "--output-format=json"],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise BenchError(f"fio failed (rc {out.returncode}): {out.stderr.strip()[-500:]}")
        try:
            # fio may print notes before the JSON document.
            job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError) as e:
            raise BenchError(f"cannot parse fio's output: {e}") from e
        read = job["read"]
        if job.get("error") or read["total_ios"] != count:
            raise BenchError(f"fio on {path}: error {job.get('error')}, "
                             f"{read['total_ios']} of {count} reads")
        return read["total_ios"] / (read["runtime"] / 1000.0)  # runtime is in ms

    def _python(self, path: Path, size: int, count: int) -> float:
        offsets = random_offsets(self.seed, size, count)
        fd = os.open(path, os.O_RDONLY)
        try:
            pread = os.pread
            start = time.perf_counter()
            short = sum(1 for off in offsets if len(pread(fd, RAND_BLOCK, off)) != RAND_BLOCK)
            seconds = time.perf_counter() - start
        finally:
            os.close(fd)
        if short:
            raise BenchError(f"{short} of {count} random reads of {path} came back short")
        return count / seconds


def fio_version() -> str:
    out = subprocess.run(["fio", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "fio"


def choose_tool(wanted: str) -> str:
    if wanted == "auto":
        return "fio" if shutil.which("fio") else "python"
    if wanted == "fio":
        require_tools("fio")
    return wanted


# -- the disk ----------------------------------------------------------------------------


def disk_sectors_read(path: Path) -> int | None:
    """Sectors read so far by the block device holding `path` (None if unknown)."""
    dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    try:
        return int(stat.read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return None


# -- the benchmark -----------------------------------------------------------------------


def new_record() -> Record:
    """Series by "<figure>.<path>"."""
    series = {}
    for fig, (title, unit) in FIGURES.items():
        for path in (NATIVE, PASSTHROUGH, NO_PASSTHROUGH):
            series[f"{fig}.{path}"] = Series(f"{title}: {PATH_LABELS[path]}", unit)
    return Record(series)


def counters(figure: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The daemon's FUSE_READ count before and after a measurement, and its opens meanwhile."""
    return {
        "figure": figure, "fuse_reads_before": before["fuse_reads"],
        "fuse_reads_after": after["fuse_reads"],
        "opens": {m: after["opens"][m] - before["opens"].get(m, 0) for m in after["opens"]},
    }


class PassthroughBench(MountBench):
    """One cache dir holding the complete big file; mounts made and removed per run."""

    def __init__(self, rig: Rig, store: NginxStore, size: int, sha256: str, reader: RandomReader,
                 args: argparse.Namespace, record: Record) -> None:
        super().__init__(rig, store.url, record)
        self.store = store
        self.size = size
        self.sha256 = sha256
        self.reader = reader
        self.args = args
        self.cache = rig.workspace.fresh_dir("cache")
        self.native: Path | None = None  # the cache file, once complete

    # -- helpers --

    @property
    def via_mount(self) -> Path:
        return self.mountpoint / BIG_NAME

    @property
    def cache_path(self) -> Path:
        if self.native is None:
            raise BenchError("the cache file is not known yet")
        return self.native

    def state_while_open(self) -> str:
        """The big file's state xattr while one handle is open on it."""
        with open(self.via_mount, "rb", buffering=0):
            return cache_state(self.via_mount)

    def seq(self, path: Path) -> float:
        return sequential_mbps(path, self.size, self.buf)

    def rand(self, path: Path, cold: bool) -> float:
        count = self.args.rand_cold_count if cold else self.args.rand_hot_count
        return self.reader.run(path, self.size, count)

    def prepare(self, path: Path, cold: bool) -> None:
        if cold:
            if not drop_page_cache():
                raise BenchError("cannot drop the page cache (needs root)")
        else:
            make_hot([path])

    def measure(self, fig: str, which: str, path: Path) -> None:
        """One figure once on one path; on a mount, record the daemon's counters."""
        cold = fig.endswith("_cold")
        fn: Callable[[Path], float] = self.seq if fig.startswith("seq") else (
            lambda p: self.rand(p, cold))
        self.prepare(path, cold)
        before = daemon_stats(self.mountpoint) if which != NATIVE else None
        sectors = disk_sectors_read(self.cache)
        value = fn(path)
        sectors_after = disk_sectors_read(self.cache)
        self.record.series[f"{fig}.{which}"].add(value)
        if cold and sectors is not None and sectors_after is not None:
            # What the device read meanwhile (other processes' reads included):
            # tells readahead differences between the paths apart from overhead.
            self.record.note(f"disk_mib_read.{fig}.{which}", (sectors_after - sectors) * 512 / MiB)
        if before is not None:
            self.record.note(f"counters.{which}", counters(fig, before, daemon_stats(self.mountpoint)))

    # -- steps --

    def make_complete(self) -> None:
        """Read the big file once through a fresh mount, then check the bytes."""
        make_hot([self.store.root / BIG_NAME])
        os.sync()
        with self.mounted(self.cache, "complete"):
            self.store.clear_access_log()
            n, digest = hash_whole(self.via_mount)
            if n != self.size or digest != self.sha256:
                raise BenchError(f"first read through the mount returned wrong bytes ({n} bytes)")
            self.record.facts["first_read_gets"] = data_gets(self.store, BIG_NAME)
            self.native = wait_cache_file(self.mountpoint, BIG_NAME)
        self.record.facts["cache_file"] = str(self.native)

    def verify(self) -> None:
        """Untimed: sha256 through a passthrough mount, page cache dropped, equals native."""
        with self.mounted(self.cache, "verify"):
            stats = daemon_stats(self.mountpoint)
            self.record.facts["passthrough"] = {
                "on": stats.get("passthrough"), "reason": stats.get("passthrough_reason")}
            self.record.facts["state_while_open"] = self.state_while_open()
            if not drop_page_cache():
                raise BenchError("cannot drop the page cache (needs root)")
            before = daemon_stats(self.mountpoint)
            n_mount, via_mount = hash_whole(self.via_mount)
            after = daemon_stats(self.mountpoint)
            n_native, native = hash_whole(self.cache_path)
        ok = n_mount == n_native == self.size and via_mount == native == self.sha256
        self.record.facts["sha256"] = {"mount": via_mount, "native": native,
                                        "source": self.sha256, "ok": ok}
        self.record.note(f"counters.{PASSTHROUGH}", counters("verify", before, after))
        if not ok:
            raise BenchError("sha256 through the mount, of the cache file and of the source "
                             "differ: wrong bytes")

    def run_once(self, i: int) -> None:
        with self.mounted(self.cache, f"passthrough-{i}"):
            for fig in FIGURES:
                # Alternate who goes first, so order effects spread over both.
                pair = [(PASSTHROUGH, self.via_mount), (NATIVE, self.cache_path)]
                for which, path in (pair if i % 2 == 0 else pair[::-1]):
                    self.measure(fig, which, path)
        with self.mounted(self.cache, f"no-passthrough-{i}", "--no-passthrough"):
            self.record.note("no_passthrough_state_while_open", self.state_while_open())
            for fig in FIGURES:
                self.measure(fig, NO_PASSTHROUGH, self.via_mount)


# -- report ----------------------------------------------------------------------------


def summary(record: Record) -> dict[str, dict[str, Any]]:
    """Per figure and path: raw values, median/min/max, ratio to native, verdict."""
    out: dict[str, dict[str, Any]] = {}
    for key, s in record.series.items():
        fig, which = key.split(".")
        native = record.series[f"{fig}.{NATIVE}"]
        med = s.median
        ratio = med / native.median if med is not None and native.median else None
        paired = [v / n for v, n in zip(s.values, native.values) if n] if which != NATIVE else []
        target = TARGET_RATIO if which == PASSTHROUGH else None
        out[key] = {
            "figure": fig, "path": which, "name": s.name, "unit": s.unit, "runs": s.values,
            "median": med, "min": s.low, "max": s.high,
            "ratio_to_native": ratio,
            "ratio_to_native_per_run": paired,
            "target_ratio": target,
            "target_met": (ratio >= target) if target is not None and ratio is not None else None,
        }
    return out


def render(figures: dict[str, dict[str, Any]], facts: dict[str, Any], header: str) -> str:
    rows = []
    for fig, (title, unit) in FIGURES.items():
        rows.append([f"{title} ({unit})", "", "", "", "", ""])
        for which in (NATIVE, PASSTHROUGH, NO_PASSTHROUGH):
            f = figures[f"{fig}.{which}"]
            ratio = f"{f['ratio_to_native']:.2f}x" if f["ratio_to_native"] is not None else "n/a"
            if f["target_ratio"] is not None:
                target = f">= {f['target_ratio']:.2f}x: {'met' if f['target_met'] else 'NOT met'}"
            else:
                target = "" if which == NATIVE else "contrast"
            rows.append([f"  {PATH_LABELS[which]}", fmt_number(f["median"]),
                         fmt_number(f["min"]), fmt_number(f["max"]), ratio, target])
    table = format_table(["figure", "median", "min", "max", "vs native", "target (issue 3)"], rows)
    return "\n".join([header, "", table, "", *check_lines(facts)])


def _counter_line(entries: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{fig} " + ", ".join(f"{e['fuse_reads_before']}->{e['fuse_reads_after']}"
                              for e in entries if e["figure"] == fig)
        for fig in dict.fromkeys(e["figure"] for e in entries))


def check_lines(facts: dict[str, Any]) -> list[str]:
    pt = facts.get("passthrough", {})
    sha = facts.get("sha256", {})
    pt_counts = facts.get(f"counters.{PASSTHROUGH}", [])
    moved = [e for e in pt_counts if e["fuse_reads_after"] != e["fuse_reads_before"]]
    pt_opens: dict[str, int] = {}
    for e in pt_counts:
        for mode, n in e["opens"].items():
            pt_opens[mode] = pt_opens.get(mode, 0) + n
    npt_counts = facts.get(f"counters.{NO_PASSTHROUGH}", [])
    problems = facts.get("daemon_log_problems", [])
    lines = [
        f"random reads: {facts.get('rand_tool', '?')}; "
        f"{facts.get('rand_cold_count')} reads dropped, {facts.get('rand_hot_count')} hot, "
        "same offsets on every path",
        f"checks: passthrough {'on' if pt.get('on') else 'OFF (' + str(pt.get('reason')) + ')'}; "
        f"state while open: {facts.get('state_while_open', '?')!r}",
        f"        sha256 via the mount (passthrough, page cache dropped) = cache file = source: "
        f"{'ok' if sha.get('ok') else 'WRONG' if sha else 'not run'}",
        f"        fuse_reads before->after each passthrough measurement (must not change): "
        f"{'unchanged' if not moved else f'CHANGED in {len(moved)}'} in {len(pt_counts)}",
        f"          {_counter_line(pt_counts)}",
        f"        opens by mode during passthrough measurements: {pt_opens}",
        f"        --no-passthrough fuse_reads before->after (daemon-served; hot should not move): "
        f"state while open {sorted(set(facts.get('no_passthrough_state_while_open', [])))}",
        f"          {_counter_line(npt_counts)}",
        f"        GETs of the big file for the first read: {facts.get('first_read_gets', '?')}; "
        f"daemon log warnings/errors: {len(problems)}",
        load_line(facts),
    ]
    disk = [f"{key.removeprefix('disk_mib_read.')} "
            + "/".join(f"{v:.0f}" for v in values)
            for key, values in facts.items() if key.startswith("disk_mib_read.")]
    if disk:
        lines.insert(-1, "        MiB read from the cache's disk per dropped-cache measurement "
                         "(includes other processes): " + ", ".join(disk))
    lines += [f"          {p}" for p in problems[:10]]
    return lines


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--big-size", type=int, default=1024, metavar="MiB",
                   help="size of the big file in MiB (default 1024)")
    p.add_argument("--runs", type=int, default=3, metavar="N",
                   help="repetitions of every measurement (default 3)")
    p.add_argument("--rand-cold-count", type=int, default=20_000, metavar="N",
                   help="4 KiB random reads per measurement with the page cache dropped "
                        "(default 20000)")
    p.add_argument("--rand-hot-count", type=int, default=1_000_000, metavar="N",
                   help="4 KiB random reads per hot measurement (default 1000000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random offsets (default 1)")
    p.add_argument("--rand-tool", choices=("auto", "fio", "python"), default="auto",
                   help="random-read tool: fio if installed (auto, the default), or the "
                        "Python pread loop")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all raw numbers here")
    args = p.parse_args(argv)
    if min(args.big_size, args.runs, args.rand_cold_count, args.rand_hot_count) < 1:
        p.error("--big-size, --runs and the counts must be at least 1")
    return args


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Set up, measure and tear down; return the table and everything for the JSON."""
    require_tools("umount")
    record = new_record()
    reader = RandomReader(choose_tool(args.rand_tool), args.seed)
    record.facts.update(rand_tool=reader.description, rand_cold_count=args.rand_cold_count,
                        rand_hot_count=args.rand_hot_count)
    with Rig("cachefs-bench-pt-") as rig:
        size = args.big_size * MiB
        print(f"generating {args.big_size} MiB in {rig.workspace.path} ...", flush=True)
        root = rig.workspace.fresh_dir("store")
        sha256 = write_random_file(root / BIG_NAME, size)
        store = rig.serve(NginxStore(root, rig.workspace.fresh_dir("nginx")))
        print(f"serving at {store.url}", flush=True)

        bench = PassthroughBench(rig, store, size, sha256, reader, args, record)
        started = time.perf_counter()
        record.facts["loadavg_1m_start"] = os.getloadavg()[0]
        print("making the big file complete in the cache (one read through the mount) ...",
              flush=True)
        bench.make_complete()
        print("verification pass (sha256 through the mount and of the cache file) ...", flush=True)
        bench.verify()
        if not record.facts["passthrough"]["on"]:
            print(f"bench: warning: passthrough is off "
                  f"({record.facts['passthrough']['reason']}); 'passthrough' rows measure "
                  "the daemon", file=sys.stderr)
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            bench.run_once(i)
        record.facts["elapsed_s"] = time.perf_counter() - started
        record.facts["loadavg_1m_end"] = os.getloadavg()[0]
    config = {"big_size_mib": args.big_size, "runs": args.runs,
              "rand_cold_count": args.rand_cold_count, "rand_hot_count": args.rand_hot_count,
              "seed": args.seed, "rand_tool": reader.tool, "read_block": MiB,
              "rand_block": RAND_BLOCK, "mb": MB, "target_ratio": TARGET_RATIO}
    report = script_document(config, summary(record), record.facts)
    header = (f"cachefs passthrough benchmark: big file {args.big_size} MiB complete in the "
              f"cache, median of {args.runs} runs (MB = 10^6 bytes)")
    return render(report["figures"], report["facts"], header), report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: run(args), args.json,
                      (OSError, sqlite3.Error, subprocess.CalledProcessError))


if __name__ == "__main__":
    sys.exit(main())
