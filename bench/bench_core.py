"""Core benchmark of cachefs against a local nginx (issue 2).

One run generates a data set in a temp dir (one big file of random bytes and
many small files, as in design.md's "Reference numbers"), serves it with a
loopback nginx, and measures through real `cachefs` mounts:

- curl's MB/s for the big file's URL: the reference for what HTTP can deliver;
- big file, cold: fresh cache dir and mount, source file hot in the page cache;
- big file, warm: cache complete, remounted, page cache dropped;
- big file, hot: read again right away, page cache kept;
- small files, cold: files/s with 1 reader and with 8 parallel readers;
- `ls -lR` of the small-file tree on a cold mount, in seconds.

Each figure is the median of --runs repetitions, with min and max. The big
file's sha256 through the mount is checked against the source once per mode
(cold, warm, hot) in an untimed pass, and every small file in every timed pass,
so wrong bytes cannot pass for speed. Everything made (mounts, nginx, data) is
removed at the end, also on errors and Ctrl-C.

    .venv/bin/python bench/bench_core.py [--big-size MiB] [--small-count N]
                                         [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    emit_report,  # noqa: E402  (bench/ is not a package)
    KiB,
    MB,
    MiB,
    BenchError,
    Mounts,
    Series,
    Workspace,
    daemon_log_problems,
    drop_page_cache,
    fmt_number,
    format_table,
    hash_whole,
    ignore_interrupts,
    make_hot,
    read_whole,
    require_tools,
    sigterm_as_interrupt,
    sync,
    timed,
    write_random_file,
)

from cachefs.localstore.nginx import NginxError, NginxStore  # noqa: E402

SMALL_SIZE = 16 * KiB
SMALL_PER_DIR = 100
PARALLEL_READERS = 8
BIG_NAME = "big.bin"
SMALL_DIR = "small"
STATE_XATTR = "user.cachefs.state"

# Issue 2's targets, judged on the median.
TARGET_COLD_MBPS = 400.0
TARGET_SMALL_FILES_PER_S = 1000.0

# design.md, "Reference numbers": rclone mount (http, vfs full) on the same
# machine kind and data shape, for orientation only.
RCLONE_REFERENCE: dict[str, float] = {
    "big_cold": 204, "big_warm": 854, "big_hot": 744, "small_cold_1": 932, "ls_cold": 0.24,
}


# -- data set ---------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    big_size: int
    big_sha256: str
    # Relative path -> sha256 of every small file, in reading order.
    small: dict[str, str] = field(default_factory=dict)

    @property
    def big(self) -> Path:
        return self.root / BIG_NAME

    def small_paths(self, base: Path) -> list[Path]:
        return [base / rel for rel in self.small]


def generate(root: Path, big_size: int, small_count: int) -> Dataset:
    """Write big.bin and small/dNN/fNNNNN.bin (SMALL_PER_DIR per directory)."""
    data = Dataset(root, big_size, write_random_file(root / BIG_NAME, big_size))
    for i in range(small_count):
        rel = f"{SMALL_DIR}/d{i // SMALL_PER_DIR:02d}/f{i:05d}.bin"
        data.small[rel] = write_random_file(root / rel, SMALL_SIZE)
    return data


# -- the benchmark -----------------------------------------------------------------


@dataclass
class Results:
    series: dict[str, Series]
    # Everything that is not a timing: checks, request counts, log lines.
    facts: dict[str, Any] = field(default_factory=dict)

    def note(self, key: str, value: Any) -> None:
        self.facts.setdefault(key, []).append(value)


def new_results() -> Results:
    return Results({
        "curl": Series("curl, reference", "MB/s"),
        "big_cold": Series("big file cold", "MB/s"),
        "big_warm": Series("big file warm", "MB/s"),
        "big_hot": Series("big file hot", "MB/s"),
        "small_cold_1": Series("small files cold, 1 reader", "files/s"),
        f"small_cold_{PARALLEL_READERS}": Series(
            f"small files cold, {PARALLEL_READERS} readers", "files/s"),
        "ls_cold": Series("ls -lR cold", "s"),
    })


class CoreBench:
    """The measurements; each one mounts, measures, unmounts and checks logs."""

    def __init__(self, ws: Workspace, store: NginxStore, mounts: Mounts, data: Dataset,
                 results: Results) -> None:
        self.ws = ws
        self.store = store
        self.mounts = mounts
        self.data = data
        self.results = results
        self.mountpoint = ws.fresh_dir("mnt")
        self._buf = bytearray(MiB)

    # -- helpers --

    @contextlib.contextmanager
    def fresh_cache(self, label: str) -> Iterator[Path]:
        """A new, empty cache dir; on exit: unmount, check its daemon logs, delete it."""
        cache = self.ws.fresh_dir(f"cache-{label}")
        try:
            yield cache
        finally:
            try:
                self.mounts.unmount(self.mountpoint)
            finally:
                for line in daemon_log_problems(cache):
                    self.results.note("daemon_log_problems", f"[{label}] {line}")
        self.ws.remove_dir(cache)

    def mount(self, cache: Path) -> None:
        self.mounts.mount(self.store.url, self.mountpoint, cache)

    def remount(self, cache: Path) -> None:
        self.mounts.unmount(self.mountpoint)
        self.mount(cache)

    def big_data_gets(self) -> int:
        """GETs of the big file nginx logged since the log was last cleared."""
        return sum(1 for e in self.store.access_log()
                   if e.method == "GET" and e.index == "data" and e.path == BIG_NAME)

    def read_big(self, verify: bool, mode: str) -> float:
        """Read the big file through the mount; return MB/s."""
        path = self.mountpoint / BIG_NAME
        if verify:
            seconds, (n, digest) = timed(hash_whole, path)
            ok = digest == self.data.big_sha256
            self.results.facts.setdefault("big_sha256_verified", {})[mode] = ok
            if not ok:
                raise BenchError(f"{mode} read of {BIG_NAME} returned wrong bytes (sha256 differs)")
        else:
            seconds, n = timed(read_whole, path, self._buf)
        if n != self.data.big_size:
            raise BenchError(f"{mode} read of {BIG_NAME} returned {n} bytes, not {self.data.big_size}")
        return n / MB / seconds

    # -- measurements --

    def curl(self) -> None:
        make_hot([self.data.big])
        out = subprocess.run(
            ["curl", "-s", "--noproxy", "*", "-o", "/dev/null",
             "-w", "%{speed_download} %{size_download} %{http_code}", self.store.url + BIG_NAME],
            capture_output=True, text=True, check=False,
        )
        fields = out.stdout.split()
        if out.returncode != 0 or len(fields) != 3:
            raise BenchError(f"curl failed (rc {out.returncode}): {out.stderr.strip() or out.stdout}")
        speed, size, status = fields
        if status != "200" or int(float(size)) != self.data.big_size:
            raise BenchError(f"curl got status {status} and {size} bytes, not {self.data.big_size}")
        self.results.series["curl"].add(float(speed) / MB)

    def big_file(self, label: str, verify: bool) -> dict[str, float]:
        """Cold, then warm (remount, page cache dropped), then hot reads."""
        speeds: dict[str, float] = {}
        with self.fresh_cache(label) as cache:
            make_hot([self.data.big])
            sync()
            self.mount(cache)
            self.store.clear_access_log()
            speeds["cold"] = self.read_big(verify, "cold")
            self.results.note("cold_data_gets", self.big_data_gets())

            self.remount(cache)
            if not drop_page_cache():
                raise BenchError("cannot drop the page cache (needs root) for the warm read")
            self.store.clear_access_log()
            speeds["warm"] = self.read_big(verify, "warm")
            speeds["hot"] = self.read_big(verify, "hot")
            self.results.note("warm_hot_data_gets", self.big_data_gets())
            self.results.note("state_after_warm", self.cache_state())
        return speeds

    def cache_state(self) -> str:
        try:
            return os.getxattr(self.mountpoint / BIG_NAME, STATE_XATTR).decode()
        except OSError as e:
            return f"unavailable ({e.strerror})"

    def small_files(self, label: str, readers: int) -> float:
        """Read every small file once (open/read/close); return files/s."""
        with self.fresh_cache(label) as cache:
            make_hot(self.data.small_paths(self.data.root))
            sync()
            self.mount(cache)
            paths = self.data.small_paths(self.mountpoint)
            if readers == 1:
                seconds, digests = timed(_read_files, paths)
            else:
                seconds, digests = timed(_read_files_parallel, paths, readers)
        wrong = [rel for rel, d in zip(self.data.small, digests) if d != self.data.small[rel]]
        if wrong:
            raise BenchError(f"{len(wrong)} small files read back wrong, e.g. {wrong[0]}")
        self.results.note("small_files_verified", len(digests))
        return len(paths) / seconds

    def ls_lr(self, label: str) -> float:
        """Seconds for `ls -lR` of the small-file tree on a cold mount."""
        with self.fresh_cache(label) as cache:
            self.mount(cache)
            seconds, out = timed(
                subprocess.run, ["ls", "-lR", str(self.mountpoint / SMALL_DIR)],
                capture_output=True, text=True, check=True,
            )
        listed = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
        if listed != len(self.data.small):
            raise BenchError(f"ls -lR listed {listed} files, not {len(self.data.small)}")
        return seconds

    def run_once(self, i: int) -> None:
        s = self.results.series
        self.curl()
        big = self.big_file(f"big-{i}", verify=False)
        s["big_cold"].add(big["cold"])
        s["big_warm"].add(big["warm"])
        s["big_hot"].add(big["hot"])
        s["small_cold_1"].add(self.small_files(f"small1-{i}", 1))
        s[f"small_cold_{PARALLEL_READERS}"].add(
            self.small_files(f"small{PARALLEL_READERS}-{i}", PARALLEL_READERS))
        s["ls_cold"].add(self.ls_lr(f"ls-{i}"))


def _read_one(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read_files(paths: list[Path]) -> list[str]:
    return [_read_one(p) for p in paths]


def _read_files_parallel(paths: list[Path], readers: int) -> list[str]:
    with ThreadPoolExecutor(readers) as pool:
        return list(pool.map(_read_one, paths))


# -- report ----------------------------------------------------------------------------


def _target(key: str) -> float | None:
    if key == "big_cold":
        return TARGET_COLD_MBPS
    if key.startswith("small_cold"):
        return TARGET_SMALL_FILES_PER_S
    return None


def summary(results: Results) -> dict[str, dict[str, Any]]:
    """Per figure: raw values, median/min/max, ratio to curl, target verdict."""
    curl = results.series["curl"].median
    out: dict[str, dict[str, Any]] = {}
    for key, s in results.series.items():
        target = _target(key)
        med = s.median
        out[key] = {
            "name": s.name, "unit": s.unit, "runs": s.values,
            "median": med, "min": s.low, "max": s.high,
            "ratio_to_curl": med / curl if s.unit == "MB/s" and med is not None and curl else None,
            "target": target,
            "target_met": (med >= target) if target is not None and med is not None else None,
            "rclone_reference": RCLONE_REFERENCE.get(key),
        }
    return out


def render(figures: dict[str, dict[str, Any]], facts: dict[str, Any], header: str) -> str:
    rows = []
    for f in figures.values():
        digits = 2 if f["unit"] == "s" else 0
        ratio = f"{f['ratio_to_curl']:.2f}x" if f["ratio_to_curl"] is not None else ""
        target = ""
        if f["target"] is not None:
            verdict = "met" if f["target_met"] else "NOT met"
            target = f">= {f['target']:.0f}: {verdict}"
        ref = f["rclone_reference"]
        rows.append([
            f"{f['name']} ({f['unit']})",
            fmt_number(f["median"], digits), fmt_number(f["min"], digits),
            fmt_number(f["max"], digits), ratio, target,
            fmt_number(ref, digits) if ref is not None else "",
        ])
    table = format_table(
        ["figure", "median", "min", "max", "vs curl", "target (issue 2)", "rclone*"], rows)
    return "\n".join([header, "", table, "", *check_lines(facts),
                      "* rclone mount (http, vfs full), design.md, same machine kind; orientation only."])


def check_lines(facts: dict[str, Any]) -> list[str]:
    verified = facts.get("big_sha256_verified", {})
    marks = ", ".join(f"{m} {'ok' if ok else 'WRONG'}" for m, ok in verified.items())
    problems = facts.get("daemon_log_problems", [])
    lines = [
        f"checks: big file sha256 through the mount (untimed pass): {marks or 'not run'}",
        f"        small files read and sha256-checked: {sum(facts.get('small_files_verified', []))}",
        f"        big-file GETs per cold read: {facts.get('cold_data_gets', [])}; "
        f"during warm+hot reads: {facts.get('warm_hot_data_gets', [])} (should be 0)",
        f"        cache state after warm read: {sorted(set(facts.get('state_after_warm', [])))}",
        f"        daemon log warnings/errors: {len(problems)}",
        f"host:   1-min load average {facts.get('loadavg_1m_start', 0):.2f} at start, "
        f"{facts.get('loadavg_1m_end', 0):.2f} at end ({os.cpu_count()} CPUs); "
        f"other load makes the figures noisy",
    ]
    lines += [f"          {p}" for p in problems[:10]]
    return lines


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--big-size", type=int, default=1024, metavar="MiB",
                   help="size of the big file in MiB (default 1024)")
    p.add_argument("--small-count", type=int, default=2000, metavar="N",
                   help=f"number of {SMALL_SIZE // KiB} KiB files (default 2000)")
    p.add_argument("--runs", type=int, default=3, metavar="N",
                   help="repetitions of every measurement (default 3)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all raw numbers here")
    args = p.parse_args(argv)
    if args.big_size < 1 or args.small_count < 1 or args.runs < 1:
        p.error("--big-size, --small-count and --runs must be at least 1")
    return args


def host_info() -> dict[str, Any]:
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "uid": os.geteuid(),
            "python": platform.python_version()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, measure and tear down; return everything for the report."""
    results = new_results()
    with contextlib.ExitStack() as stack:
        ws = Workspace("cachefs-bench-")
        stack.callback(ws.remove)
        mounts = Mounts()
        stack.callback(mounts.unmount_all)
        # Registered last, so it runs first: a second Ctrl-C cannot stop cleanup.
        stack.callback(ignore_interrupts)

        print(f"generating {args.big_size} MiB + {args.small_count} x {SMALL_SIZE // KiB} KiB "
              f"in {ws.path} ...", flush=True)
        data = generate(ws.fresh_dir("store"), args.big_size * MiB, args.small_count)
        # NginxStore needs stop() even if start() fails half-way.
        store = NginxStore(data.root, ws.fresh_dir("nginx"))
        stack.callback(store.stop)
        store.start()
        print(f"serving at {store.url}", flush=True)

        bench = CoreBench(ws, store, mounts, data, results)
        started = time.perf_counter()
        results.facts["loadavg_1m_start"] = os.getloadavg()[0]
        print("verification pass (sha256 of the big file, cold/warm/hot) ...", flush=True)
        results.facts["verify_pass_mbps"] = bench.big_file("verify", verify=True)
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            bench.run_once(i)
        results.facts["elapsed_s"] = time.perf_counter() - started
        results.facts["loadavg_1m_end"] = os.getloadavg()[0]
    return {
        "config": {"big_size_mib": args.big_size, "small_count": args.small_count,
                   "small_size": SMALL_SIZE, "runs": args.runs,
                   "parallel_readers": PARALLEL_READERS, "read_block": MiB, "mb": MB},
        "host": host_info(),
        "figures": summary(results),
        "facts": results.facts,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_interrupt()
    try:
        require_tools("curl", "ls", "umount")
        report = run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (BenchError, NginxError, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    header = (f"cachefs core benchmark: big file {args.big_size} MiB, "
              f"{args.small_count} x {SMALL_SIZE // KiB} KiB small files, "
              f"median of {args.runs} runs (MB = 10^6 bytes)")
    emit_report(render(report["figures"], report["facts"], header), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
