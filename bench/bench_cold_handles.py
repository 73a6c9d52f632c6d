"""Handles opened cold (issue 15): do they still ask the daemon once the file is complete?

One run generates, in a temp dir served by a loopback nginx:
- a SQLite database of about --db-size MiB (rows in random key order, so an
  integrity check reads its pages out of order, as databases do);
- a file of --big-size MiB of random bytes.

Figures, each the median of --runs (min and max beside it):

- `PRAGMA integrity_check` on the database through a fresh mount, opened
  cold (nothing cached, page cache dropped); warm (cache complete, a new
  mount, page cache dropped); and natively on the cache's own data file
  (page cache dropped). The targets: cold within 2x of warm.
- The big file opened cold, then 4 KiB random reads through that one
  handle: while the file is partial, then (same handle) once complete, and
  against native reads of the cache file with the same offsets. Both with
  their pages in memory (the handle's are in the kernel's page cache of the
  mount) and after `drop_caches`. The target: >= 0.9x native. The daemon's
  FUSE_READ count during the complete-file reads is printed: 0 means the
  handle reads without the daemon.

    .venv/bin/python bench/bench_cold_handles.py [--db-size MiB] [--big-size MiB]
        [--runs N] [--reads N] [--json FILE]

Root is needed (drop_caches). Everything made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

from cachefs.benchmark.data import BIG_NAME, write_random_file
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import emit_report, fmt_number, format_table
from cachefs.benchmark.rig import MountBench, Rig
from cachefs.benchmark.system import (BenchError, MiB, daemon_stats, drop_page_cache, make_hot,
                                      random_offsets, random_reads_on, sigterm_as_interrupt,
                                      wait_cache_file)
from cachefs.localstore.nginx import NginxStore

DB_NAME = "data.sqlite"


def make_database(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    while path.stat().st_size < size:
        db.executemany("INSERT INTO t VALUES (?, ?)",
                       ((f"{rng.getrandbits(64):x}", rng.randbytes(rng.randrange(100, 500))) for _ in range(20_000)))
        db.commit()
    db.close()


def integrity_check(path: Path) -> float:
    start = time.perf_counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()
    finally:
        db.close()
    if result != ("ok",):
        raise BenchError(f"integrity_check of {path}: {result}")
    return time.perf_counter() - start


def fuse_reads(mountpoint: Path) -> int:
    return daemon_stats(mountpoint)["fuse_reads"]


# From memory a pass takes milliseconds: repeat it for at least this long.
IN_MEMORY_S = 1.0


class ColdHandlesBench(MountBench):
    def __init__(self, args: argparse.Namespace, rig: Rig, store: NginxStore) -> None:
        super().__init__(rig, store.url, Record({name: Series(name, unit) for name, unit in [
            ("integrity_check cold", "s"), ("integrity_check warm", "s"), ("integrity_check native", "s"),
            ("cold handle, partial", "reads/s"),
            ("cold handle, complete, in memory", "reads/s"), ("native, in memory", "reads/s"),
            ("cold handle, complete, page cache dropped", "reads/s"), ("native, page cache dropped", "reads/s"),
        ]}))
        self.args = args
        self.source = (store.root / BIG_NAME).read_bytes()
        self.series = self.record.series
        self.daemon_reads_once_complete: list[int] = []

    def database(self, run: int) -> None:
        cache = self.rig.workspace.fresh_dir(f"cache-db-{run}")
        self.mount(cache)
        os.sync()
        drop_page_cache()
        self.series["integrity_check cold"].add(integrity_check(self.mountpoint / DB_NAME))
        data_file = wait_cache_file(self.mountpoint, DB_NAME)
        self.remount(cache)
        drop_page_cache()
        self.series["integrity_check warm"].add(integrity_check(self.mountpoint / DB_NAME))
        self.unmount()
        drop_page_cache()
        self.series["integrity_check native"].add(integrity_check(data_file))
        self.rig.workspace.remove_dir(cache)

    def cold_handle(self, run: int) -> None:
        cache = self.rig.workspace.fresh_dir(f"cache-big-{run}")
        mp = self.mountpoint
        self.mount(cache)
        os.sync()
        drop_page_cache()
        size = len(self.source)
        offsets = random_offsets(run, size, self.args.reads)
        fd = os.open(mp / BIG_NAME, os.O_RDONLY)
        try:
            # While partial: random reads until every chunk has been asked for.
            self.series["cold handle, partial"].add(random_reads_on(fd, offsets, expect=self.source))
            windows = random_offsets(run + 1000, size, 4 * (size // MiB))
            random_reads_on(fd, windows, expect=self.source)
            data_file = wait_cache_file(mp, BIG_NAME)
            time.sleep(1.0)  # let the last page pushes land
            before = fuse_reads(mp)
            self.series["cold handle, complete, in memory"].add(
                random_reads_on(fd, offsets, IN_MEMORY_S))
            self.daemon_reads_once_complete.append(fuse_reads(mp) - before)
            native = os.open(data_file, os.O_RDONLY)
            try:
                make_hot([data_file])
                self.series["native, in memory"].add(random_reads_on(native, offsets, IN_MEMORY_S))
                drop_page_cache()
                self.series["native, page cache dropped"].add(random_reads_on(native, offsets))
            finally:
                os.close(native)
            drop_page_cache()
            self.series["cold handle, complete, page cache dropped"].add(
                random_reads_on(fd, offsets, expect=self.source))
        finally:
            os.close(fd)
        self.unmount()
        self.rig.workspace.remove_dir(cache)


def ratio(a: Series, b: Series, lower_is_better: bool = False) -> str:
    if not a.median or not b.median:
        return "n/a"
    r = a.median / b.median
    return f"{r:.2f}x"


def render(bench: ColdHandlesBench) -> str:
    s = bench.series
    rows = []
    for name, series in s.items():
        digits = 2 if series.unit == "s" else 0
        rows.append([f"{name} ({series.unit})", fmt_number(series.median, digits),
                     fmt_number(series.low, digits), fmt_number(series.high, digits)])
    table = format_table(["figure", "median", "min", "max"], rows)
    lines = [
        table, "",
        f"integrity_check cold / warm: {ratio(s['integrity_check cold'], s['integrity_check warm'])} (target <= 2x);"
        f" cold / native: {ratio(s['integrity_check cold'], s['integrity_check native'])}",
        f"cold handle once complete / native, in memory: "
        f"{ratio(s['cold handle, complete, in memory'], s['native, in memory'])} (target >= 0.9x);"
        f" page cache dropped: {ratio(s['cold handle, complete, page cache dropped'], s['native, page cache dropped'])}",
        f"daemon reads by the cold handle once complete (in memory): {bench.daemon_reads_once_complete}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-size", type=int, default=150, help="MiB (default 150)")
    parser.add_argument("--big-size", type=int, default=256, help="MiB (default 256)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reads", type=int, default=20_000, help="random 4 KiB reads per figure")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cold_handles: needs root (drop_caches)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    try:
        with Rig("cachefs-cold-") as rig:
            data = rig.workspace.fresh_dir("data")
            print(f"generating a {args.db_size} MiB database and a {args.big_size} MiB file in {data}",
                  flush=True)
            make_database(data / DB_NAME, args.db_size * MiB, 15)
            write_random_file(data / BIG_NAME, args.big_size * MiB)
            store = rig.serve(NginxStore(data, rig.workspace.fresh_dir("nginx")))
            bench = ColdHandlesBench(args, rig, store)
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}", flush=True)
                bench.database(run)
                bench.cold_handle(run)
            report = {name: {"unit": s.unit, "values": s.values} for name, s in bench.series.items()}
            report["daemon_reads_once_complete"] = bench.daemon_reads_once_complete
            emit_report(render(bench), report, args.json)
    except BenchError as e:
        print(f"bench_cold_handles: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
