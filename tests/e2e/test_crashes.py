"""Issue 8, crashes: SIGKILL of the daemon at random points, seeded.

TRIALS trials on one cache directory, alternating cold reads (several reader
threads) and `cachefs prefetch` of the whole mount (with one reader beside
it). Each trial mounts, usually empties the cache first (`cachefs evict`) so
that the reads are cold, starts the work, and kills the daemon with SIGKILL
after a random delay. Served bytes are compared with the source as they
arrive (an error is fine once the daemon is dead, a wrong byte never is).

After each kill fsck may only find orphaned data files (a fetch cut off
before its first record: by design, see cachefs/cache/evictor.py); every few
trials fsck --verify-remote checks that each recorded chunk holds the remote's
bytes (the durability order: data, fdatasync, then the record). At the end a
new mount must read every file byte-identical, and after its unmount fsck
must be clean.

The tree is small files plus one medium file, served by an nginx of its own
whose responses are rate limited, so that a kill lands while transfers run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from reliability import ReadOutcome, checked_read, fsck, fsck_problems, log_lines
from mounter import CACHEFS, Mounter, Tree, pid_alive, wait_until

from cachefs.localstore import NginxStore, TreeSpec, make_tree
from cachefs.localstore.tree import KiB, MiB

SEED = int(os.environ.get("CACHEFS_CRASH_SEED", "20"))
TRIALS = int(os.environ.get("CACHEFS_CRASH_TRIALS", "12"))
MEDIUM = "big.bin"
MEDIUM_SIZE = 40 * MiB + 777
# Per response: the medium file takes about a second with the daemon's
# parallel chunk fetches; a small file a few milliseconds.
RATE = 16 * MiB
KILL_DELAY_S = (0.05, 1.2)
EVICT_CHANCE = 0.75
READERS = 4
VERIFY_EVERY = 6
# Kills must mostly land while work is under way, or they test nothing.
MIN_MID_WORK_KILLS = TRIALS // 2
DAEMON_EXIT_S = 10.0
JOIN_S = 30.0
PIECE = 256 * KiB


@pytest.fixture(scope="module")
def crash_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("crash-tree")
    spec = TreeSpec(seed=13, big_size=MEDIUM_SIZE, small_count=60, small_max_size=96 * KiB,
                    small_dirs=3, nesting_depth=2, special_names=(), special_dirs=(),
                    boundary_sizes=(0, 1, 4097, 8 * MiB + 1))
    return Tree(root=root, spec=spec, hashes=make_tree(root, spec))


@pytest.fixture(scope="module")
def crash_store(crash_tree: Tree, tmp_path_factory: pytest.TempPathFactory):
    with NginxStore(crash_tree.root, tmp_path_factory.mktemp("crash-nginx"), slow_rate=RATE) as nginx:
        yield nginx


def cachefs(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CACHEFS), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def run_trial(trial: int, rng: random.Random, mount: Mounter, store: NginxStore, tree: Tree,
              cache: Path) -> tuple[bool, ReadOutcome, str]:
    """One mount, work, SIGKILL. Returns (killed mid-work, what readers saw, mode)."""
    mp = mount(store.slow_url, cache)
    pid = mount.daemon_pid(mp)
    if rng.random() < EVICT_CHANCE:
        evicted = cachefs("evict", mp)
        assert evicted.returncode == 0, evicted.stderr
    mode = "prefetch" if trial % 2 else "read"
    files = list(tree.files)
    rng.shuffle(files)
    outcome = ReadOutcome()
    lock = threading.Lock()

    def reader(share: list[str]) -> None:
        for rel in share:
            one = checked_read(mp, tree, rel, PIECE)
            with lock:
                outcome.merge(one)
            if one.errors:
                return  # the daemon is gone: the rest would fail alike

    nreaders = READERS if mode == "read" else 1
    threads = [threading.Thread(target=reader, args=(files[i::nreaders],), daemon=True)
               for i in range(nreaders)]
    prefetch = None
    if mode == "prefetch":
        prefetch = subprocess.Popen([str(CACHEFS), "prefetch", str(mp), "--json"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for t in threads:
        t.start()
    time.sleep(rng.uniform(*KILL_DELAY_S))
    busy = any(t.is_alive() for t in threads) or (prefetch is not None and prefetch.poll() is None)
    os.kill(pid, signal.SIGKILL)
    try:
        assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), f"daemon {pid} survived SIGKILL"
        for t in threads:
            t.join(JOIN_S)
        assert not any(t.is_alive() for t in threads), "a reader hung after the daemon was killed"
        if prefetch is not None:
            try:
                prefetch.communicate(timeout=JOIN_S)
            except subprocess.TimeoutExpired:
                prefetch.kill()
                prefetch.communicate()
                pytest.fail("cachefs prefetch hung after the daemon was killed")
    finally:
        mount.cleanup(mp)
    return busy, outcome, mode


def test_sigkill_at_random_points(crash_tree: Tree, crash_store: NginxStore, mount: Mounter,
                                  tmp_path: Path) -> None:
    tree, store = crash_tree, crash_store
    cache = tmp_path / "cache"
    rng = random.Random(SEED)
    wrong: list[str] = []
    after_kill: list[str] = []
    mid_work = 0
    started = time.monotonic()
    for trial in range(TRIALS):
        busy, outcome, mode = run_trial(trial, rng, mount, store, tree, cache)
        mid_work += busy
        wrong += [f"trial {trial} ({mode}): {w}" for w in outcome.wrong]
        code, reports = fsck(cache)
        bad = [p for p in fsck_problems(reports)
               if not p.startswith("orphan-file") and not p.startswith("folder ")]
        after_kill += [f"trial {trial} ({mode}): {p}" for p in bad]
        if trial % VERIFY_EVERY == VERIFY_EVERY - 1:
            code, reports = fsck(cache, "--verify-remote", "--source", store.slow_url)
            after_kill += [f"trial {trial} ({mode}) verify: {p}" for p in fsck_problems(reports)
                           if p.startswith(("corrupt", "stale", "warning"))]
    trials_s = time.monotonic() - started
    print(f"\n{TRIALS} kills ({mid_work} mid-work) in {trials_s:.1f} s")
    assert wrong == [], wrong[:10]
    assert after_kill == [], after_kill[:10]
    assert mid_work >= MIN_MID_WORK_KILLS, f"only {mid_work} of {TRIALS} kills landed while work ran"

    # A new mount reads everything back; then the cache is clean.
    mp = mount(store.slow_url, cache)
    final = ReadOutcome()
    for rel in tree.files:
        final.merge(checked_read(mp, tree, rel))
    assert final.wrong == [] and final.errors == {}, (final.wrong, final.errors, log_lines(cache, "ERROR"))
    for rel in tree.files:
        assert tree.sha256_of(mp / rel) == tree.hashes[rel], rel
    mount.umount(mp)
    mount.cleanup(mp)
    code, reports = fsck(cache, "--verify-remote", "--source", store.slow_url)
    assert code == 0 and fsck_problems(reports) == [], fsck_problems(reports)
