"""Mount until it answers (issue 17): from starting `cachefs mount` until a
listing of the mountpoint returns.

One loopback nginx (cachefs.localstore.NginxStore) serves a folder of a few
files; with --s3, moto's S3 server serves the same files in a bucket (signed
requests, keys from the environment). For each source, two cases:

- new: a cache dir that does not exist yet (what a first mount, and
  bench_clients.py's "mount" figure, pay: the cache folder, its database
  and its data folders are made);
- known: the same cache dir mounted before (its database exists).

Each run times the `cachefs mount` command from its start (Popen) until it
has exited 0 and `os.listdir` of the mountpoint has returned the expected
names; then `cachefs umount`. Besides the time, the CPU the command spent
(its rusage) and the daemon's CPU up to then (/proc/PID/stat): on a busy
machine the steadier figures. The daemon logs a `startup:` line with the
time of each step; its medians are the breakdown.

--vs CMD times a second cachefs command (another checkout's `.venv/bin/cachefs`,
a wheel installed in a venv) in turns with the first, A B A B, and prints
A/B pair by pair: the way to compare before and after on a shared machine.

--importtime runs one foreground mount per case with `-X importtime` and
prints which heavy packages the process imported and the import time of
their own modules (python's own figure): what the source needs, and what it must
not import (botocore, numpy, matplotlib for an http source; sqlite_utils
for a known cache).

    .venv/bin/python bench/bench_startup.py [--runs N] [--s3] [--vs CMD]
        [--cachefs CMD] [--importtime] [--json FILE]

A checkout run with PYTHONDONTWRITEBYTECODE set recompiles every module of
cachefs on each start unless they were byte-compiled once: run
`python -m compileall -q cachefs migrations` first (an installed wheel is
compiled at install). Needs nginx and fuse3 (./dev setup), moto for --s3
(the test extra). Everything is unmounted and stopped (by pid) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachefs.benchmark.system import BenchError, is_mounted, lazy_unmount
from cachefs.localstore.nginx import LOOPBACK, NginxStore, free_port
from cachefs.runtime import NotRunning, holder_of_mount

FILES = {f"file{i}.txt": f"file {i}\n".encode() for i in range(8)}
BUCKET = "startup"
MOUNT_TIMEOUT_S = 60.0
S3_START_TIMEOUT_S = 30.0
# Packages whose import the --importtime report names.
HEAVY = ("trio", "httpx", "sqlite_utils", "botocore", "numpy", "matplotlib")
# The daemon's log line: "startup: 0.312 s ...: command 0.005, python 0.041, ..."
STARTUP_LINE = re.compile(r"startup: .*?: (.*)$")
STEP = re.compile(r"([a-z][a-z ]*?) (\d+\.\d+)")


@dataclass
class Variant:
    """One cachefs command being timed."""

    name: str
    argv: list[str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT_S, check=False)


@dataclass
class Sample:
    wall: float
    command_cpu: float
    daemon_cpu: float
    steps: dict[str, float]


@dataclass
class Results:
    # (case, variant) -> samples, in run order (pairs line up by index)
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    imports: dict[tuple[str, str], dict[str, float | None]] = field(default_factory=dict)

    def add(self, case: str, variant: str, sample: Sample) -> None:
        self.samples.setdefault((case, variant), []).append(sample)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def startup_steps(folder: Path) -> dict[str, float]:
    """The steps of the last `startup:` line in a source folder's daemon.log."""
    try:
        lines = (folder / "daemon.log").read_text("utf-8", "replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        found = STARTUP_LINE.search(line)
        if found:
            return {name.strip(): float(value) for name, value in STEP.findall(found.group(1))}
    return {}


# -- the sources ------------------------------------------------------------------------


@dataclass
class Source:
    name: str
    url: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def nginx_source(work: Path) -> Iterator[Source]:
    root = work / "root"
    root.mkdir()
    for name, body in FILES.items():
        (root / name).write_bytes(body)
    with NginxStore(root, work / "nginx") as store:
        yield Source("http", store.url)


@contextlib.contextmanager
def moto_source(work: Path) -> Iterator[Source]:
    """moto's S3 server as our child (stopped by pid), one bucket of FILES."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if server is None:
        raise BenchError("--s3 needs moto's server (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    with open(work / "moto.log", "wb") as log:
        proc = subprocess.Popen([server, "-H", LOOPBACK, "-p", str(port)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while True:
            try:
                # moto checks no signature by default: plain PUTs fill the bucket.
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("moto's S3 server did not start") from None
                time.sleep(0.1)
        for name, body in FILES.items():
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}/{name}", data=body,
                                                          method="PUT"), timeout=5)
        env = {"AWS_ACCESS_KEY_ID": "startupbench", "AWS_SECRET_ACCESS_KEY": "startupbench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
        yield Source("s3", f"s3://{BUCKET}", ("--endpoint-url", endpoint, "--force-path-style"), env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- timing ----------------------------------------------------------------------------


def environ_for(source: Source) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **source.env}


def unmount(variant: Variant, mountpoint: Path) -> None:
    if not is_mounted(mountpoint):
        return
    done = variant.run("umount", str(mountpoint))
    if done.returncode != 0:
        lazy_unmount(mountpoint)
        raise BenchError(f"cachefs umount {mountpoint}: {done.stderr.strip()}")


def timed_mount(variant: Variant, source: Source, mountpoint: Path, cache: Path) -> Sample:
    """One `cachefs mount` until the mountpoint lists; left mounted."""
    argv = [*variant.argv, "mount", source.url, str(mountpoint), "--cache-dir", str(cache), *source.args]
    env = environ_for(source)
    cpu_before = children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _out, err = proc.communicate(timeout=MOUNT_TIMEOUT_S)
    names = sorted(os.listdir(mountpoint)) if proc.returncode == 0 else []
    wall = time.perf_counter() - started
    command_cpu = children_cpu() - cpu_before
    if proc.returncode != 0:
        raise BenchError(f"{variant.name}: cachefs mount failed: {err.strip()}")
    if names != sorted(FILES):
        raise BenchError(f"{variant.name}: the mount lists {names}, not {sorted(FILES)}")
    try:
        holder = holder_of_mount(str(mountpoint))
    except NotRunning as e:
        raise BenchError(str(e)) from None
    return Sample(wall, command_cpu, cpu_seconds(holder.pid), startup_steps(Path(holder.cache_dir)))


def import_report(variant: Variant, source: Source, mountpoint: Path, cache: Path) -> dict[str, float | None]:
    """Import ms of HEAVY packages' own modules in one foreground mount (None: not imported)."""
    env = {**environ_for(source), "PYTHONPROFILEIMPORTTIME": "1"}
    argv = [*variant.argv, "mount", "--foreground", source.url, str(mountpoint), "--cache-dir", str(cache),
            *source.args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not (is_mounted(mountpoint) and os.listdir(mountpoint)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{variant.name}: foreground mount did not answer")
            time.sleep(0.02)
    finally:
        unmount(variant, mountpoint)
        _out, err = proc.communicate(timeout=MOUNT_TIMEOUT_S)
    # Each package's own modules' self times: what importing it costs beyond
    # what others import too. A module whose import fails has no line.
    found: dict[str, float | None] = dict.fromkeys(HEAVY)
    for line in err.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        top = parts[2].strip().split(".")[0]
        if top in found:
            found[top] = (found[top] or 0.0) + int(parts[0].rsplit(":", 1)[1]) / 1000
    return found


# -- the report ----------------------------------------------------------------------------


def fmt(values: list[float], scale: float = 1000) -> str:
    return (f"{statistics.median(values) * scale:7.0f} "
            f"({min(values) * scale:.0f}-{max(values) * scale:.0f})")


def report(results: Results, variants: list[Variant], cases: list[str]) -> str:
    out = ["mount until it answers, ms: median (min-max) of the runs; CPU in ms"]
    out.append(f"{'case':<11} {'command':<10} {'wall':>17} {'command cpu':>17} {'daemon cpu':>17}")
    for case in cases:
        for v in variants:
            s = results.samples.get((case, v.name), [])
            if s:
                out.append(f"{case:<11} {v.name:<10} {fmt([x.wall for x in s]):>17} "
                           f"{fmt([x.command_cpu for x in s]):>17} {fmt([x.daemon_cpu for x in s]):>17}")
    if len(variants) == 2:
        a, b = variants
        out.append(f"\n{a.name}/{b.name}, pair by pair: median (min-max)")
        for case in cases:
            pa, pb = results.samples.get((case, a.name), []), results.samples.get((case, b.name), [])
            if pa and pb:
                wall = [x.wall / y.wall for x, y in zip(pa, pb)]
                cpu = [(x.command_cpu + x.daemon_cpu) / (y.command_cpu + y.daemon_cpu) for x, y in zip(pa, pb)]
                out.append(f"{case:<11} wall {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f})"
                           f"   cpu (command + daemon) {statistics.median(cpu):.2f}"
                           f" ({min(cpu):.2f}-{max(cpu):.2f})")
    for case in cases:
        for v in variants:
            s = [x.steps for x in results.samples.get((case, v.name), []) if x.steps]
            if not s:
                continue
            names = list(dict.fromkeys(n for steps in s for n in steps))
            parts = [f"{n} {statistics.median([steps.get(n, 0.0) for steps in s]) * 1000:.0f}" for n in names]
            out.append(f"\nstartup steps, {case}, {v.name} (medians, ms): {', '.join(parts)}")
    for (case, name), found in results.imports.items():
        shown = ", ".join(f"{p} {ms:.0f}" if ms is not None else f"{p} -" for p, ms in found.items())
        out.append(f"\nimported by a foreground mount, {case}, {name} (ms, its own modules; - not imported): {shown}")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = str(Path(sys.executable).parent / "cachefs")
    p.add_argument("--runs", type=int, default=7, help="timed mounts per case and command (default 7)")
    p.add_argument("--cachefs", default=here, help=f"the cachefs command to time (default {here})")
    p.add_argument("--vs", help="a second cachefs command, timed in turns with the first")
    p.add_argument("--s3", action="store_true", help="also an s3:// source (moto's server)")
    p.add_argument("--importtime", action="store_true", help="report what a foreground mount imports")
    p.add_argument("--json", type=Path, help="write the samples here too")
    return p.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> Results:
    variants = [Variant("A", shlex.split(args.cachefs))]
    if args.vs:
        variants.append(Variant("B", shlex.split(args.vs)))
    results = Results()
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(nginx_source(work))]
        if args.s3:
            sources.append(stack.enter_context(moto_source(work)))
        current: list[Variant] = []
        stack.callback(lambda: [unmount(v, mountpoint) for v in current])
        for source in sources:
            known = {v.name: work / f"known-{source.name}-{v.name}" for v in variants}
            for v in variants:  # untimed: makes the known caches
                current[:] = [v]
                timed_mount(v, source, mountpoint, known[v.name])
                unmount(v, mountpoint)
            for i in range(args.runs):
                print(f"{source.name}: run {i + 1} of {args.runs}", file=sys.stderr)
                order = variants if i % 2 == 0 else variants[::-1]
                for case in ("new", "known"):
                    for v in order:
                        cache = known[v.name] if case == "known" else work / f"new-{source.name}-{v.name}-{i}"
                        current[:] = [v]
                        results.add(f"{source.name} {case}", v.name, timed_mount(v, source, mountpoint, cache))
                        unmount(v, mountpoint)
                        if case == "new":
                            shutil.rmtree(cache, ignore_errors=True)
            if args.importtime:
                for v in variants:
                    current[:] = [v]
                    new = work / f"imports-{source.name}-{v.name}"
                    results.imports[(f"{source.name} new", v.name)] = import_report(v, source, mountpoint, new)
                    results.imports[(f"{source.name} known", v.name)] = import_report(v, source, mountpoint, new)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cachefs-startup-"))
    try:
        results = run(args, work)
    except BenchError as e:
        print(f"bench_startup: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cases = list(dict.fromkeys(case for case, _v in results.samples))
    variants = [Variant("A", shlex.split(args.cachefs))] + ([Variant("B", shlex.split(args.vs))] if args.vs else [])
    print(f"A: {args.cachefs}" + (f"\nB: {args.vs}" if args.vs else ""))
    print(report(results, variants, cases))
    if args.json:
        args.json.write_text(json.dumps({
            "samples": {f"{c} | {v}": [s.__dict__ for s in ss] for (c, v), ss in results.samples.items()},
            "imports": {f"{c} | {v}": found for (c, v), found in results.imports.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
