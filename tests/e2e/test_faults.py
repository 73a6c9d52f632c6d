"""Issue 8, faults: the session tree read through a fault-injecting proxy.

Over at least MIN_FAULTS injected faults (connection resets mid-body, bodies
cut short, short Content-Lengths, stalls past the read timeout, bursts of
500/503, wrong Content-Range, the object's version changing between chunk
requests: an hour later, within the same minute and size, or in its ETag
alone; see tests/faultproxy.py), every read an application makes returns
the source's bytes or fails with an error: never a wrong byte. The tree is
read in ROUNDS rounds, each a new mount on a new cache through the same
proxy. Afterwards each unmounted cache is fsck-clean and its recorded chunks
match the remote's bytes (fsck --verify-remote), and a fault-free mount on
the last cache reads every file byte-identical.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reliability import ReadOutcome, checked_read, fsck, fsck_problems, log_lines
from mounter import Mounter, Tree
from faultproxy import PINNED_KINDS, FaultConfig, FaultProxy

from cachefs.localstore import NginxStore

SEED = int(os.environ.get("CACHEFS_FAULT_SEED", "8"))
# Each round reads the whole tree cold: about 300 faults. More rounds (and
# proportionally more faults) for a longer run: CACHEFS_FAULT_ROUNDS.
ROUNDS = int(os.environ.get("CACHEFS_FAULT_ROUNDS", "2"))
MIN_FAULTS = 250 * ROUNDS
# Each stall costs the daemon's read timeout (30 s, not configurable yet).
MAX_STALLS = int(os.environ.get("CACHEFS_FAULT_STALLS", "2"))
STALL_S = 31.0
READERS = 8
# Files that failed are read again (still through faults) until enough faults
# were injected; after this many passes the test gives up counting.
MAX_PASSES = 6
# Every kind must have been injected at least this often (stalls: once).
MIN_PER_KIND = 5
# Changes under a pinned version apply only to chunk requests after an
# object's first (faultproxy.py), a few dozen a round: more likely there.
PINNED_RATE = 0.15
# A read phase that takes this long is hung (a normal one takes under a
# minute): the test then aborts the mount's FUSE connection and fails, rather
# than waiting for the fixture's 300 s watchdog.
HANG_S = 150.0


def read_all(mp: Path, tree: Tree, files: list[str]) -> ReadOutcome:
    out = ReadOutcome()
    with ThreadPoolExecutor(READERS) as pool:
        for one in pool.map(lambda rel: checked_read(mp, tree, rel), files):
            out.merge(one)
    return out


def test_no_wrong_bytes_under_injected_faults(tree: Tree, store: NginxStore, mount: Mounter,
                                             tmp_path: Path) -> None:
    config = FaultConfig(seed=SEED, stall_s=STALL_S, max_stalls=MAX_STALLS)
    config.rates.update({kind: PINNED_RATE for kind in PINNED_KINDS})
    caches: list[Path] = []
    still_failing: list[int] = []
    started = time.monotonic()
    with FaultProxy(config) as proxy:
        wrong: list[str] = []
        hung = threading.Event()
        for round_no in range(1, ROUNDS + 1):
            cache = tmp_path / f"cache{round_no}"
            caches.append(cache)
            # The mount itself must come up: its first listing is not what is tested.
            proxy.enabled = False
            mp = mount(store.url, cache, "--proxy", proxy.url, "--metadata-ttl", "3600")
            proxy.enabled = True
            target = MIN_FAULTS * round_no // ROUNDS
            errors: dict[str, str] = {}
            todo = tree.files
            passes = 0

            def abort() -> None:
                hung.set()
                mount._abort_all()

            watchdog = threading.Timer(HANG_S, abort)
            watchdog.daemon = True
            watchdog.start()
            while todo and passes < MAX_PASSES and (passes == 0 or proxy.total < target):
                passes += 1
                outcome = read_all(mp, tree, todo)
                wrong += outcome.wrong
                errors = outcome.errors
                todo = sorted(outcome.errors)
            watchdog.cancel()
            still_failing.append(len(errors))
            print(f"\nround {round_no}: {passes} passes, {len(errors)} files still failing, "
                  f"{time.monotonic() - started:.1f} s so far")
            assert not hung.is_set(), (
                f"reads hung for {HANG_S:g} s under faults; {log_lines(cache, 'ERROR', 'KeyError')}")
            mount.umount(mp)
            mount.cleanup(mp)
        print(f"faults: {proxy.summary()}; details {dict(proxy.details)}; "
              f"{time.monotonic() - started:.1f} s")
        assert wrong == [], f"wrong bytes reached the application: {wrong[:10]}"
        assert proxy.total >= MIN_FAULTS, proxy.summary()
        for kind in ("reset", "cut_short", "short_length", "status_5xx", "wrong_range", "version_change",
                     *sorted(PINNED_KINDS)):
            assert proxy.counts[kind] >= MIN_PER_KIND, proxy.summary()
        if MAX_STALLS:
            assert proxy.counts["stall"] >= 1, proxy.summary()

    # Checked last, so that a finding here does not hide the checks below.
    plain = {}
    for cache in caches:
        plain[cache.name] = fsck(cache)
        # The cached chunks hold exactly the remote's bytes: no fault left a mark.
        code, reports = fsck(cache, "--verify-remote", "--source", store.url)
        corrupt = [p for p in fsck_problems(reports) if p.startswith(("corrupt", "stale"))]
        assert corrupt == [], (cache.name, corrupt)
        assert sum(r["chunks_verified"] for r in reports) > 0

    mp = mount(store.url, caches[-1])
    clean = read_all(mp, tree, tree.files)
    assert clean.wrong == [] and clean.errors == {}, (
        clean.wrong[:10], dict(list(clean.errors.items())[:10]),
        log_lines(caches[-1], "WARNING", "ERROR"))
    assert len(clean.ok) == len(tree.files)
    for rel in tree.files:
        assert tree.sha256_of(mp / rel) == tree.hashes[rel], rel

    # A cleanly unmounted cache must be fsck-clean, faults or not.
    for name, (plain_code, plain_reports) in plain.items():
        assert plain_code == 0 and fsck_problems(plain_reports) == [], (
            f"fsck of {name} after a clean unmount (files still failing at the unmounts: {still_failing}): "
            f"{fsck_problems(plain_reports)[:10]}")


def test_clean_unmount_leaves_no_orphan_files(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    """The smallest case of the orphans the fault run leaves: a multi-chunk
    file opened and closed without a read (so no chunk is ever recorded),
    then a clean unmount. fsck must find the cache clean."""
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    fd = os.open(mp / "sizes" / f"{2 * 8 * 1024 * 1024 + 3}.bin", os.O_RDONLY)
    os.close(fd)
    mount.umount(mp)
    mount.cleanup(mp)
    code, reports = fsck(cache)
    assert code == 0 and fsck_problems(reports) == [], fsck_problems(reports)
