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
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (bench/ is not a package)
    KiB,
    MiB,
    BenchError,
    Mounts,
    Series,
    Workspace,
    drop_page_cache,
    emit_report,
    fmt_number,
    format_table,
    make_hot,
    sigterm_as_interrupt,
    sync,
    write_random_file,
)
from bench_passthrough import random_offsets, wait_complete  # noqa: E402

from cachefs.localstore.nginx import NginxStore  # noqa: E402

DB_NAME = "data.sqlite"
BIG_NAME = "big.bin"
BLOCK = 4 * KiB
STATS_XATTR = "user.cachefs.stats"
STATE_XATTR = "user.cachefs.state"


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
    return json.loads(os.getxattr(mountpoint, STATS_XATTR))["fuse_reads"]


# From memory a pass takes milliseconds: repeat it for at least this long.
IN_MEMORY_S = 1.0


def preads(fd: int, offsets: list[int], expect: bytes | None = None, min_seconds: float = 0.0) -> float:
    """Reads per second of 4 KiB preads at `offsets`, repeated for `min_seconds`;
    checks bytes against `expect`."""
    done = 0
    start = time.perf_counter()
    while True:
        for off in offsets:
            data = os.pread(fd, BLOCK, off)
            if expect is not None and data != expect[off:off + BLOCK]:
                raise BenchError(f"wrong bytes at {off}")
        done += len(offsets)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


class Bench:
    def __init__(self, args: argparse.Namespace, work: Workspace, store: NginxStore, mounts: Mounts) -> None:
        self.args = args
        self.work = work
        self.store = store
        self.mounts = mounts
        self.source = (store.root / BIG_NAME).read_bytes()
        self.series = {name: Series(name, unit) for name, unit in [
            ("integrity_check cold", "s"), ("integrity_check warm", "s"), ("integrity_check native", "s"),
            ("cold handle, partial", "reads/s"),
            ("cold handle, complete, in memory", "reads/s"), ("native, in memory", "reads/s"),
            ("cold handle, complete, page cache dropped", "reads/s"), ("native, page cache dropped", "reads/s"),
        ]}
        self.daemon_reads_once_complete: list[int] = []

    def mount(self, cache: Path) -> Path:
        mountpoint = self.work.fresh_dir("mnt")
        self.mounts.mount(self.store.url, mountpoint, cache)
        return mountpoint

    def database(self, run: int) -> None:
        cache = self.work.fresh_dir(f"cache-db-{run}")
        mp = self.mount(cache)
        sync()
        drop_page_cache()
        self.series["integrity_check cold"].add(integrity_check(mp / DB_NAME))
        data_file = wait_complete(cache, DB_NAME)
        self.mounts.unmount(mp)
        mp = self.mount(cache)
        drop_page_cache()
        self.series["integrity_check warm"].add(integrity_check(mp / DB_NAME))
        self.mounts.unmount(mp)
        drop_page_cache()
        self.series["integrity_check native"].add(integrity_check(data_file))
        self.work.remove_dir(cache)

    def cold_handle(self, run: int) -> None:
        cache = self.work.fresh_dir(f"cache-big-{run}")
        mp = self.mount(cache)
        sync()
        drop_page_cache()
        size = len(self.source)
        offsets = random_offsets(run, size, self.args.reads)
        fd = os.open(mp / BIG_NAME, os.O_RDONLY)
        try:
            # While partial: random reads until every chunk has been asked for.
            self.series["cold handle, partial"].add(preads(fd, offsets, self.source))
            windows = random_offsets(run + 1000, size, 4 * (size // MiB))
            preads(fd, windows, self.source)
            data_file = wait_complete(cache, BIG_NAME)
            time.sleep(1.0)  # let the last page pushes land
            before = fuse_reads(mp)
            self.series["cold handle, complete, in memory"].add(preads(fd, offsets, min_seconds=IN_MEMORY_S))
            self.daemon_reads_once_complete.append(fuse_reads(mp) - before)
            native = os.open(data_file, os.O_RDONLY)
            try:
                make_hot([data_file])
                self.series["native, in memory"].add(preads(native, offsets, min_seconds=IN_MEMORY_S))
                drop_page_cache()
                self.series["native, page cache dropped"].add(preads(native, offsets))
            finally:
                os.close(native)
            drop_page_cache()
            self.series["cold handle, complete, page cache dropped"].add(preads(fd, offsets, self.source))
        finally:
            os.close(fd)
        self.mounts.unmount(mp)
        self.work.remove_dir(cache)


def ratio(a: Series, b: Series, lower_is_better: bool = False) -> str:
    if not a.median or not b.median:
        return "n/a"
    r = a.median / b.median
    return f"{r:.2f}x"


def render(bench: Bench) -> str:
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
    work = Workspace("cachefs-cold-")
    mounts = Mounts()
    try:
        data = work.fresh_dir("data")
        print(f"generating a {args.db_size} MiB database and a {args.big_size} MiB file in {data}", flush=True)
        make_database(data / DB_NAME, args.db_size * MiB, 15)
        write_random_file(data / BIG_NAME, args.big_size * MiB)
        with NginxStore(data, work.fresh_dir("nginx")) as store:
            bench = Bench(args, work, store, mounts)
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
    finally:
        mounts.unmount_all()
        work.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
