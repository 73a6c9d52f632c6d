"""Foreground reads during a large prefetch (issue 5).

Issue 5's figure: "a process reading another file during a large prefetch
still gets at least half of the throughput it gets alone". One loopback nginx
serves file A (default 1024 MiB) and a prefetch set of several files (default
8 x 512 MiB in pf/). Each run does three phases, each on a fresh cache dir and
a new mount (their order rotates from run to run):

- read alone: A read cold (nothing cached) start to end in 1 MiB reads;
- prefetch alone: `cachefs prefetch MOUNT/pf --json`, timed;
- read during prefetch: the same prefetch started (waiting client, as a child
  process), and once it has cached a warm-up amount, A read cold as above; the
  prefetch's own progress over A's read (the state xattrs of the pf files) gives
  its throughput meanwhile.

Reported: A's MB/s alone and during, their ratio per run, the prefetch's MB/s
alone and during A's read, as median/min/max over --runs; the target (ratio
>= 0.5, on the median) met or not. Checks: A's sha256 through the mount after
an untimed first cold read and after each "during" phase, every prefetch summary without failures and complete, the
prefetch still running when A's read ended (else the phase measured nothing),
and warning/error lines of the daemon logs.

    bench_prefetch.py [--a-size MiB] [--pf-files N] [--pf-size MiB] [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.benchmark.data import write_random_file
from cachefs.benchmark.model import Record, Series
from cachefs.benchmark.report import fmt_number, format_table, script_document
from cachefs.benchmark.rig import MountBench, Rig, run_script
from cachefs.benchmark.system import (MB, STATE_XATTR, BenchError, MiB, hash_whole, make_hot,
                                      sequential_mbps)
from cachefs.localstore.nginx import NginxStore

A_NAME = "a.bin"
PF_DIR = "pf"
TARGET_RATIO = 0.5  # issue 5, judged on the median ratio
# The prefetch has this much cached before A's read starts: it is at speed.
WARMUP_BYTES = 64 * MiB
PREFETCH_TIMEOUT_S = 1800.0
POLL_S = 0.05

FIGURES = {
    "read_alone": ("A cold read, alone", "MB/s"),
    "read_during": ("A cold read, during prefetch", "MB/s"),
    "ratio": ("ratio during / alone (per run)", "x"),
    "pf_alone": ("prefetch, alone", "MB/s"),
    "pf_during": ("prefetch, during A's read", "MB/s"),
}
PHASES = ("read_alone", "pf_alone", "during")


@dataclass
class Dataset:
    root: Path
    a_size: int
    a_sha256: str
    pf_sizes: dict[str, int]  # relative path -> size

    @property
    def pf_total(self) -> int:
        return sum(self.pf_sizes.values())


def generate(root: Path, a_size: int, pf_files: int, pf_size: int) -> Dataset:
    """File A and the prefetch set, random bytes."""
    a_sha = write_random_file(root / A_NAME, a_size)
    sizes = {}
    for i in range(pf_files):
        rel = f"{PF_DIR}/f{i:02d}.bin"
        write_random_file(root / rel, pf_size)
        sizes[rel] = pf_size
    return Dataset(root, a_size, a_sha, sizes)


def cached_bytes(path: Path, size: int) -> int:
    """Bytes of a file in the cache, from its state xattr."""
    state = os.getxattr(path, STATE_XATTR).decode()
    if state.startswith("partial "):
        return int(state.split()[1].split("/")[0])
    return size if state == "complete" or state.startswith("passthrough") else 0


def prefetch_command(mountpoint: Path) -> list[str]:
    return [sys.executable, "-m", "cachefs.cli", "prefetch", str(mountpoint / PF_DIR), "--json"]


def parse_summary(out: str, err: str, rc: int) -> dict[str, Any]:
    """The JSON summary of `prefetch --json`; a failed prefetch is an error."""
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError(f"prefetch exited {rc} without a summary: {err.strip()[-500:]}") from None
    if rc != 0 or summary["failures"] or summary["files_done"] != summary["files_total"]:
        raise BenchError(f"prefetch did not complete (rc {rc}): {out.strip()[-500:]}")
    return summary


class PrefetchBench(MountBench):
    """The three phases; each one mounts a fresh cache dir, measures, unmounts."""

    def __init__(self, rig: Rig, store: NginxStore, data: Dataset, record: Record) -> None:
        super().__init__(rig, store.url, record)
        self.data = data

    @contextlib.contextmanager
    def fresh_mount(self, label: str) -> Iterator[None]:
        """Mount a new cache dir; on exit unmount, collect log problems, delete it."""
        with self.fresh_cache(label) as cache:
            self.mount(cache)
            os.sync()  # the previous phase's cache writes must not land on this one
            yield

    def read_a(self) -> float:
        return sequential_mbps(self.mountpoint / A_NAME, self.data.a_size, self.buf)

    def pf_cached(self) -> int:
        return sum(cached_bytes(self.mountpoint / rel, size) for rel, size in self.data.pf_sizes.items())

    def verify_a(self) -> None:
        n, digest = hash_whole(self.mountpoint / A_NAME)
        ok = n == self.data.a_size and digest == self.data.a_sha256
        self.record.note("a_sha256_ok", ok)
        if not ok:
            raise BenchError(f"{A_NAME} read through the mount has wrong bytes")

    # -- phases --

    def verify_pass(self) -> None:
        """Untimed: A read cold with sha256 through a fresh mount (also warms nginx and the daemon code)."""
        with self.fresh_mount("verify"):
            self.verify_a()

    def read_alone(self, i: int) -> None:
        with self.fresh_mount(f"read-alone-{i}"):
            self.record.series["read_alone"].add(self.read_a())

    def pf_alone(self, i: int) -> None:
        with self.fresh_mount(f"pf-alone-{i}"):
            proc = subprocess.run(prefetch_command(self.mountpoint), capture_output=True, text=True,
                                  timeout=PREFETCH_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
            summary = parse_summary(proc.stdout, proc.stderr, proc.returncode)
            self.record.series["pf_alone"].add(summary["bytes_fetched"] / MB / summary["elapsed"])

    def during(self, i: int) -> None:
        with self.fresh_mount(f"during-{i}"):
            proc = subprocess.Popen(prefetch_command(self.mountpoint), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            try:
                self._wait_warm(proc)
                before, t0 = self.pf_cached(), time.perf_counter()
                read_mbps = self.read_a()
                after, seconds = self.pf_cached(), time.perf_counter() - t0
                still_running = proc.poll() is None and after < self.data.pf_total
                out, err = proc.communicate(timeout=PREFETCH_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()  # our child, by its pid
                    proc.wait()
            parse_summary(out, err, proc.returncode)
            self.record.note("prefetch_running_until_read_ended", still_running)
            if not still_running:
                raise BenchError("the prefetch ended before A's read did: use a larger --pf-size")
            self.record.series["read_during"].add(read_mbps)
            self.record.series["pf_during"].add((after - before) / MB / seconds)
            self.verify_a()

    def _wait_warm(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + PREFETCH_TIMEOUT_S
        while self.pf_cached() < WARMUP_BYTES:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the prefetch never got going (exit {proc.returncode})")
            time.sleep(POLL_S)

    def run_once(self, i: int) -> None:
        """All three phases, in an order that rotates with the run number."""
        order = PHASES[i % len(PHASES):] + PHASES[: i % len(PHASES)]
        for phase in order:
            getattr(self, phase)(i)
        alone, during = self.record.series["read_alone"].values, self.record.series["read_during"].values
        self.record.series["ratio"].add(during[-1] / alone[-1])


# -- report -----------------------------------------------------------------------------


def summary(record: Record) -> dict[str, dict[str, Any]]:
    return {key: {"title": s.name, "unit": s.unit, "median": s.median, "min": s.low, "max": s.high,
                  "runs": s.values}
            for key, s in record.series.items()}


def verdict(figures: dict[str, dict[str, Any]]) -> str:
    ratio = figures["ratio"]["median"]
    if ratio is None:
        return "n/a"
    return "met" if ratio >= TARGET_RATIO else "NOT met"


def render(figures: dict[str, dict[str, Any]], facts: dict[str, Any], header: str) -> str:
    rows = []
    for key, f in figures.items():
        digits = 2 if f["unit"] == "x" else 0
        target = f">= {TARGET_RATIO} ({verdict(figures)})" if key == "ratio" else ""
        rows.append([f"{f['title']} ({f['unit']})", fmt_number(f["median"], digits),
                     fmt_number(f["min"], digits), fmt_number(f["max"], digits), target])
    table = format_table(["figure", "median", "min", "max", "target (issue 5)"], rows)
    checks = [
        f"A's sha256 through the mount: {'ok' if all(facts.get('a_sha256_ok', [])) else 'WRONG'}",
        f"prefetch still running when A's read ended: {facts.get('prefetch_running_until_read_ended')}",
        f"daemon log problems: {len(facts.get('daemon_log_problems', []))}",
        *(f"  {line}" for line in facts.get("daemon_log_problems", [])[:10]),
    ]
    return "\n".join([header, "", table, "", *checks])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a-size", type=int, default=1024, help="file A, MiB (default 1024)")
    p.add_argument("--pf-files", type=int, default=8, help="files in the prefetch set (default 8)")
    p.add_argument("--pf-size", type=int, default=512, help="size of each, MiB (default 512)")
    p.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args(argv)
    if min(args.a_size, args.pf_files, args.pf_size, args.runs) < 1:
        p.error("sizes, counts and --runs must be at least 1")
    return args


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Set up, measure and tear down; return the table and everything for the JSON."""
    record = Record({key: Series(title, unit) for key, (title, unit) in FIGURES.items()})
    with Rig("cachefs-bench-prefetch-") as rig:
        print(f"generating {args.a_size} MiB + {args.pf_files} x {args.pf_size} MiB in "
              f"{rig.workspace.path} ...", flush=True)
        data = generate(rig.workspace.fresh_dir("store"), args.a_size * MiB, args.pf_files,
                        args.pf_size * MiB)
        make_hot([data.root / A_NAME, *(data.root / rel for rel in data.pf_sizes)])
        store = rig.serve(NginxStore(data.root, rig.workspace.fresh_dir("nginx")))
        bench = PrefetchBench(rig, store, data, record)
        print("verification pass (A's sha256 through a fresh mount) ...", flush=True)
        bench.verify_pass()
        started = time.perf_counter()
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            bench.run_once(i)
        record.facts["elapsed_s"] = time.perf_counter() - started
    config = {"a_size_mib": args.a_size, "pf_files": args.pf_files, "pf_size_mib": args.pf_size,
              "runs": args.runs, "warmup_bytes": WARMUP_BYTES, "mb": MB}
    report = script_document(config, summary(record), record.facts)
    header = (f"cachefs prefetch benchmark: A {args.a_size} MiB read cold in 1 MiB reads; prefetch of "
              f"{args.pf_files} x {args.pf_size} MiB; {args.runs} runs (MB = 10^6 bytes)")
    return render(report["figures"], report["facts"], header), report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: run(args), args.json, (subprocess.SubprocessError,))


if __name__ == "__main__":
    sys.exit(main())
