"""Core benchmark of cachefs against a local nginx (issue 2).

One run generates a data set in a temp dir (one big file of random bytes and
many small files, as in design.md's "Reference numbers"), serves it with a
loopback nginx, and measures through real `cachefs` mounts:

- curl's MB/s for the big file's URL: the reference for what HTTP can deliver;
- big file, cold: fresh cache dir and mount, source file hot in the page cache;
- big file, warm: cache complete, remounted, page cache dropped;
- big file, hot: read again right away, page cache kept;
- small files, cold: files/s with 1 reader and with 8 parallel readers;
- `ls -lR` of the small-file tree on a cold mount, in seconds;
- the daemon's CPU time (user + system, from /proc) for the cold reads: ms
  per MB of the big file, and ms per small file with 1 reader: on a busy
  machine a steadier figure than the speeds.

With --https the same data is served over HTTPS instead (a CA made for the
run, trusted by the mounts and curl through SSL_CERT_FILE): compare with a
run without it for the cost of TLS.

Each figure is the median of --runs repetitions, with min and max. The big
file's sha256 through the mount is checked against the source once per mode
(cold, warm, hot) in an untimed pass, and every small file in every timed pass,
so wrong bytes cannot pass for speed. Everything made (mounts, nginx, data) is
removed at the end, also on errors and Ctrl-C.

    .venv/bin/python bench/bench_core.py [--big-size MiB] [--small-count N]
                                         [--runs N] [--https] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cachefs.benchmark.data import BIG_NAME, SMALL_DIR, FileSet, data_gets, generate
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import fmt_number, format_table, load_line, script_document
from cachefs.benchmark.rig import MountBench, Rig, require_tools, run_script
from cachefs.benchmark.system import (MB, BenchError, KiB, MiB, cache_state, daemon_of, drop_page_cache,
                                      hash_whole, make_hot, read_files, sequential_mbps, timed)
from cachefs.localstore.nginx import NginxStore
from cachefs.localstore.tls import make_server_cert

SMALL_SIZE = 16 * KiB
PARALLEL_READERS = 8

# Issue 2's targets, judged on the median.
TARGET_COLD_MBPS = 400.0
TARGET_SMALL_FILES_PER_S = 1000.0

# design.md, "Reference numbers": rclone mount (http, vfs full) on the same
# machine kind and data shape, for orientation only.
RCLONE_REFERENCE: dict[str, float] = {
    "big_cold": 204, "big_warm": 854, "big_hot": 744, "small_cold_1": 932, "ls_cold": 0.24,
}


# -- the benchmark -----------------------------------------------------------------


def new_record() -> Record:
    return Record({
        "curl": Series("curl, reference", "MB/s"),
        "big_cold": Series("big file cold", "MB/s"),
        "big_warm": Series("big file warm", "MB/s"),
        "big_hot": Series("big file hot", "MB/s"),
        "small_cold_1": Series("small files cold, 1 reader", "files/s"),
        f"small_cold_{PARALLEL_READERS}": Series(
            f"small files cold, {PARALLEL_READERS} readers", "files/s"),
        "ls_cold": Series("ls -lR cold", "s"),
        "cpu_big_cold": Series("daemon CPU, big file cold", "ms/MB"),
        "cpu_small_cold": Series("daemon CPU, small files cold, 1 reader", "ms/file"),
    })


def cpu_seconds(pid: int) -> float:
    """User and system CPU time `pid` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CoreBench(MountBench):
    """The measurements; each one mounts a fresh cache, measures, unmounts and checks logs."""

    def __init__(self, rig: Rig, store: NginxStore, files: FileSet, record: Record, https: bool) -> None:
        super().__init__(rig, store.https_url if https else store.url, record)
        self.store = store
        self.files = files

    def read_big(self, verify: bool, mode: str) -> float:
        """Read the big file through the mount; return MB/s."""
        path = self.mountpoint / BIG_NAME
        if not verify:
            return sequential_mbps(path, self.files.big_size, self.buf)
        seconds, (n, digest) = timed(hash_whole, path)
        ok = self.files.expected is not None and digest == self.files.expected[BIG_NAME]
        self.record.facts.setdefault("big_sha256_verified", {})[mode] = ok
        if not ok:
            raise BenchError(f"{mode} read of {BIG_NAME} returned wrong bytes (sha256 differs)")
        if n != self.files.big_size:
            raise BenchError(f"{mode} read of {BIG_NAME} returned {n} bytes, not {self.files.big_size}")
        return n / MB / seconds

    # -- measurements --

    def curl(self) -> None:
        make_hot([self.store.root / BIG_NAME])
        tls = ["--cacert", str(self.store.tls.ca)] if self.store.tls is not None else []
        out = subprocess.run(
            ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", *tls,
             "-w", "%{speed_download} %{size_download} %{http_code}", self.url + BIG_NAME],
            capture_output=True, text=True, check=False,
        )
        fields = out.stdout.split()
        if out.returncode != 0 or len(fields) != 3:
            raise BenchError(f"curl failed (rc {out.returncode}): {out.stderr.strip() or out.stdout}")
        speed, size, status = fields
        if status != "200" or int(float(size)) != self.files.big_size:
            raise BenchError(f"curl got status {status} and {size} bytes, not {self.files.big_size}")
        self.record.series["curl"].add(float(speed) / MB)

    def big_file(self, label: str, verify: bool) -> dict[str, float]:
        """Cold, then warm (remount, page cache dropped), then hot reads."""
        speeds: dict[str, float] = {}
        with self.fresh_cache(label) as cache:
            make_hot([self.store.root / BIG_NAME])
            os.sync()
            self.mount(cache)
            self.store.clear_access_log()
            pid = daemon_of(self.mountpoint).pid
            cpu = cpu_seconds(pid)
            speeds["cold"] = self.read_big(verify, "cold")
            speeds["cpu_cold"] = (cpu_seconds(pid) - cpu) * 1000 / (self.files.big_size / MB)
            self.record.note("cold_data_gets", data_gets(self.store, BIG_NAME))

            self.remount(cache)
            if not drop_page_cache():
                raise BenchError("cannot drop the page cache (needs root) for the warm read")
            self.store.clear_access_log()
            speeds["warm"] = self.read_big(verify, "warm")
            speeds["hot"] = self.read_big(verify, "hot")
            self.record.note("warm_hot_data_gets", data_gets(self.store, BIG_NAME))
            self.record.note("state_after_warm", cache_state(self.mountpoint / BIG_NAME))
        return speeds

    def small_files(self, label: str, readers: int) -> tuple[float, float]:
        """Read every small file once (open/read/close, sha256-checked); return
        files/s and the daemon's CPU ms per file."""
        with self.fresh_cache(label) as cache:
            make_hot(self.files.small_paths(self.store.root))
            os.sync()
            self.mount(cache)
            paths = self.files.small_paths(self.mountpoint)
            expected = self.files.expected_small(lambda k: self.mountpoint / k)
            pid = daemon_of(self.mountpoint).pid
            cpu = cpu_seconds(pid)
            files_per_s = read_files(paths, expected, readers)
            cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / len(paths)
        self.record.note("small_files_verified", len(paths))
        return files_per_s, cpu_ms

    def ls_lr(self, label: str) -> float:
        """Seconds for `ls -lR` of the small-file tree on a cold mount."""
        with self.fresh_cache(label) as cache:
            self.mount(cache)
            seconds, out = timed(
                subprocess.run, ["ls", "-lR", str(self.mountpoint / SMALL_DIR)],
                capture_output=True, text=True, check=True,
            )
        listed = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
        if listed != len(self.files.small):
            raise BenchError(f"ls -lR listed {listed} files, not {len(self.files.small)}")
        return seconds

    def run_once(self, i: int) -> None:
        s = self.record.series
        self.curl()
        big = self.big_file(f"big-{i}", verify=False)
        s["big_cold"].add(big["cold"])
        s["big_warm"].add(big["warm"])
        s["big_hot"].add(big["hot"])
        s["cpu_big_cold"].add(big["cpu_cold"])
        files_per_s, cpu_ms = self.small_files(f"small1-{i}", 1)
        s["small_cold_1"].add(files_per_s)
        s["cpu_small_cold"].add(cpu_ms)
        s[f"small_cold_{PARALLEL_READERS}"].add(
            self.small_files(f"small{PARALLEL_READERS}-{i}", PARALLEL_READERS)[0])
        s["ls_cold"].add(self.ls_lr(f"ls-{i}"))


# -- report ----------------------------------------------------------------------------


def _target(key: str) -> float | None:
    if key == "big_cold":
        return TARGET_COLD_MBPS
    if key.startswith("small_cold"):
        return TARGET_SMALL_FILES_PER_S
    return None


def summary(record: Record) -> dict[str, dict[str, Any]]:
    """Per figure: raw values, median/min/max, ratio to curl, target verdict."""
    curl = record.series["curl"].median
    out: dict[str, dict[str, Any]] = {}
    for key, s in record.series.items():
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
        digits = 0 if f["unit"] in ("MB/s", "files/s") else 2
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
        load_line(facts),
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
    p.add_argument("--https", action="store_true",
                   help="serve over HTTPS, with a CA made for the run (default: plain HTTP)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all raw numbers here")
    args = p.parse_args(argv)
    if args.big_size < 1 or args.small_count < 1 or args.runs < 1:
        p.error("--big-size, --small-count and --runs must be at least 1")
    return args


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Set up, measure and tear down; return the table and everything for the JSON."""
    require_tools("curl", "ls", "umount")
    record = new_record()
    with Rig("cachefs-bench-") as rig:
        print(f"generating {args.big_size} MiB + {args.small_count} x {SMALL_SIZE // KiB} KiB "
              f"in {rig.workspace.path} ...", flush=True)
        source = rig.workspace.fresh_dir("store")
        files = generate(source, args.big_size * MiB, args.small_count, SMALL_SIZE)
        cert = None
        if args.https:
            cert = make_server_cert(rig.workspace.fresh_dir("tls"))
            # The mounts (child processes) trust the run's CA as users trust theirs.
            os.environ["SSL_CERT_FILE"] = str(cert.ca)
        store = rig.serve(NginxStore(source, rig.workspace.fresh_dir("nginx"), tls=cert))
        bench = CoreBench(rig, store, files, record, args.https)
        print(f"serving at {bench.url}", flush=True)

        started = time.perf_counter()
        record.facts["loadavg_1m_start"] = os.getloadavg()[0]
        print("verification pass (sha256 of the big file, cold/warm/hot) ...", flush=True)
        record.facts["verify_pass_mbps"] = bench.big_file("verify", verify=True)
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            bench.run_once(i)
        record.facts["elapsed_s"] = time.perf_counter() - started
        record.facts["loadavg_1m_end"] = os.getloadavg()[0]
    config = {"big_size_mib": args.big_size, "small_count": args.small_count,
              "small_size": SMALL_SIZE, "runs": args.runs, "https": args.https,
              "parallel_readers": PARALLEL_READERS, "read_block": MiB, "mb": MB}
    report = script_document(config, summary(record), record.facts)
    header = (f"cachefs core benchmark{' over HTTPS' if args.https else ''}: big file {args.big_size} MiB, "
              f"{args.small_count} x {SMALL_SIZE // KiB} KiB small files, "
              f"median of {args.runs} runs (MB = 10^6 bytes)")
    return render(report["figures"], report["facts"], header), report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: run(args), args.json, (subprocess.CalledProcessError,))


if __name__ == "__main__":
    sys.exit(main())
