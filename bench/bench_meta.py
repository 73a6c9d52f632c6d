"""Small files: the per-file cost of the daemon, cold and warm (issue 17).

One loopback nginx serves --count files of --size KiB (directories of 100).
Each run, on a fresh cache dir:

- cold: a new mount, the source hot in the page cache, every file opened,
  read whole (sha256-checked) and closed once;
- warm, new mount: the cache complete, mounted again, `drop_caches`, every
  file read again through the mount (passthrough: the kernel reads the
  cache file; the daemon answers LOOKUP, OPEN and RELEASE);
- warm, same mount: `drop_caches` and once more, on the same daemon;
- hot, same mount: at once again, with the kernel's dentries and pages kept
  (only OPEN and RELEASE reach the daemon);
- native: the cache's own data files read directly, after `drop_caches`,
  and again hot. Native and mount passes alternate which goes first.

For each pass: files/s and the daemon's CPU (user + system, from
/proc/PID/stat) per file. Ratios to native are taken pair by pair within a
run, then their median is printed.

    .venv/bin/python bench/bench_meta.py [--count N] [--size KiB] [--runs N] [--json FILE]

Needs root (drop_caches; passthrough needs CAP_SYS_ADMIN), nginx and fuse3.
Everything made is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from cachefs.benchmark.data import write_random_file
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import fmt_number, format_table, load_line, script_document
from cachefs.benchmark.rig import MountBench, Rig, require_tools, run_script
from cachefs.benchmark.system import (KiB, BenchError, cache_files, daemon_of, drop_page_cache,
                                      make_hot, passthrough_state, read_files, wait_complete)
from cachefs.localstore.nginx import NginxStore

PER_DIR = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Pass key -> its label; each gets files/s and, through the mount, daemon ms per file.
PASSES = {
    "cold": "cold (over HTTP)",
    "warm_new": "warm, new mount, caches dropped",
    "warm_same": "warm, same mount, caches dropped",
    "hot_same": "hot, same mount",
    "native_dropped": "native, caches dropped",
    "native_hot": "native, hot",
}
# Ratios printed: (mount pass, native pass of the same run).
RATIOS = [("warm_new", "native_dropped"), ("warm_same", "native_dropped"), ("hot_same", "native_hot")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class MetaBench(MountBench):
    def __init__(self, args: argparse.Namespace, rig: Rig, store: NginxStore,
                 keys: list[str], expected: dict[str, str]) -> None:
        series = {}
        for key in PASSES:
            series[key] = Series(key, "files/s")
            if not key.startswith("native"):
                series[f"{key}_cpu"] = Series(f"{key}_cpu", "ms/file")
        for mine, native in RATIOS:
            series[f"{mine}/{native}"] = Series(f"{mine}/{native}", "x")
        super().__init__(rig, store.url, Record(series))
        self.args = args
        self.store = store
        self.keys = keys
        self.expected = expected
        self.series = self.record.series

    def timed_pass(self, key: str, paths: list[Path], pid: int | None, drop: bool) -> float:
        if drop:
            drop_page_cache()
        expected = {p: self.expected[k] for p, k in zip(paths, self.keys)}
        before = cpu_seconds(pid) if pid else 0.0
        files_per_s = read_files(paths, expected)
        if pid:
            self.series[f"{key}_cpu"].add((cpu_seconds(pid) - before) * 1000 / len(paths))
        self.series[key].add(files_per_s)
        return files_per_s

    def run(self, i: int) -> None:
        cache = self.rig.workspace.fresh_dir(f"cache-{i}")
        mp = self.mountpoint
        at_mount = [mp / k for k in self.keys]
        make_hot([self.store.root / k for k in self.keys])
        self.mount(cache)
        self.timed_pass("cold", at_mount, daemon_of(mp).pid, drop=False)
        wait_complete(at_mount)
        self.remount(cache)
        pid = daemon_of(mp).pid
        on, reason = passthrough_state(mp)
        if not on:
            self.record.note("notes", f"run {i + 1}: passthrough off ({reason})")
        found = cache_files(daemon_of(mp).folder, self.keys)
        native = [found[k] for k in self.keys]
        got: dict[str, float] = {}

        def mount_passes() -> None:
            got["warm_new"] = self.timed_pass("warm_new", at_mount, pid, drop=True)
            got["warm_same"] = self.timed_pass("warm_same", at_mount, pid, drop=True)
            got["hot_same"] = self.timed_pass("hot_same", at_mount, pid, drop=False)

        def native_passes() -> None:
            got["native_dropped"] = self.timed_pass("native_dropped", native, None, drop=True)
            got["native_hot"] = self.timed_pass("native_hot", native, None, drop=False)

        order: list[Callable[[], None]] = [mount_passes, native_passes]
        for step in order if i % 2 == 0 else reversed(order):
            step()
        for mine, other in RATIOS:
            self.series[f"{mine}/{other}"].add(got[mine] / got[other])
        self.unmount()
        self.note_log_problems(cache, f"run {i + 1}")
        self.rig.workspace.remove_dir(cache)


def render(bench: MetaBench) -> str:
    s = bench.series
    rows = []
    for key, label in PASSES.items():
        cpu = s.get(f"{key}_cpu")
        rows.append([label, fmt_number(s[key].median), fmt_number(s[key].low), fmt_number(s[key].high),
                     fmt_number(cpu.median, 3) if cpu else "",
                     f"{fmt_number(cpu.low, 3)}-{fmt_number(cpu.high, 3)}" if cpu else ""])
    table = format_table(["pass", "files/s", "min", "max", "daemon ms/file", "(min-max)"], rows)
    lines = [f"{bench.args.count} files of {bench.args.size} KiB, {bench.args.runs} runs; medians", "",
             table, "", "ratio to native in the same run (median, min-max of the runs):"]
    for mine, native in RATIOS:
        r = s[f"{mine}/{native}"]
        lines.append(f"  {PASSES[mine]} / {PASSES[native]}: {r.median:.2f}x ({r.low:.2f}-{r.high:.2f})"
                     + ("   target >= 0.8x" if mine == "warm_new" else ""))
    for note in bench.record.facts.get("notes", []):
        lines.append(f"note: {note}")
    for line in bench.record.facts.get("daemon_log_problems", [])[:10]:
        lines.append(f"daemon log: {line}")
    lines.append(load_line(bench.record.facts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="small files (default 2000)")
    parser.add_argument("--size", type=int, default=16, help="KiB each (default 16)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_meta: needs root (drop_caches)", file=sys.stderr)
        return 2
    if min(args.count, args.size, args.runs) < 1:
        parser.error("--count, --size and --runs must be at least 1")

    def measure() -> tuple[str, dict]:
        require_tools("nginx")
        with Rig("cachefs-meta-") as rig:
            data = rig.workspace.fresh_dir("data")
            print(f"generating {args.count} x {args.size} KiB in {data}", flush=True)
            keys, expected = [], {}
            for n in range(args.count):
                key = f"small/d{n // PER_DIR:02d}/f{n:05d}.bin"
                expected[key] = write_random_file(data / key, args.size * KiB, f"meta/{n}")
                keys.append(key)
            store = rig.serve(NginxStore(data, rig.workspace.fresh_dir("nginx")))
            bench = MetaBench(args, rig, store, keys, expected)
            bench.record.facts["loadavg_1m_start"] = os.getloadavg()[0]
            for i in range(args.runs):
                print(f"run {i + 1} of {args.runs}", flush=True)
                bench.run(i)
            bench.record.facts["loadavg_1m_end"] = os.getloadavg()[0]
            figures = {k: {"unit": v.unit, "values": v.values,
                           "median": statistics.median(v.values) if v.values else None}
                       for k, v in bench.series.items()}
            return render(bench), script_document(vars(args) | {"json": str(args.json)}, figures,
                                                  bench.record.facts)

    return run_script(measure, args.json, (BenchError,))


if __name__ == "__main__":
    sys.exit(main())
