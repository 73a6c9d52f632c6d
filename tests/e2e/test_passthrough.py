"""Progressive passthrough on real mounts against a real nginx: issue 3's "Done means".

A tree of its own (a 1 GiB file and a few 1-40 MiB ones) is served by an nginx
of its own, so the session tree is not needed. Every check compares bytes read
through the mount with the source file on disk, and reads the daemon's own
counters (`user.cachefs.stats` on the root) and per-file state
(`user.cachefs.state`) to see how each open was answered.

The randomized test runs tests/iomix.py in several processes; see its
docstring for what one worker does and the invariants it checks.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachefs.localstore import NginxStore, TreeSpec, make_tree
from cachefs.localstore.tree import CHUNK, MiB

from mounter import Mounter, Tree, wait_until

STATE = "user.cachefs.state"
STATS = "user.cachefs.stats"
BIG = "big-1g.bin"
BIG_SIZE = 1024 * MiB + 12_345  # 1 GiB and a short last chunk
# Files of the randomized and mmap tests: one chunk or less (fetched whole at
# open), exactly one chunk, and several chunks with odd tails.
MIX = {
    "mix/a-1m.bin": MiB + 7,
    "mix/b-8m.bin": CHUNK,
    "mix/c-9m.bin": 9 * MiB + 4097,
    "mix/d-17m.bin": 2 * CHUNK + 1,
    "mix/e-24m.bin": 3 * CHUNK,
    "mix/f-40m.bin": 40 * MiB - 5,
    "mix/g-33m.bin": 33 * MiB + 123,
    "mix/h-40m.bin": 40 * MiB,
}
_sizes = random.Random("passthrough-test/sizes")
MIX.update({f"mix/r{i:02d}.bin": _sizes.randint(MiB, 40 * MiB) for i in range(8)})
# The randomized workers' window slides over the files in this order.
MIX_ORDER = sorted(MIX)
random.Random("passthrough-test/order").shuffle(MIX_ORDER)
RULE_FILE = "mix/e-24m.bin"
MAP_FILE = "mix/f-40m.bin"
SMALL_FILE = "mix/a-1m.bin"

IOMIX = Path(__file__).parents[1] / "support" / "iomix.py"
# The first worker also reads sequentially. CACHEFS_TEST_SEEDS=1,2,3 runs
# other seeds (to soak, or to replay one); the default is what CI runs.
WORKER_SEEDS = tuple(int(x) for x in os.environ.get("CACHEFS_TEST_SEEDS", "1101,2202,3303,4404").split(","))
WORKER_STEPS = 1000
# The randomized test reads through nginx's rate-limited location: each 8 MiB
# chunk then takes a while to arrive, so the files stay partial for many steps
# and complete while other processes hold handles and mappings on them.
SLOW_RATE = 8 * MiB
WORKER_TIMEOUT_S = 200.0
VERIFY_TIMEOUT_S = 60.0
# RELEASE is sent asynchronously after close(); states that depend on it are
# polled for, up to this long (a bound for hangs, not a timing assertion).
SETTLE_S = 10.0
PIECE = MiB


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pt_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("pt-tree")
    spec = TreeSpec(
        seed=3,
        big_size=0,
        boundary_sizes=(),
        small_count=0,
        special_names=(),
        special_dirs=(),
        nesting_depth=0,
        empty_dirs=(),
        extra_files={BIG: BIG_SIZE, **MIX},
    )
    # make_tree writes in 8 MiB pieces from a seeded PRNG, hashing as it goes.
    return Tree(root=root, spec=spec, hashes=make_tree(root, spec))


@pytest.fixture(scope="module")
def pt_store(pt_tree: Tree, tmp_path_factory: pytest.TempPathFactory):
    with NginxStore(pt_tree.root, tmp_path_factory.mktemp("pt-nginx"), slow_rate=SLOW_RATE) as nginx:
        yield nginx


MODES = [pytest.param((), id="passthrough"), pytest.param(("--no-passthrough",), id="no-passthrough")]


# -- helpers -------------------------------------------------------------------


def stats(mp: Path) -> dict:
    return json.loads(os.getxattr(mp, STATS))


def state(path: Path) -> str:
    return os.getxattr(path, STATE).decode()


def mount_checked(mount: Mounter, store: NginxStore, extra: tuple[str, ...], slow: bool = False) -> Path:
    """Mount, and check that passthrough is on or off as asked."""
    mp = mount(store.slow_url if slow else store.url, None, *extra)
    s = stats(mp)
    if "--no-passthrough" in extra:
        assert s["passthrough"] is False, s
    else:
        assert s["passthrough"] is True, f"passthrough unavailable: {s['passthrough_reason']}"
    return mp


def sha256_fd(fd: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    pos = 0
    while piece := os.pread(fd, PIECE, pos):
        digest.update(piece)
        pos += len(piece)
    return digest.hexdigest(), pos


def read_whole(path: Path) -> tuple[str, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def wait_state(path: Path, want: str) -> str:
    wait_until(lambda: state(path) == want, SETTLE_S)
    return state(path)


def wait_stat(mp: Path, key: str, want) -> dict:
    wait_until(lambda: stats(mp)[key] == want, SETTLE_S)
    return stats(mp)


def complete_file(mp: Path, tree: Tree, rel: str) -> None:
    """Read a file once through the mount so it becomes complete in the cache."""
    assert read_whole(mp / rel) == (tree.hashes[rel], tree.size(rel))
    assert wait_state(mp / rel, "complete") == "complete"


def check_slices(m: mmap.mmap, tree: Tree, rel: str, base: int, rng: random.Random, count: int) -> None:
    """Random slices of a mapping of `rel` at file offset `base`, against the source."""
    for _ in range(count):
        a = rng.randrange(len(m))
        n = min(len(m) - a, rng.choice((1, 4095, 4097, 65_536, MiB + 3, 5 * MiB)))
        got = m[a : a + n]
        want = tree.read(rel, base + a, n)
        assert got == want, f"{rel}: mapping at {base} differs at file offset {base + a} (+{n})"


# -- 1. a complete 1 GiB file: the kernel reads it, the daemon never does -------


def test_complete_big_file_is_read_without_fuse_reads(mount: Mounter, pt_store: NginxStore, pt_tree: Tree):
    mp = mount_checked(mount, pt_store, ())
    big = mp / BIG
    assert state(big) == "absent"

    # First read: partial, a page-cache handle whose misses the daemon
    # serves; it completes the file.
    before = stats(mp)
    fd = os.open(big, os.O_RDONLY)
    try:
        first_state = state(big)
        assert first_state == "absent" or first_state.startswith("partial "), first_state
        assert sha256_fd(fd) == (pt_tree.hashes[BIG], BIG_SIZE)
    finally:
        os.close(fd)
    after_first = stats(mp)
    assert after_first["opens"]["page-cache"] == before["opens"]["page-cache"] + 1
    assert after_first["fuse_reads"] > before["fuse_reads"], "the cold read never reached the daemon?"
    assert wait_state(big, "complete") == "complete"

    # Second read: passthrough, zero FUSE_READ requests, same bytes; also
    # through a mapping of the passthrough handle.
    before = stats(mp)
    fd = os.open(big, os.O_RDONLY)
    try:
        assert state(big) == "passthrough opens=1"
        s = stats(mp)
        assert s["opens"]["passthrough"] == before["opens"]["passthrough"] + 1
        assert s["backing_ids_open"] == 1
        assert sha256_fd(fd) == (pt_tree.hashes[BIG], BIG_SIZE)
        with mmap.mmap(fd, BIG_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert hashlib.sha256(m).hexdigest() == pt_tree.hashes[BIG]
        # A second open shares the inode's one backing id.
        fd2 = os.open(big, os.O_RDONLY)
        try:
            assert state(big) == "passthrough opens=2"
            assert stats(mp)["backing_ids_open"] == 1
            assert os.pread(fd2, MiB, BIG_SIZE - 5000) == pt_tree.read(BIG, BIG_SIZE - 5000, MiB)
        finally:
            os.close(fd2)
        assert wait_state(big, "passthrough opens=1") == "passthrough opens=1"
    finally:
        os.close(fd)
    s = wait_stat(mp, "backing_ids_open", 0)
    assert s["backing_ids_open"] == 0, "backing id still open after the last close"
    assert state(big) == "complete"
    assert s["fuse_reads"] == before["fuse_reads"], (
        f"{s['fuse_reads'] - before['fuse_reads']} FUSE_READ requests for a passthrough file"
    )
    assert s["bytes_served"] == before["bytes_served"]

    # After the id was closed, the next open registers one again.
    fd = os.open(big, os.O_RDONLY)
    try:
        assert state(big) == "passthrough opens=1"
        assert stats(mp)["backing_ids_open"] == 1
        rng = random.Random(7)
        for _ in range(50):
            off = rng.randrange(BIG_SIZE)
            assert os.pread(fd, 65_536, off) == pt_tree.read(BIG, off, 65_536), off
    finally:
        os.close(fd)
    s = wait_stat(mp, "backing_ids_open", 0)
    assert s["backing_ids_open"] == 0
    assert s["fuse_reads"] == before["fuse_reads"]


def test_small_file_is_passthrough_from_its_first_open(mount: Mounter, pt_store: NginxStore, pt_tree: Tree):
    mp = mount_checked(mount, pt_store, ())
    path = mp / SMALL_FILE
    assert state(path) == "absent"
    fd = os.open(path, os.O_RDONLY)
    try:
        # Fetched whole during open, so already complete and passed through.
        assert state(path) == "passthrough opens=1"
        reads = stats(mp)["fuse_reads"]
        assert sha256_fd(fd) == (pt_tree.hashes[SMALL_FILE], MIX[SMALL_FILE])
        assert stats(mp)["fuse_reads"] == reads
    finally:
        os.close(fd)
    assert wait_stat(mp, "backing_ids_open", 0)["backing_ids_open"] == 0


# -- 2. without passthrough: complete files come from the page cache -----------


@pytest.mark.parametrize("rel", [RULE_FILE, SMALL_FILE])
def test_no_passthrough_complete_files_use_the_page_cache(
    mount: Mounter, pt_store: NginxStore, pt_tree: Tree, rel: str
):
    mp = mount_checked(mount, pt_store, ("--no-passthrough",))
    assert "--no-passthrough" in stats(mp)["passthrough_reason"]
    path = mp / rel
    multi_chunk = MIX[rel] > CHUNK
    if multi_chunk:
        before = stats(mp)
        assert read_whole(path) == (pt_tree.hashes[rel], MIX[rel])
        assert stats(mp)["opens"]["page-cache"] == before["opens"]["page-cache"] + 1
        assert wait_state(path, "complete") == "complete"

    reads = []
    for i in range(3):
        before = stats(mp)
        fd = os.open(path, os.O_RDONLY)
        try:
            s = stats(mp)
            assert s["opens"]["page-cache"] == before["opens"]["page-cache"] + 1, (i, s)
            assert state(path) == "complete"
            assert sha256_fd(fd) == (pt_tree.hashes[rel], MIX[rel])
        finally:
            os.close(fd)
        reads.append(stats(mp)["fuse_reads"])
    assert stats(mp)["opens"]["passthrough"] == 0
    assert stats(mp)["backing_ids_open"] == 0
    # The first page-cache read may fill the cache; the later ones hit it.
    assert reads[2] == reads[1], f"FUSE_READ requests per page-cache read: {reads}"


# -- 3. randomized: several processes, files going from absent to complete -----


def _run_workers(mp: Path, tree: Tree, passthrough: bool, trace_dir: Path) -> list[dict]:
    procs: list[tuple[int, subprocess.Popen[str], Path]] = []
    try:
        for i, seed in enumerate(WORKER_SEEDS):
            trace = trace_dir / f"worker-{seed}.trace"
            cmd = [sys.executable, str(IOMIX), "mix", "--mount", str(mp), "--source", str(tree.root),
                   "--files", json.dumps([[rel, MIX[rel]] for rel in MIX_ORDER]), "--seed", str(seed), "--steps", str(WORKER_STEPS),
                   "--trace", str(trace)]
            if i == 0:
                cmd.append("--sequential")
            if passthrough:
                cmd.append("--passthrough")
            procs.append((seed, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True), trace))
        results, failures = [], []
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for seed, proc, trace in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                failures.append(f"worker seed {seed} timed out; last step: {_last_line(trace)}")
                continue
            try:
                result = json.loads(out.strip().splitlines()[-1])
            except (IndexError, ValueError):
                failures.append(
                    f"worker seed {seed} exited {proc.returncode} without a result "
                    f"(signal: {-proc.returncode if proc.returncode < 0 else None}); "
                    f"last step: {_last_line(trace)}\nstderr: {err[-3000:]}"
                )
                continue
            if not result["ok"]:
                failures.append(
                    f"worker seed {seed} failed at step {result['step']} ({result['op']} "
                    f"{result['file']!r} offset {result['offset']} length {result['length']} "
                    f"{result['detail']}): {result['error']}\n{result['traceback']}"
                )
            results.append(result)
        assert not failures, "\n\n".join(failures)
        return results
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()  # by its pid; it is our child
                proc.wait()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "(no trace)"
    return lines[-1] if lines else "(empty trace)"


@pytest.mark.parametrize("extra", MODES)
def test_randomized_processes_never_see_eio_or_wrong_bytes(
    mount: Mounter, pt_store: NginxStore, pt_tree: Tree, tmp_path: Path, extra: tuple[str, ...]
):
    passthrough = not extra
    mp = mount_checked(mount, pt_store, extra, slow=True)
    for rel in MIX:
        assert state(mp / rel) == "absent", rel

    results = _run_workers(mp, pt_tree, passthrough, tmp_path)

    summary = {r["seed"]: {"opens": r["open_states"], "ops": r["ops"]} for r in results}
    print(json.dumps(summary), stats(mp))  # shown with the report when the test fails
    assert sorted(results[0]["seq_done"]) == sorted(MIX), results[0]["seq_done"]
    # Every file completed during the run, and the workers saw it happen.
    for rel in MIX:
        assert wait_state(mp / rel, "complete") == "complete", rel
    opened_as = {k: sum(r["open_states"].get(k, 0) for r in results)
                 for k in ("absent", "partial", "complete", "passthrough")}
    assert opened_as["absent"] + opened_as["partial"] > 0, summary
    s = wait_stat(mp, "backing_ids_open", 0)
    assert s["backing_ids_open"] == 0, s
    # DIRECT_IO is only for a failed backing registration: never here.
    assert s["opens"]["daemon"] == 0, s
    if passthrough:
        assert s["opens"]["passthrough"] > 0 and opened_as["passthrough"] > 0, (s, summary)
    else:
        assert s["opens"]["page-cache"] > 0 and opened_as["passthrough"] == 0, (s, summary)

    # The daemon had nothing to complain about (a failed BACKING_OPEN or
    # BACKING_CLOSE is logged as a warning and would hide behind page-cache opens).
    logs = sorted(mount.get(mp).cache_dir.rglob("daemon.log"))
    assert logs, "no daemon.log in the cache dir"
    complaints = [line for log in logs
                  for line in log.read_text("utf-8", "replace").splitlines()
                  if " WARNING " in line or " ERROR " in line or " CRITICAL " in line]
    assert not complaints, "\n".join(complaints[:20])

    # Once everything is closed, each file opens in its final mode and reads right.
    for rel in MIX:
        before = stats(mp)
        fd = os.open(mp / rel, os.O_RDONLY)
        try:
            if passthrough:
                assert state(mp / rel) == "passthrough opens=1", rel
            else:
                assert stats(mp)["opens"]["page-cache"] == before["opens"]["page-cache"] + 1, rel
            assert sha256_fd(fd) == (pt_tree.hashes[rel], MIX[rel]), rel
        finally:
            os.close(fd)
        if passthrough:
            assert stats(mp)["fuse_reads"] == before["fuse_reads"], rel


# -- 3b. trying to break the conservative open-mode rule ------------------------


def _verify_in_other_process(mp: Path, tree: Tree, rel: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(IOMIX), "verify", "--mount", str(mp), "--source", str(tree.root), "--file", rel],
        capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S, check=False,
    )
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"verify process exited {proc.returncode} without a result\nstderr: {proc.stderr[-3000:]}")
    assert result["ok"], f"another process, {result['op']} of {rel} at {result['offset']}: {result['error']}"
    return result


@pytest.mark.parametrize("extra", MODES)
def test_shared_mapping_of_direct_io_handle_survives_completion(
    mount: Mounter, pt_store: NginxStore, pt_tree: Tree, extra: tuple[str, ...]
):
    """A page-cache handle with a MAP_SHARED mapping open on a partial file,
    the file completed through another handle, then opened, read and mapped
    from another process: nothing may fail. Once the mapping and handle are
    gone, the next open is passthrough (page cache without passthrough)."""
    passthrough = not extra
    mp = mount_checked(mount, pt_store, extra)
    rel, size = RULE_FILE, MIX[RULE_FILE]
    path = mp / rel
    rng = random.Random(31)

    # A: a page-cache handle on the partial file, mapped shared, a few pages faulted in.
    fd_a = os.open(path, os.O_RDONLY)
    map_a = mmap.mmap(fd_a, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    # A2: another partial handle whose descriptor is closed at once: only its
    # shared mapping keeps it open (RELEASE comes after munmap).
    fd_a2 = os.open(path, os.O_RDONLY)
    map_a2 = mmap.mmap(fd_a2, size - CHUNK, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=CHUNK)
    os.close(fd_a2)
    try:
        st = state(path)
        assert st == "absent" or st.startswith("partial "), st
        check_slices(map_a, pt_tree, rel, 0, rng, 10)
        check_slices(map_a2, pt_tree, rel, CHUNK, rng, 5)
        st = state(path)
        assert st.startswith("partial ") or st == "complete", st  # the slices may already have done it

        # B completes the file with plain reads, then closes.
        assert read_whole(path) == (pt_tree.hashes[rel], size)
        assert wait_state(path, "complete") == "complete"

        # Another process opens, reads and maps it while A and A2 are mapped.
        result = _verify_in_other_process(mp, pt_tree, rel)
        assert result["state_at_open"] == "complete", result  # not passthrough: A is open
        # And in this process: A's handle and both mappings still read right.
        check_slices(map_a, pt_tree, rel, 0, rng, 20)
        check_slices(map_a2, pt_tree, rel, CHUNK, rng, 10)
        assert hashlib.sha256(map_a).hexdigest() == pt_tree.hashes[rel]
        off = rng.randrange(size)
        assert os.pread(fd_a, 3 * MiB, off) == pt_tree.read(rel, off, 3 * MiB)
        # A new open here, while the mappings live, is not passthrough either.
        fd_c = os.open(path, os.O_RDONLY)
        try:
            assert state(path) == "complete"
            with mmap.mmap(fd_c, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
                check_slices(m, pt_tree, rel, 0, rng, 10)
        finally:
            os.close(fd_c)
    finally:
        map_a.close()
        os.close(fd_a)
    # A2's mapping still holds a handle: opens must stay out of passthrough.
    try:
        result = _verify_in_other_process(mp, pt_tree, rel)
        assert result["state_at_open"] == "complete", result
        check_slices(map_a2, pt_tree, rel, CHUNK, rng, 10)
    finally:
        map_a2.close()

    # Everything unmapped and closed: the next open flips. RELEASE is
    # asynchronous, so a few opens may still see the old handles.
    final_states = []

    def flipped() -> bool:
        before = stats(mp)
        fd = os.open(path, os.O_RDONLY)
        try:
            st = state(path)
            final_states.append(st)
            if passthrough:
                return st == "passthrough opens=1"
            return stats(mp)["opens"]["page-cache"] == before["opens"]["page-cache"] + 1
        finally:
            os.close(fd)

    assert wait_until(flipped, SETTLE_S), f"never flipped after the last close; states: {final_states[-5:]}"
    result = _verify_in_other_process(mp, pt_tree, rel)
    if passthrough:
        assert result["state_at_open"] == "passthrough opens=1", result
    assert wait_stat(mp, "backing_ids_open", 0)["backing_ids_open"] == 0


# -- 4. mmap of partial and of complete files ----------------------------------


@pytest.mark.parametrize("extra", MODES)
def test_mmap_of_partial_and_complete_files(
    mount: Mounter, pt_store: NginxStore, pt_tree: Tree, extra: tuple[str, ...]
):
    passthrough = not extra
    mp = mount_checked(mount, pt_store, extra)
    rel, size = MAP_FILE, MIX[MAP_FILE]
    path = mp / rel
    rng = random.Random(41)

    # Partial: shared and private mappings, random slices, then the whole
    # file through the shared mapping (which completes it by page faults).
    fd = os.open(path, os.O_RDONLY)
    try:
        st = state(path)
        assert st == "absent", st
        off = 2 * CHUNK + 3 * mmap.PAGESIZE
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as shared, \
             mmap.mmap(fd, size - off, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ, offset=off) as private:
            check_slices(private, pt_tree, rel, off, rng, 15)
            check_slices(shared, pt_tree, rel, 0, rng, 15)
            st = state(path)
            assert st.startswith("partial ") or st == "complete", st
            assert hashlib.sha256(shared).hexdigest() == pt_tree.hashes[rel]
            assert hashlib.sha256(private).hexdigest() == hashlib.sha256(
                pt_tree.read(rel, off, size - off)).hexdigest()
    finally:
        os.close(fd)
    assert wait_state(path, "complete") == "complete"

    # Complete: passthrough (or page cache), mapped both ways.
    before = stats(mp)
    fd = os.open(path, os.O_RDONLY)
    try:
        if passthrough:
            assert state(path) == "passthrough opens=1"
        else:
            assert stats(mp)["opens"]["page-cache"] == before["opens"]["page-cache"] + 1
        for flags in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
            with mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ) as m:
                check_slices(m, pt_tree, rel, 0, rng, 15)
                assert hashlib.sha256(m).hexdigest() == pt_tree.hashes[rel]
            off = CHUNK - mmap.PAGESIZE
            with mmap.mmap(fd, CHUNK + 2 * mmap.PAGESIZE, flags=flags, prot=mmap.PROT_READ, offset=off) as m:
                assert m[:] == pt_tree.read(rel, off, CHUNK + 2 * mmap.PAGESIZE)
    finally:
        os.close(fd)
    if passthrough:
        assert stats(mp)["fuse_reads"] == before["fuse_reads"]

    # A small file, complete from its first open, mapped both ways.
    fd = os.open(mp / SMALL_FILE, os.O_RDONLY)
    try:
        for flags in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
            with mmap.mmap(fd, MIX[SMALL_FILE], flags=flags, prot=mmap.PROT_READ) as m:
                assert hashlib.sha256(m).hexdigest() == pt_tree.hashes[SMALL_FILE]
    finally:
        os.close(fd)
    assert wait_stat(mp, "backing_ids_open", 0)["backing_ids_open"] == 0


# -- 5. kept backing ids: a small file's next open, after a change or an eviction --------


def test_a_kept_backing_id_serves_only_its_own_version(mount: Mounter, tmp_path: Path):
    """A closed small file keeps its backing id for the next open (no new
    registration), also for a new inode after the kernel forgot the old one;
    a replaced or evicted file never reads back through it."""
    from mounter import CACHEFS, run

    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    rng = random.Random(23)
    versions = [rng.randbytes(20_000) for _ in range(2)]
    source = root / "d" / "f.bin"
    source.write_bytes(versions[0])
    os.utime(source, (1_700_000_000, 1_700_000_000))
    with NginxStore(root, tmp_path / "nginx") as store:
        # JSON index: mtimes to the second, so the replaced file is a new version.
        mp = mount_checked(mount, store, ("--metadata-ttl", "1"))
        path = mp / "d" / "f.bin"
        assert path.read_bytes() == versions[0]
        wait_stat(mp, "backing_ids_kept", 1)
        assert path.read_bytes() == versions[0]
        assert stats(mp)["kept_reopens"] == 1
        # The kernel forgets its dentries and inodes: a new inode, the same id.
        wait_stat(mp, "backing_ids_kept", 1)
        Path("/proc/sys/vm/drop_caches").write_text("2")
        assert path.read_bytes() == versions[0]
        assert stats(mp)["kept_reopens"] == 2

        # Replaced on the store, same size: once the listing is older than
        # the TTL, the next open reads the new bytes, never the kept ones.
        source.write_bytes(versions[1])
        os.utime(source, (1_700_000_100, 1_700_000_100))
        time.sleep(1.5)
        assert path.read_bytes() == versions[1]
        assert wait_stat(mp, "backing_ids_kept", 1)["backing_ids_kept"] == 1  # the new version's

        # Evicted: the kept id goes with the file; the next open fetches again.
        done = run([CACHEFS, "evict", path], timeout=60)
        assert done.returncode == 0 and "kept" not in done.stdout, (done.stdout, done.stderr)
        assert stats(mp)["backing_ids_kept"] == 0
        assert state(path) == "absent"
        assert path.read_bytes() == versions[1]
        s = wait_stat(mp, "backing_ids_open", 0)
        assert s["backing_ids_kept"] == 1 and s["opens"]["daemon"] == 0, s
