"""The measurements: the built-in default run, and a run on files of a mount.

Every run of the built-in default starts from an empty cache, so that each
mode is measured once per run:

1. cold: a fresh cache dir and mount; the page cache dropped (when root) and
   the store's files then read once, so the store answers from memory and the
   figure is about cachefs, not the store's disk. The large file is read
   start to end, evicted (`cachefs evict`), opened for its first 4 KiB,
   evicted again and read at random offsets; the small files, never read
   before, are read once. Each figure thus starts from nothing cached.
2. the large file is read whole once more (untimed, sha256-checked), so the
   cache is complete;
3. warm, daemon: remounted with --no-passthrough, page cache dropped before
   each figure;
4. warm, passthrough: remounted as by default, page cache dropped before each;
5. page cache hot: everything read once more, then each figure again;
6. native: the cache's own data files read directly, page cache dropped.

The daemon's peak RSS (VmHWM) is read at the end of each mount's modes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachefs.control.client import ControlError, locate

from .data import FileSet, files_in_mount, generate, make_store
from .model import (COLD, HOT, NATIVE, OPENED_COLD, RAND, RSS, SEQ, SMALL, TTFB, WARM_DAEMON,
                    WARM_PASSTHROUGH, Mode, Results)
from .rig import Rig
from .system import (READ_BLOCK, BenchError, KiB, MiB, StatusLine, cache_files,
                     can_drop_page_cache, daemon_of, drop_page_cache, evict, first_byte_ms,
                     hash_whole, passthrough_state, peak_rss_mib, random_offsets, random_reads_on,
                     random_reads_per_s, read_files, read_whole, sequential_mbps, wait_complete)

# In the hot mode a single pass of random reads takes milliseconds: repeat it
# for at least this long so the timer's resolution does not matter.
HOT_MIN_SECONDS = 0.3


@dataclass
class BenchOptions:
    """What `cachefs bench` was asked to do."""

    path: Path | None = None
    big_mib: int = 256
    small_count: int = 500
    small_kib: int = 16
    runs: int = 3
    rand_count: int = 2000
    seed: int = 1
    allow_evict: bool = False
    server: str = "auto"  # auto, nginx or builtin


class Bench:
    """Measures one mode at a time on a FileSet, into `results`."""

    def __init__(self, options: BenchOptions, results: Results, progress: StatusLine) -> None:
        self.options = options
        self.results = results
        self.progress = progress
        self.buf = bytearray(READ_BLOCK)
        self.run_label = ""
        self.can_drop = can_drop_page_cache()
        if not self.can_drop:
            results.note("not root: the page cache could not be dropped, so the cold and warm "
                         "figures include whatever it held")

    def step(self, mode: Mode, what: str) -> None:
        self.progress.step(f"{self.run_label}{mode.label}: {what}")

    def drop(self) -> None:
        drop_page_cache()

    def offsets(self, files: FileSet) -> list[int]:
        return random_offsets(self.options.seed, files.big_size, self.options.rand_count)

    def measure(self, mode: Mode, files: FileSet, resolve: Callable[[str], Path],
                drop: bool, hot: bool = False) -> None:
        """The four read figures of a warm, hot or native mode."""
        big = resolve(files.big)
        small = [resolve(k) for k in files.small]
        expected = files.expected_small(resolve)
        before = self.drop if drop else (lambda: None)
        if hot:
            self.step(mode, "reading everything once into the page cache")
            read_whole(big, self.buf)
            read_files(small)
        self.step(mode, "time to first byte")
        before()
        self.results.add(mode, TTFB, first_byte_ms(big))
        self.step(mode, "sequential read")
        before()
        self.results.add(mode, SEQ, sequential_mbps(big, files.big_size, self.buf))
        self.step(mode, "random reads")
        before()
        self.results.add(mode, RAND, random_reads_per_s(big, self.offsets(files),
                                                        HOT_MIN_SECONDS if hot else 0.0))
        if small:
            self.step(mode, f"{len(small)} small files")
            before()
            self.results.add(mode, SMALL, read_files(small, expected))

    def measure_cold(self, files: FileSet, mountpoint: Path, heat: Callable[[], None]) -> None:
        """Cold figures through a mount: each starts with nothing of its file cached."""
        big = mountpoint / files.big
        self.step(COLD, "sequential read")
        heat()
        self.results.add(COLD, SEQ, sequential_mbps(big, files.big_size, self.buf))
        self.step(COLD, "time to first byte")
        evict([big])
        self.results.add(COLD, TTFB, first_byte_ms(big))
        self.step(COLD, "random reads")
        evict([big])
        # One handle, kept: its reads once the file is complete are the
        # "opened cold" figure (does a handle opened cold stay slow?).
        fd = os.open(big, os.O_RDONLY)
        try:
            self.results.add(COLD, RAND, random_reads_on(fd, self.offsets(files)))
            self.step(OPENED_COLD, "the same handle, once the file is complete")
            read_whole(big, self.buf)
            wait_complete([big])
            self.results.add(OPENED_COLD, RAND, random_reads_on(fd, self.offsets(files), HOT_MIN_SECONDS))
        finally:
            os.close(fd)
        if files.small:
            self.step(COLD, f"{len(files.small)} small files")
            paths = [mountpoint / k for k in files.small]
            self.results.add(COLD, SMALL,
                             read_files(paths, files.expected_small(lambda k: mountpoint / k)))

    def complete(self, mode: Mode, files: FileSet, mountpoint: Path) -> None:
        """Read every file whole so the cache holds them; check the large file's bytes."""
        self.step(mode, "filling the cache (untimed)")
        big = mountpoint / files.big
        _, digest = hash_whole(big)
        if files.expected is not None:
            if digest != files.expected[files.big]:
                raise BenchError(f"{files.big} read through the mount has the wrong sha256")
            self.results.facts["big_sha256_checks"] = self.results.facts.get("big_sha256_checks", 0) + 1
        read_files([mountpoint / k for k in files.small])
        wait_complete([mountpoint / k for k in files.keys])

    def native_paths(self, files: FileSet, mountpoint: Path) -> Callable[[str], Path]:
        """Map keys to the cache's data files (the mount must be up)."""
        found = cache_files(daemon_of(mountpoint).folder, files.keys)
        missing = [k for k in files.keys if k not in found]
        if missing:
            raise BenchError(f"{len(missing)} files not complete in the cache, e.g. {missing[0]}")
        return found.__getitem__

    def rss(self, mode: Mode, mountpoint: Path) -> None:
        self.results.add(mode, RSS, peak_rss_mib(daemon_of(mountpoint).pid))


# -- the built-in default ----------------------------------------------------------


def run_default(options: BenchOptions, progress: StatusLine) -> Results:
    """Generate data, serve it locally, and measure every mode `runs` times."""
    results = Results()
    bench = Bench(options, results, progress)
    with Rig("cachefs-bench-", program="cachefs bench") as rig:
        work, mounts = rig.workspace.path, rig.mounts
        progress.step(f"generating {options.big_mib} MiB + {options.small_count} x "
                      f"{options.small_kib} KiB in {work}")
        source = work / "store"
        files = generate(source, options.big_mib * MiB, options.small_count,
                         options.small_kib * KiB)
        store, server = make_store(source, work / "server", options.server)
        rig.serve(store)
        results.facts.update(server=server, source=store.url)
        progress.step(f"serving with {server} at {store.url}")
        mountpoint = work / "mnt"
        mountpoint.mkdir()

        def heat() -> None:
            # The store answers from memory: the cold figure is about cachefs.
            if bench.can_drop:
                drop_page_cache()
            read_whole(source / files.big, bench.buf)
            read_files([source / k for k in files.small])

        for i in range(options.runs):
            bench.run_label = f"run {i + 1}/{options.runs}  "
            cache = work / f"cache-{i}"
            mounts.mount(store.url, mountpoint, cache)
            bench.measure_cold(files, mountpoint, heat)
            bench.rss(COLD, mountpoint)
            bench.complete(COLD, files, mountpoint)

            mounts.unmount(mountpoint)
            mounts.mount(store.url, mountpoint, cache, "--no-passthrough")
            bench.measure(WARM_DAEMON, files, lambda k: mountpoint / k, drop=True)
            bench.rss(WARM_DAEMON, mountpoint)

            mounts.unmount(mountpoint)
            mounts.mount(store.url, mountpoint, cache)
            bench.measure(WARM_PASSTHROUGH, files, lambda k: mountpoint / k, drop=True)
            bench.rss(WARM_PASSTHROUGH, mountpoint)
            _check_passthrough(results, mountpoint)
            bench.measure(HOT, files, lambda k: mountpoint / k, drop=False, hot=True)
            bench.rss(HOT, mountpoint)
            bench.measure(NATIVE, files, bench.native_paths(files, mountpoint), drop=True)
            mounts.unmount(mountpoint)
            rig.workspace.remove_dir(cache)
    results.skip(NATIVE, RSS, "no daemon")
    _skip_opened_cold(results)
    results.facts["big_size"] = files.big_size
    results.facts["small_count"] = len(files.small)
    results.facts["small_size"] = options.small_kib * KiB
    return results


def _skip_opened_cold(results: Results) -> None:
    for figure in (SEQ, SMALL, TTFB, RSS):
        results.skip(OPENED_COLD, figure, "random reads only")


def _check_passthrough(results: Results, mountpoint: Path) -> None:
    on, reason = passthrough_state(mountpoint)
    results.facts["passthrough"] = on
    if on is False:
        results.note(f"passthrough is off ({reason or 'see the daemon log'}): the 'warm, "
                     "passthrough' mode was served by the daemon")


# -- files of an existing mount ------------------------------------------------------


def run_on_path(options: BenchOptions, progress: StatusLine) -> Results:
    """Measure the files at `options.path`, inside a running cachefs mount."""
    assert options.path is not None
    try:
        target = locate(str(options.path))
    except ControlError as e:
        raise BenchError(str(e)) from None
    mountpoint = Path(target.mountpoint)
    results = Results()
    bench = Bench(options, results, progress)
    progress.step(f"listing {options.path}")
    files = files_in_mount(mountpoint, target.key, options.small_count)
    daemon = daemon_of(mountpoint)
    results.facts.update(source=daemon.source, mountpoint=str(mountpoint), big_size=files.big_size,
                         small_count=len(files.small), big=files.big)
    if not files.small:
        results.skip(None, SMALL, "no small files (<= 1 MiB) under the path")
    on, reason = passthrough_state(mountpoint)
    results.facts["passthrough"] = on
    warm, other = (WARM_PASSTHROUGH, WARM_DAEMON) if on else (WARM_DAEMON, WARM_PASSTHROUGH)
    results.skip(other, None, f"needs a second mount of the same cache; the mount at "
                              f"{mountpoint} has passthrough {'on' if on else 'off'}")
    results.skip(COLD, RSS, "the daemon's peak is over its lifetime: shown under the mount's warm mode")
    results.skip(HOT, RSS, "the daemon's peak is over its lifetime: shown under the mount's warm mode")
    results.skip(NATIVE, RSS, "no daemon")
    _skip_opened_cold(results)
    if not options.allow_evict:
        results.skip(OPENED_COLD, RAND, "needs --evict")
    if on is False:
        results.note(f"the mount at {mountpoint} has passthrough off ({reason})")
    if not options.allow_evict:
        results.skip(COLD, None, "pass --evict to let the benchmark evict these files from the "
                                 "cache first (they are fetched again)")

    def at(key: str) -> Path:
        return mountpoint / key

    for i in range(options.runs):
        bench.run_label = f"run {i + 1}/{options.runs}  "
        if options.allow_evict:
            progress.step(f"{bench.run_label}cold: evicting {len(files.keys)} files")
            evict([at(k) for k in files.keys])
            if bench.can_drop:
                drop_page_cache()
            bench.measure_cold(files, mountpoint, lambda: None)
        bench.complete(warm, files, mountpoint)
        bench.measure(warm, files, at, drop=True)
        bench.rss(warm, mountpoint)
        bench.measure(HOT, files, at, drop=False, hot=True)
        bench.measure(NATIVE, files, bench.native_paths(files, mountpoint), drop=True)
    return results
