"""End to end against a real nginx and real mounts: issue 2's "Done means".

Every check compares bytes, names, sizes or mtimes read through the mount with
the generated source tree read directly, so a daemon that returns wrong data,
wrong metadata or errors fails here.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path, so the fixtures' helper types import directly.
from mounter import READ_PIECE, Mounter, Tree, pid_alive, wait_until

from cachefs.localstore import NginxStore
from cachefs.localstore.tree import CHUNK, KiB, MiB

BIG = "big.bin"
SUBPROCESS_TIMEOUT_S = 120.0
# The SIGKILL test kills the daemon once the reader got this far into the big
# file, once per point, on one cache dir: early (inside the first chunks),
# later (chunks recorded before, more in flight), and past the middle.
KILL_POINTS = (5 * MiB + 3, 40 * MiB, 150 * MiB)
KILL_WAIT_TIMEOUT_S = 60.0
# nginx logs an aborted transfer when it notices the closed connection.
ABORT_LOG_SETTLE_S = 1.0
# dd's I/O size and byte count pairs: odd sizes that straddle pages and chunks.
# bs=1 makes one FUSE request per byte, so its counts stay small.
DD_SHAPES: tuple[tuple[int, int], ...] = (
    (1, 1),
    (1, 777),
    (4097, 3 * 4097 + 5),
    (512, 12_345),
    (65_537, 1_000_003),
    (1_048_573, CHUNK + 3),
)
RANDOM_PREADS = 400
# Against /slow/ one chunk takes seconds to arrive; a request that had to wait
# for it would take that long, one that runs concurrently takes milliseconds.
SLOW_READ_BYTES = 12 * MiB
NOT_BLOCKED_BOUND_S = 1.0
# Small files only: a probe must not be slow on its own account.
PROBE_MAX_SIZE = 64 * KiB
# A killed reader must be released once the daemon has its INTERRUPT.
INTERRUPT_BOUND_S = 1.5
READER_SETTLE_S = 0.5
CONCURRENT_SMALL_GROUPS = 4
HTML_MTIME_RESOLUTION_S = 60
# How long a daemon may take to exit once told to (signal or unmount).
DAEMON_EXIT_S = 10.0


# -- helpers -------------------------------------------------------------------


def mismatches(mountpoint: Path, tree: Tree, files: list[str] | None = None) -> list[str]:
    """Files whose bytes through the mount differ from the source, with why."""
    bad = []
    for rel in tree.files if files is None else files:
        try:
            got = tree.sha256_of(mountpoint / rel)
        except OSError as exc:
            bad.append(f"{rel}: {exc!r}")
            continue
        if got != tree.hashes[rel]:
            bad.append(f"{rel}: sha256 differs")
    return bad


def cat_sha256(path: Path) -> str:
    """sha256 of what the real `cat` reads from `path`."""
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cat.stdout is not None
    digest = hashlib.sha256()
    while chunk := cat.stdout.read(READ_PIECE):
        digest.update(chunk)
    _, err = cat.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert cat.returncode == 0, f"cat {path}: {err.decode(errors='replace')}"
    return digest.hexdigest()


def first_difference(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"got {len(got)} bytes, want {len(want)}"
    index = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    return f"first differing byte at +{index}"


def fetched_twice(store: NginxStore, tree: Tree) -> list[str]:
    """Byte ranges of tree files that the access log shows fetched more than once.

    Readers of the same range must share one fetch, and cached bytes are never
    fetched again; with a healthy local server no retry excuses a repeat.
    """
    ranges: dict[str, list[tuple[int, int]]] = {}
    for entry in store.access_log():
        if entry.method != "GET" or entry.path not in tree.hashes or entry.status >= 300:
            continue
        start, end = 0, tree.size(entry.path)
        if entry.range:
            first, _, last = entry.range.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(end, int(last) + 1) if last else end
        ranges.setdefault(entry.path, []).append((start, end))
    repeats = []
    for path, spans in ranges.items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                repeats.append(f"{path}: [{s1}, {e1}) and [{s2}, {e2})")
    return repeats


def listing(root: Path) -> dict[str, tuple[str, int | None, int]]:
    """Relative path -> (kind, size for files, mtime in whole seconds)."""

    def fail(exc: OSError) -> None:
        raise exc  # os.walk would silently skip an unreadable directory

    entries: dict[str, tuple[str, int | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            kind = "d" if stat.S_ISDIR(st.st_mode) else "f" if stat.S_ISREG(st.st_mode) else "?"
            entries[str(path.relative_to(root))] = (
                kind,
                st.st_size if kind == "f" else None,
                int(st.st_mtime),
            )
    return entries


def compare_listings(
    got: dict[str, tuple[str, int | None, int]],
    want: dict[str, tuple[str, int | None, int]],
    same_mtime: Callable[[int, int], bool] = lambda a, b: a == b,
) -> list[str]:
    problems = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    problems += [f"unexpected: {p}" for p in sorted(got.keys() - want.keys())]
    for path in sorted(want.keys() & got.keys()):
        (gk, gs, gm), (wk, ws, wm) = got[path], want[path]
        if gk != wk or gs != ws:
            problems.append(f"{path}: kind/size {gk}/{gs}, want {wk}/{ws}")
        elif not same_mtime(gm, wm):
            problems.append(f"{path}: mtime {gm}, want {wm}")
    return problems


def ls_lR(root: Path) -> dict[tuple[str, str], tuple[str, str | None, str]]:
    """Run the real `ls -lR` in `root`; (dir, name) -> (type, size of files, mtime)."""
    out = subprocess.run(
        ["ls", "-lRn", "--time-style=+%s", "--quoting-style=escape", "."],
        cwd=root, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )
    assert out.returncode == 0 and not out.stderr, f"ls -lR failed: {out.stderr}"
    entries = {}
    directory = ""
    for line in out.stdout.splitlines():
        if not line or line.startswith("total "):
            continue
        # Listing "." makes every directory header start with "." and end
        # with ":"; entry lines start with the file type letter.
        if line.startswith(".") and line.endswith(":"):
            directory = line[:-1]
            continue
        mode, _links, _uid, _gid, size, mtime, name = line.split(maxsplit=6)
        kind = mode[0]
        entries[(directory, name)] = (kind, size if kind == "-" else None, mtime)
    return entries


def kill_mid_read(mount: Mounter, mountpoint: Path, size: int, kill_after: int) -> int:
    """Read BIG from the mount, SIGKILL the daemon partway; return the progress."""
    progress = 0
    error: list[BaseException] = []

    def reader() -> None:
        nonlocal progress
        try:
            with open(mountpoint / BIG, "rb", buffering=0) as f:
                while chunk := f.read(READ_PIECE):
                    progress += len(chunk)
        except OSError as exc:  # expected once the daemon is gone
            error.append(exc)

    pid = mount.daemon_pid(mountpoint)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    wait_until(lambda: progress >= kill_after or not thread.is_alive(), KILL_WAIT_TIMEOUT_S)
    killed_at = progress
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), f"daemon {pid} survived SIGKILL"
    thread.join(30)
    assert not thread.is_alive(), "reader still blocked after the daemon was killed"
    assert 0 < killed_at < size, (
        f"reader was at {killed_at} of {size} bytes when the daemon was killed: "
        f"not in the middle of the read (reader error: {error})"
    )
    return killed_at


# -- reading bytes -------------------------------------------------------------


def test_cat_reads_every_file(tree: Tree, access_log: NginxStore, mount: Mounter) -> None:
    mp = mount(access_log.url)
    # The real cat first, cold, on the big file and the edge sizes.
    for rel in (BIG, "sizes/0.bin", "sizes/1.bin", f"sizes/{CHUNK}.bin", f"sizes/{CHUNK + 1}.bin"):
        assert cat_sha256(mp / rel) == tree.hashes[rel], rel
    assert mismatches(mp, tree) == []
    assert fetched_twice(access_log, tree) == []


def dd_cases(tree: Tree) -> list[tuple[str, int, int, int]]:
    """(file, offset, bs, count) covering page and chunk edges, EOF and beyond."""
    files = [
        BIG,
        f"sizes/{CHUNK - 1}.bin",
        f"sizes/{CHUNK}.bin",
        f"sizes/{CHUNK + 1}.bin",
        f"sizes/{2 * CHUNK + 3}.bin",
        "sizes/0.bin",
        "sizes/1.bin",
        "sizes/4097.bin",
        "names/café.txt",
    ]
    cases = []
    shape = 0
    for rel in files:
        size = tree.size(rel)
        offsets = {
            0, 1, 4095, 4097, 128 * KiB + 1, CHUNK - 1, CHUNK + 1, 3 * CHUNK - 7,
            size // 2 + 13, size - 1, size - 3, size, size + 100,
        }
        for offset in sorted(o for o in offsets if 0 <= o <= size + 100):
            bs, count = DD_SHAPES[shape % len(DD_SHAPES)]
            shape += 1
            cases.append((rel, offset, bs, count))
    return cases


def test_dd_at_odd_offsets_and_sizes(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    problems = []
    for rel, offset, bs, count in dd_cases(tree):
        out = subprocess.run(
            ["dd", f"if={mp / rel}", "of=/dev/stdout", f"bs={bs}", f"skip={offset}",
             f"count={count}", "iflag=skip_bytes,count_bytes", "status=none"],
            capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
        )
        want = tree.read(rel, offset, count)
        where = f"{rel} skip={offset} bs={bs} count={count}"
        if out.returncode != 0:
            problems.append(f"{where}: dd exited {out.returncode}: {out.stderr!r}")
        elif out.stdout != want:
            problems.append(f"{where}: {first_difference(out.stdout, want)}")
    assert problems == []


def test_random_preads(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    rng = random.Random(7)
    candidates = [BIG, f"sizes/{CHUNK + 1}.bin", f"sizes/{2 * CHUNK + 3}.bin", "sizes/4097.bin"]
    problems = []
    handles = {rel: os.open(mp / rel, os.O_RDONLY) for rel in candidates}
    try:
        for _ in range(RANDOM_PREADS):
            rel = rng.choice(candidates)
            size = tree.size(rel)
            offset = rng.randrange(size + 1)
            count = rng.choice((1, 3, 4096, 4099, 65_535, 1_000_001, CHUNK + 17))
            got = os.pread(handles[rel], count, offset)
            want = tree.read(rel, offset, count)
            if got != want:
                problems.append(f"{rel} pread({count}, {offset}): {first_difference(got, want)}")
    finally:
        for fd in handles.values():
            os.close(fd)
    assert problems == []


def test_mmap_reads(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    problems = []
    for rel in (BIG, f"sizes/{CHUNK + 1}.bin", "sizes/4097.bin", "names/café.txt"):
        with open(mp / rel, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if hashlib.sha256(m).hexdigest() != tree.hashes[rel]:
                problems.append(rel)
    assert problems == []


def test_concurrent_readers(tree: Tree, access_log: NginxStore, mount: Mounter) -> None:
    mp = mount(access_log.url)
    small = [rel for rel in tree.files if rel != BIG]
    groups = [small[i::CONCURRENT_SMALL_GROUPS] for i in range(CONCURRENT_SMALL_GROUPS)]

    def backwards_big() -> list[str]:
        # Readers from the end defeat sequential read-ahead heuristics.
        size = tree.size(BIG)
        piece = READ_PIECE + 3
        problems = []
        with open(mp / BIG, "rb", buffering=0) as f:
            for end in range(size, 0, -piece * 7):
                start = max(0, end - piece)
                got = os.pread(f.fileno(), end - start, start)
                if got != tree.read(BIG, start, end - start):
                    problems.append(f"{BIG} backwards at {start}")
        return problems

    def whole(rel: str) -> Callable[[], list[str]]:
        return lambda: [] if tree.sha256_of(mp / rel) == tree.hashes[rel] else [f"{rel} (reader)"]

    def by_cat(rel: str) -> Callable[[], list[str]]:
        return lambda: [] if cat_sha256(mp / rel) == tree.hashes[rel] else [f"{rel} (cat)"]

    jobs = [whole(BIG), whole(BIG), by_cat(BIG), backwards_big]
    jobs += [lambda g=g: mismatches(mp, tree, g) for g in groups]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = [f.result() for f in [pool.submit(job) for job in jobs]]
    assert [p for problems in results for p in problems] == []
    assert fetched_twice(access_log, tree) == []


# -- metadata ------------------------------------------------------------------


def test_walk_names_sizes_mtimes(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    want = listing(tree.root)
    assert {p for p, (kind, _, _) in want.items() if kind == "f"} == set(tree.files)
    assert compare_listings(listing(mp), want) == []


def test_ls_lR_matches_source(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    got, want = ls_lR(mp), ls_lR(tree.root)
    # The parser must have seen every file, or comparing would prove nothing.
    assert sum(kind == "-" for kind, _, _ in want.values()) == len(tree.files)
    problems = [f"missing: {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected: {k}" for k in sorted(got.keys() - want.keys())]
    problems += [f"{k}: {got[k]}, want {want[k]}" for k in sorted(want.keys() & got.keys())
                 if got[k] != want[k]]
    assert problems == []


def test_read_only(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    existing = mp / tree.files[0]
    attempts: dict[str, Callable[[], object]] = {
        "create": lambda: os.close(os.open(mp / "new-file", os.O_WRONLY | os.O_CREAT)),
        "write existing": lambda: os.close(os.open(existing, os.O_RDWR)),
        "mkdir": lambda: os.mkdir(mp / "new-dir"),
        "unlink": lambda: os.unlink(existing),
        "rename": lambda: os.rename(existing, mp / "renamed"),
        "chmod": lambda: os.chmod(existing, 0o777),
    }
    problems = []
    for what, attempt in attempts.items():
        try:
            attempt()
            problems.append(f"{what}: succeeded")
        except OSError as exc:
            if exc.errno != errno.EROFS:
                problems.append(f"{what}: {exc!r}, want EROFS")
    assert problems == []
    assert tree.sha256_of(existing) == tree.hashes[tree.files[0]]


# -- persistence ---------------------------------------------------------------


def test_remount_reads_from_cache_without_data_get(
    tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = mount(store.url, cache)
    assert mismatches(first, tree) == []
    mount.umount(first)

    store.clear_access_log()
    second = mount(store.url, cache)
    assert mismatches(second, tree) == []
    assert listing(second).keys() == listing(tree.root).keys()
    data_gets = [
        f"{e.method} {e.path} range={e.range} status={e.status}"
        for e in store.access_log()
        if e.method == "GET" and e.path in tree.hashes
    ]
    assert data_gets == [], f"{len(data_gets)} data GETs after remount"


def test_sigkill_mid_read_then_remount(
    tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    size = tree.size(BIG)
    for kill_after in KILL_POINTS:
        mp = mount(store.url, cache)
        store.clear_access_log()
        killed_at = kill_mid_read(mount, mp, size, kill_after)
        time.sleep(ABORT_LOG_SETTLE_S)
        fetched = sum(
            e.bytes_sent for e in store.access_log() if e.path == BIG and e.method == "GET"
        )
        assert fetched < size, (
            f"killed at reader offset {killed_at}, the daemon had already fetched all "
            f"{size} bytes: read-ahead ran to the end, so no fetch was interrupted"
        )
        mount.cleanup(mp)
        assert not mount.is_mounted(mp)

    again = mount(store.url, cache)
    assert mismatches(again, tree) == []


# -- the HTML index ------------------------------------------------------------


def test_html_index_names_sizes_and_bytes(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.html_url)
    got, want = listing(mp), listing(tree.root)
    # The HTML index gives mtimes to the minute; they are checked separately.
    assert compare_listings(got, want, same_mtime=lambda a, b: True) == []
    # Everything but the big file, which the JSON tests already cover.
    assert mismatches(mp, tree, [rel for rel in tree.files if rel != BIG]) == []


def test_html_index_mtimes_to_the_minute(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.html_url)

    def same_minute(a: int, b: int) -> bool:
        return a // HTML_MTIME_RESOLUTION_S == b // HTML_MTIME_RESOLUTION_S

    assert compare_listings(listing(mp), listing(tree.root), same_minute) == []


@pytest.mark.parametrize("rel", ["sizes/0.bin", "names/percent%41.txt"])
def test_stat_before_listing(tree: Tree, store: NginxStore, mount: Mounter, rel: str) -> None:
    """A path looked up directly, with no readdir before, has the right size."""
    mp = mount(store.url)
    assert os.stat(mp / rel).st_size == tree.size(rel)
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]


# -- a slow server: cold reads must not hold up anything else -------------------


def test_cold_read_does_not_block_other_requests(
    tree: Tree, store: NginxStore, mount: Mounter
) -> None:
    mp = mount(store.slow_url)
    probes = [rel for rel in tree.files if rel != BIG and tree.size(rel) <= PROBE_MAX_SIZE]
    reader_done = threading.Event()
    read_back: list[bytes] = []

    def reader() -> None:
        try:
            with open(mp / BIG, "rb", buffering=0) as f:
                read_back.append(f.read(SLOW_READ_BYTES))
        finally:
            reader_done.set()

    thread = threading.Thread(target=reader, daemon=True)
    started = time.monotonic()
    thread.start()
    time.sleep(READER_SETTLE_S)  # let the reader's first fetch start
    latencies: list[tuple[float, str]] = []
    for rel in probes:
        if reader_done.is_set():
            break
        t0 = time.monotonic()
        os.stat(mp / rel)
        ok = tree.sha256_of(mp / rel) == tree.hashes[rel]
        latencies.append((time.monotonic() - t0, rel if ok else f"{rel} (wrong bytes)"))
    thread.join(KILL_WAIT_TIMEOUT_S)
    reader_s = time.monotonic() - started

    assert read_back and read_back[0] == tree.read(BIG, 0, SLOW_READ_BYTES)
    assert reader_s > 2 * NOT_BLOCKED_BOUND_S, (
        f"the slow read took only {reader_s:.2f}s: the /slow/ location is not slow enough"
    )
    assert latencies, "no probe ran while the cold read was in progress"
    assert [rel for _, rel in latencies if "wrong" in rel] == []
    worst, worst_rel = max(latencies)
    assert worst < NOT_BLOCKED_BOUND_S, (
        f"stat+read of {worst_rel} took {worst:.2f}s while a cold read of {BIG} was "
        f"in progress ({len(latencies)} probes, reader took {reader_s:.2f}s)"
    )


def test_killed_reader_is_released_promptly(
    tree: Tree, store: NginxStore, mount: Mounter
) -> None:
    mp = mount(store.slow_url)
    # A process of our own, blocked in a cold read the slow server feeds.
    reader = subprocess.Popen(["cat", str(mp / BIG)], stdout=subprocess.DEVNULL)
    time.sleep(READER_SETTLE_S)
    assert reader.poll() is None, "the slow read finished too soon to be interrupted"
    t0 = time.monotonic()
    reader.kill()
    reader.wait(SUBPROCESS_TIMEOUT_S)
    released_s = time.monotonic() - t0
    assert released_s < INTERRUPT_BOUND_S, (
        f"a SIGKILLed reader took {released_s:.2f}s to exit: the daemon did not "
        "answer the kernel's INTERRUPT for its pending read"
    )
    # The mount is still healthy, and not busy.
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]
    mount.umount(mp)


# -- lifecycle -----------------------------------------------------------------


def test_umount_stops_daemon(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    assert mismatches(mp, tree, ["sizes/4097.bin"]) == []
    pid = mount.daemon_pid(mp)
    mount.umount(mp)
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), (
        f"daemon {pid} still running after umount"
    )
    assert mp.is_dir() and os.listdir(mp) == [], "mountpoint not back to an empty directory"


def test_umount_of_dead_mount(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    pid = mount.daemon_pid(mp)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S)
    # A user's way out of a dead mount ("transport endpoint is not connected").
    mount.umount(mp)


def test_sigterm_unmounts_and_exits(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    pid = mount.daemon_pid(mp)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not mount.is_mounted(mp), DAEMON_EXIT_S), "mounted after SIGTERM"
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), f"daemon {pid} survived SIGTERM"


def test_external_umount_stops_daemon(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    pid = mount.daemon_pid(mp)
    done = subprocess.run(["umount", str(mp)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), (
        f"daemon {pid} still running after its mountpoint was unmounted from outside"
    )


def test_foreground_mount_stops_on_sigint(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    mp, process = mount.start_foreground(store.url)
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]
    process.send_signal(signal.SIGINT)
    assert process.wait(DAEMON_EXIT_S) == 0
    assert not mount.is_mounted(mp)


def test_many_open_handles(tree: Tree, store: NginxStore, mount: Mounter) -> None:
    """Every file of the tree open at once, then each read through its handle."""
    mp = mount(store.url)
    handles = {}
    try:
        for rel in tree.files:
            handles[rel] = os.open(mp / rel, os.O_RDONLY)
        problems = []
        for rel, fd in handles.items():
            digest = hashlib.sha256()
            offset = 0
            while chunk := os.pread(fd, READ_PIECE, offset):
                digest.update(chunk)
                offset += len(chunk)
            if digest.hexdigest() != tree.hashes[rel]:
                problems.append(rel)
    finally:
        for fd in handles.values():
            os.close(fd)
    assert problems == []
