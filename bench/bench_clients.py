"""cachefs and its peers side by side over HTTP, HTTPS and S3 (issue 17).

One generated data set (a big file of random bytes and many 16 KiB files in
folders of 100) is served on loopback by nginx over HTTP and over HTTPS (a
generated CA) and by SeaweedFS over S3 (`cachefs.benchmark.sources`). Each
client mounts each source in turn (`cachefs.benchmark.peers`: rclone, rclone
with 8 chunk streams, s3fs, httpdirfs) and gets the same measurements:

- mount: from the start of the mount command until the mount lists its root;
- ls -lR cold and warm: on that fresh mount, `ls -lR` of the small files' tree,
  then again at once;
- small files cold: a new cache and mount, every small file read once;
- big file cold: then, on that mount, the big file read start to end; curl
  writing the same object to a file on the same disk is the reference;
- the client's CPU (its process tree's user+sys, from /proc) per small file
  and per MB over those two reads, and its peak RSS (VmHWM) after them;
- small files warm: the same cache mounted again (cachefs: passthrough), the
  page cache dropped, the files read again; native reads of the source's
  files, page cache dropped, are the reference.

With tinyproxy (`./dev peers`), cachefs also reads the HTTP and HTTPS sources
through it (`--proxy`): small and big cold against the same run's direct
figures, and curl through it as the ceiling (the big file, and the small
files over one curl's kept-alive connections). Every file read is checked by sha256 (the
big file in an untimed pass through the mount after its timed read); a wrong
byte ends the run. Clients take turns within a run; figures are medians of
--runs and ratios medians of run-by-run ratios. A goals table ends the
output: each goal of issue 17, its ratio, met or missed.

A slow client's small-file passes and `ls -lR` stop after --small-budget
seconds (files/s is then over the files read; ls -lR gets no figure), and the
output says so. Mounts are unmounted, processes stopped by pid and the work
folder removed at the end, also after an error or Ctrl-C.

    .venv/bin/python bench/bench_clients.py [--sources http,https,s3] [--add LIST|none]
        [--big-size MiB] [--small-count N] [--runs N] [--small-budget S] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.benchmark.data import SMALL_DIR, FileSet, generate
from cachefs.benchmark.goals import Figures, Goal, goals_table
from cachefs.benchmark.peers import PEERS, ChildMount, Peer, lists
from cachefs.benchmark.proctree import tree_usage
from cachefs.benchmark.proxy import TinyProxy, find_tinyproxy
from cachefs.benchmark.report import host_info, write_json
from cachefs.benchmark.rig import Rig, require_tools
from cachefs.benchmark.sidebyside import (CACHEFS, FIGURES, PROXIED, PROXY_SOURCES, issue_goals,
                                          proxy_table, source_table)
from cachefs.benchmark.system import (MB, BenchError, KiB, MiB, daemon_of, daemon_stats,
                                      drop_page_cache, hash_whole, make_hot, sequential_mbps,
                                      sigterm_as_interrupt)
from cachefs.benchmark.sources import SOURCE_NAMES, Source, curl_files_per_s, curl_mbps, start_sources
from cachefs.localstore.nginx import NginxError
from cachefs.localstore.tls import TlsError

SMALL_SIZE = 16 * KiB
@dataclass
class Mounted:
    """A client's mount: where it shows the data, and the client's process."""

    root: Path
    pid: int


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """`extra` in os.environ for the block: what `cachefs mount` passes its daemon."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read_budgeted(paths: list[Path], expected: dict[str, str], root: Path,
                  budget: float) -> tuple[int, float, bool]:
    """Read whole files in order, each checked by sha256, until `budget`
    seconds have passed; return (files read, seconds, budget hit)."""
    start = time.perf_counter()
    for n, path in enumerate(paths):
        if time.perf_counter() - start > budget:
            return n, time.perf_counter() - start, True
        with open(path, "rb", buffering=0) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != expected[str(path.relative_to(root))]:
            raise BenchError(f"{path} read back wrong (sha256 differs)")
    return len(paths), time.perf_counter() - start, False


class ClientBench:
    """Every measurement of one client on one source, into `figures`."""

    def __init__(self, rig: Rig, files: FileSet, args: argparse.Namespace) -> None:
        self.rig = rig
        self.files = files
        self.args = args
        self.figures = Figures()
        self.notes: list[str] = []
        self.facts: dict[str, Any] = {}
        self.mountpoint = rig.workspace.fresh_dir("mnt")
        self.children: list[ChildMount] = []
        self.buf = bytearray(MiB)
        self.expected = files.expected or {}
        self.small_read = len(files.small)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add(self, source: Source, client: str, figure: str, run: int, value: float) -> None:
        self.figures.add(source.name, client, figure, run, value)

    # -- mounting --

    @contextlib.contextmanager
    def mounted(self, client: str, source: Source, cache: Path,
                options: tuple[str, ...] = ()) -> Iterator[tuple[Mounted, float]]:
        """`client` mounts `source` with `cache`; yields the mount and the
        seconds from the start of its command until the root listed."""
        started = time.perf_counter()
        if client in (CACHEFS, PROXIED):
            with environ(source.env):
                self.rig.mounts.mount(source.cachefs_url, self.mountpoint, cache,
                                      *source.cachefs_options, *options)
            if not lists(self.mountpoint):
                raise BenchError("cachefs mounted, but its root does not list")
            seconds = time.perf_counter() - started
            try:
                yield Mounted(self.mountpoint, daemon_of(self.mountpoint).pid), seconds
            finally:
                self.rig.mounts.unmount(self.mountpoint)
            return
        peer = PEERS[client]
        work = self.rig.workspace.path
        launch = peer.launch(source, self.mountpoint, cache, work)
        child = ChildMount(launch, self.mountpoint, work / f"{client}-{source.name}.log")
        seconds = time.perf_counter() - started
        self.children.append(child)
        try:
            yield Mounted(self.mountpoint, child.pid), seconds
        finally:
            child.stop()
            self.children.remove(child)

    def stop_children(self) -> None:
        for child in list(self.children):
            child.stop()

    # -- measurements --

    def source_hot(self, source: Source) -> None:
        """The store's files in the page cache, so the store answers from memory."""
        make_hot([p for d in source.hot_dirs for p in sorted(d.rglob("*")) if p.is_file()])

    def ls_lr(self, root: Path, what: str) -> float | None:
        """Seconds of `ls -lR` of the small files' tree (None: over the budget)."""
        start = time.perf_counter()
        try:
            out = subprocess.run(["ls", "-lR", str(root / SMALL_DIR)], capture_output=True,
                                 text=True, check=True, timeout=self.args.small_budget)
        except subprocess.TimeoutExpired:
            self.note(f"{what}: stopped at the {self.args.small_budget:g} s budget, no figure")
            return None
        seconds = time.perf_counter() - start
        listed = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
        if listed != len(self.files.small):
            raise BenchError(f"{what} listed {listed} files, not {len(self.files.small)}")
        return seconds

    def small(self, root: Path, what: str) -> float:
        paths = self.files.small_paths(root)
        n, seconds, hit = read_budgeted(paths, self.expected, root, self.args.small_budget)
        if hit:
            self.note(f"{what}: stopped at the {self.args.small_budget:g} s budget "
                      f"after {n} of {len(paths)} files")
        if n == 0:
            raise BenchError(f"{what}: no file read within the budget")
        self.small_read = n  # what the CPU per file divides by
        return n / seconds

    def big(self, root: Path, what: str) -> float:
        mbps = sequential_mbps(root / self.files.big, self.files.big_size, self.buf)
        # Untimed: the bytes the client now serves from its cache must be the source's.
        n, digest = hash_whole(root / self.files.big)
        if n != self.files.big_size or digest != self.expected[self.files.big]:
            raise BenchError(f"{what}: the big file read back wrong (sha256 differs)")
        return mbps

    def client(self, source: Source, client: str, run: int, options: tuple[str, ...] = (),
               full: bool = True) -> None:
        """All figures of `client` on `source` (with full=False: small and big cold only)."""
        ws, label = self.rig.workspace, f"run {run + 1}, {client} over {source.name}"
        name = f"cache-{client}-{source.name}-{run}"
        if full:
            with self.mounted(client, source, ws.fresh_dir(name), options) as (m, seconds):
                self.add(source, client, "mount", run, seconds)
                for key in ("ls_cold", "ls_warm"):
                    value = self.ls_lr(m.root, f"{label}: {FIGURES[key].title}")
                    if value is not None:
                        self.add(source, client, key, run, value)
            ws.remove_dir(ws.path / name)
        cache = ws.fresh_dir(name)
        self.source_hot(source)
        with self.mounted(client, source, cache, options) as (m, _):
            before = tree_usage(m.pid)
            self.add(source, client, "small_cold", run, self.small(m.root, f"{label}: small cold"))
            middle = tree_usage(m.pid)
            self.add(source, client, "big_cold", run, self.big(m.root, f"{label}: big cold"))
            after = tree_usage(m.pid)
            self.add(source, client, "cpu_file", run,
                     (middle.cpu_s - before.cpu_s) / self.small_read * 1000)
            self.add(source, client, "cpu_mb", run,
                     (after.cpu_s - middle.cpu_s) / (self.files.big_size / MB) * 1000)
            self.add(source, client, "rss", run, tree_usage(m.pid).peak_rss_mib)
        if full:
            with self.mounted(client, source, cache, options) as (m, _):
                drop_page_cache()
                self.add(source, client, "small_warm", run,
                         self.small(m.root, f"{label}: small warm"))
                if client == CACHEFS:
                    opens = daemon_stats(m.root).get("opens", {})
                    self.facts.setdefault("cachefs_warm_opens", []).append(
                        {"source": source.name, "run": run, **opens})
                    if opens.get("passthrough", 0) < self.small_read:
                        self.note(f"{label}: only {opens.get('passthrough', 0)} of "
                                  f"{self.small_read} warm opens went through passthrough")
        ws.remove_dir(cache)

    def references(self, source: Source, run: int) -> None:
        """curl of the big object into a file on the same disk; native warm reads."""
        self.add(source, "curl", "big_cold", run,
                 curl_mbps(source, self.files, self.rig.workspace.path / "curl.out"))
        drop_page_cache()
        self.add(source, "native", "small_warm", run,
                 self.small(source.root, f"native reads for {source.name}"))

    def through_proxy(self, source: Source, run: int, proxy: TinyProxy) -> None:
        """curl, then cachefs (small and big cold), through `proxy`."""
        self.add(source, "curl-proxy", "big_cold", run,
                 curl_mbps(source, self.files, self.rig.workspace.path / "curl.out", proxy.url))
        work = self.rig.workspace.path
        self.add(source, "curl", "small_cold", run, curl_files_per_s(source, self.files, work))
        self.add(source, "curl-proxy", "small_cold", run, curl_files_per_s(source, self.files, work, proxy.url))
        self.client(source, PROXIED, run, ("--proxy", proxy.url), full=False)


# -- the run ------------------------------------------------------------------------------


def clients_for(source: Source, peers: list[Peer], run: int) -> list[str]:
    """cachefs and the peers that read `source`, rotated by the run's number so
    that no client is always first after the source was made hot."""
    names = [CACHEFS, *(p.name for p in peers if source.name in p.sources)]
    shift = run % len(names)
    return names[shift:] + names[:shift]


def measure(bench: ClientBench, sources: list[Source], peers: list[Peer],
            proxy: TinyProxy | None, runs: int) -> None:
    failed: set[tuple[str, str]] = set()
    for run in range(runs):
        for source in sources:
            say(f"run {run + 1}/{runs}, {source.name}: curl and native reads")
            bench.references(source, run)
            for client in clients_for(source, peers, run):
                if (source.name, client) in failed:
                    continue
                say(f"run {run + 1}/{runs}, {source.name}: {client}")
                try:
                    bench.client(source, client, run)
                except (BenchError, OSError, subprocess.CalledProcessError) as e:
                    if client == CACHEFS:
                        raise
                    # A peer failing says something about it, not about
                    # cachefs: note it and go on with the others.
                    failed.add((source.name, client))
                    bench.note(f"{client} over {source.name} failed in run {run + 1}: {e}")
            if proxy is not None and source.name in PROXY_SOURCES:
                say(f"run {run + 1}/{runs}, {source.name}: cachefs and curl through tinyproxy")
                bench.through_proxy(source, run, proxy)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------


def render(bench: ClientBench, sources: list[Source], peers: list[Peer], proxied: bool,
           header: str, notes: list[str]) -> tuple[str, list[Goal]]:
    parts = [header]
    for source in sources:
        clients = [CACHEFS, *(p.name for p in peers if source.name in p.sources)]
        parts.append(source_table(bench.figures, source, clients))
    through = [s.name for s in sources if s.name in PROXY_SOURCES]
    if proxied and through:
        parts.append(proxy_table(bench.figures, through))
    judged = issue_goals(bench.figures, sources, peers, proxied)
    parts.append(goals_table(judged))
    parts.append("\n".join([
        "medians of the runs; ratios are medians of run-by-run ratios (best peer: the best of "
        "each run); CPU and RSS are the client's process tree's, from /proc; MB = 10^6 bytes.",
        *bench.notes, *notes]))
    return "\n\n".join(parts), judged


# -- main ---------------------------------------------------------------------------------


def choose_peers(wanted: str) -> tuple[list[Peer], list[str]]:
    names = list(PEERS) if wanted == "all" else [] if wanted == "none" else wanted.split(",")
    peers, notes = [], []
    for name in (n.strip() for n in names):
        peer = PEERS.get(name)
        if peer is None:
            raise BenchError(f"unknown peer {name!r}; known: {', '.join(PEERS)}, all, none")
        if peer.path() is None:
            notes.append(f"skipped {name}: {peer.binary} is not installed (./dev peers)")
        else:
            peers.append(peer)
    return peers, notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sources", default="http,https,s3", metavar="LIST",
                   help=f"comma-separated, of {', '.join(SOURCE_NAMES)} (default: all)")
    p.add_argument("--add", default="all", metavar="LIST",
                   help=f"peers to run beside cachefs: {', '.join(PEERS)}, 'all' (default: "
                        "those installed) or 'none' (cachefs alone)")
    p.add_argument("--big-size", type=int, default=256, metavar="MiB", help="big file (default 256)")
    p.add_argument("--small-count", type=int, default=1000, metavar="N",
                   help="16 KiB files, in folders of 100 (default 1000)")
    p.add_argument("--runs", type=int, default=2, metavar="N", help="repetitions (default 2)")
    p.add_argument("--small-budget", type=float, default=30.0, metavar="S",
                   help="seconds a client's small-file pass or ls -lR may take (default 30)")
    p.add_argument("--no-proxy-figure", action="store_true",
                   help="skip cachefs through tinyproxy")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all raw numbers here")
    args = p.parse_args(argv)
    if min(args.big_size, args.small_count, args.runs) < 1 or args.small_budget <= 0:
        p.error("--big-size, --small-count, --runs and --small-budget must be positive")
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    return args


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any], list[Goal]]:
    require_tools("curl", "ls", "umount")
    peers, notes = choose_peers(args.add)
    proxied = bool(set(PROXY_SOURCES) & set(args.sources)) and not args.no_proxy_figure
    if proxied and find_tinyproxy() is None:
        proxied = False
        notes.append("skipped the proxy figures: tinyproxy is not installed (./dev peers)")
    with Rig("cachefs-clients-") as rig:
        say(f"generating {args.big_size} MiB + {args.small_count} x 16 KiB in "
            f"{rig.workspace.path} ...")
        root = rig.workspace.fresh_dir("store")
        files = generate(root, args.big_size * MiB, args.small_count, SMALL_SIZE)
        say(f"serving it over {', '.join(args.sources)} ...")
        sources = start_sources(rig, root, args.sources)
        proxy = rig.serve(TinyProxy(rig.workspace.fresh_dir("tinyproxy"))) if proxied else None
        bench = ClientBench(rig, files, args)
        rig.callback(bench.stop_children)
        load = [os.getloadavg()]
        started = time.perf_counter()
        measure(bench, sources, peers, proxy, args.runs)
        load.append(os.getloadavg())
        elapsed = time.perf_counter() - started
    used = [p for p in peers if p.sources & set(args.sources)]
    by_binary = {p.binary: p for p in used}
    versions = "; ".join(p.version() for p in by_binary.values())
    notes += [f"versions: {versions}" if versions else "peers: none",
              f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load[0])} at start, "
              f"{' '.join(f'{x:.2f}' for x in load[1])} at end ({os.cpu_count()} CPUs); "
              f"{elapsed:.0f} s of measuring"]
    header = (f"cachefs and its peers side by side: big file {args.big_size} MiB, "
              f"{args.small_count} x 16 KiB, loopback, median of {args.runs} runs")
    table, judged = render(bench, sources, peers, proxied, header, notes)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": host_info(),
        "figures": [{"source": s, "client": c, "figure": f, "runs": v}
                    for (s, c, f), v in bench.figures.values.items()],
        "goals": [{"goal": g.text, "measured": g.measured, "target": g.target,
                   "at_least": g.at_least, "unit": g.unit, "verdict": g.verdict.value,
                   "against": g.detail} for g in judged],
        "facts": bench.facts, "notes": [*bench.notes, *notes],
    }
    return table, report, judged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_interrupt()
    try:
        table, report, _ = run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (BenchError, NginxError, TlsError, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print(table)
    if args.json:
        write_json(report, args.json)
        print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
