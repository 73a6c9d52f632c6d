"""Issue 14, broken local state under a running mount: state.db truncated,
the cache folder removed, the cache disk full (a 20 MiB tmpfs).

The daemon must notice, say so once, and go on serving right bytes (from
the network, with a new cache), never an EIO for every read and never bytes
it cannot vouch for; with its disk full it must stay up, and what it has to
say goes somewhere that can still be written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability import ReadOutcome, checked_read, fsck, fsck_problems, only_folder
from mounter import STATE_DIR, Mounter, Tree, pid_alive, wait_until

from cachefs.localstore import NginxStore
from cachefs.localstore.tree import MiB

STATE = "user.cachefs.state"
LOST = "was lost"
NOTICE_S = 15.0
SETTLE_S = 30.0
TMPFS_SIZE = "20m"
READERS = 8


@pytest.fixture(autouse=True)
def _remove_fallback_logs(tmp_path: Path) -> Iterator[None]:
    """The daemons keep, for a post-mortem, what daemon.log could not take
    (a full disk, a removed folder): drop this test's once it is over."""
    yield
    for log in STATE_DIR.glob("*.log"):
        if str(tmp_path) in log.read_text("utf-8", "replace"):
            log.unlink(missing_ok=True)


def small_files(tree: Tree, limit: int = 40) -> list[str]:
    return [r for r in tree.files if r.startswith("small/") and tree.size(r) > 0][:limit]


def read_all(mp: Path, tree: Tree, rels: list[str]) -> ReadOutcome:
    out = ReadOutcome()
    for rel in rels:
        out.merge(checked_read(mp, tree, rel))
    return out


def cached(mp: Path, rel: str) -> bool:
    state = os.getxattr(mp / rel, STATE).decode()
    return state == "complete" or state.startswith("passthrough")


def daemon_log(cache: Path) -> str:
    # Not rglob: the daemon removes a lost data folder meanwhile.
    return "\n".join(p.read_text("utf-8", "replace") for p in sorted(cache.glob("*/daemon.log")))


def lost_lines(cache: Path) -> list[str]:
    return [ln for ln in daemon_log(cache).splitlines() if LOST in ln]


def check_clean_after(mount: Mounter, mp: Path, cache: Path, store: NginxStore, tree: Tree,
                      rels: list[str]) -> None:
    """Unmounted, the rebuilt cache holds only bytes equal to the remote's,
    and a new mount serves every file right."""
    mount.umount(mp)
    mount.cleanup(mp)
    code, reports = fsck(cache, "--verify-remote", "--source", store.url)
    bad = [p for p in fsck_problems(reports) if not p.startswith("orphan")]
    assert code in (0, 1) and bad == [], bad
    mp = mount(store.url, cache)
    for rel in rels:
        assert tree.sha256_of(mp / rel) == tree.hashes[rel], rel


def test_state_db_truncated_while_mounted(tree: Tree, store: NginxStore, mount: Mounter,
                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    rels = small_files(tree) + [f"sizes/{MiB + 1}.bin"]
    first, rest = rels[: len(rels) // 2], rels[len(rels) // 2:]
    assert read_all(mp, tree, first).ok == first
    assert wait_until(lambda: all(cached(mp, r) for r in first), SETTLE_S)
    folder = only_folder(cache)
    for name in ("state.db", "state.db-wal"):
        os.truncate(folder / name, 0)

    # Cached files and new ones: every read right, none fails.
    out = read_all(mp, tree, rels)
    assert out.wrong == [] and out.errors == {}, (out.wrong, out.errors, lost_lines(cache))
    assert wait_until(lambda: lost_lines(cache), NOTICE_S), daemon_log(cache)[-3000:]
    # Caching works again: files read now are recorded in the new database
    # (a file still open since before the rebuild is served, unrecorded,
    # from the file it has open: read it again once it is closed).
    assert wait_until(lambda: (read_all(mp, tree, rest).ok == rest
                               and all(cached(mp, r) for r in rest)), SETTLE_S), [
        os.getxattr(mp / r, STATE) for r in rest]
    assert len(lost_lines(cache)) == 1, lost_lines(cache)
    assert "Traceback" not in daemon_log(cache), daemon_log(cache)[-3000:]
    check_clean_after(mount, mp, cache, store, tree, rels)


def test_cache_folder_removed_while_mounted(tree: Tree, store: NginxStore, mount: Mounter,
                                            tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    rels = small_files(tree) + [f"sizes/{MiB + 1}.bin"]
    assert read_all(mp, tree, rels).ok == rels
    assert wait_until(lambda: all(cached(mp, r) for r in rels), SETTLE_S)
    # rm -rf CACHE/*
    for child in cache.iterdir():
        shutil.rmtree(child)

    out = read_all(mp, tree, rels)
    assert out.wrong == [] and out.errors == {}, (out.wrong, out.errors)
    assert wait_until(lambda: lost_lines(cache), NOTICE_S), daemon_log(cache)[-3000:]
    folder = only_folder(cache)
    assert (folder / "state.db").exists() and (folder / "data").is_dir()
    # New reads are cached again, in the new folder.
    assert wait_until(lambda: (read_all(mp, tree, rels[:5]).ok == rels[:5]
                               and all(cached(mp, r) for r in rels[:5])), SETTLE_S)
    check_clean_after(mount, mp, cache, store, tree, rels)


@pytest.mark.parametrize("how", ["truncate", "remove"])
def test_state_lost_under_concurrent_readers(tree: Tree, store: NginxStore, mount: Mounter,
                                             tmp_path: Path, how: str) -> None:
    """The loss lands while READERS threads read (cached and new files): the
    daemon keeps answering and every read gives the right bytes."""
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    pid = mount.daemon_pid(mp)
    rels = small_files(tree, 60) + [f"sizes/{MiB + 1}.bin", f"sizes/{MiB - 1}.bin"]
    assert read_all(mp, tree, rels[::2]).ok == rels[::2]
    outcomes: list[ReadOutcome] = []
    lock = threading.Lock()
    started = threading.Barrier(READERS + 1)

    def reader(i: int) -> None:
        started.wait()
        out = ReadOutcome()
        for _ in range(3):
            out.merge(read_all(mp, tree, rels[i::READERS]))
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    started.wait()
    folder = only_folder(cache)
    if how == "truncate":
        for name in ("state.db", "state.db-wal"):
            os.truncate(folder / name, 0)
    else:
        # Moved away first: an rm -rf racing the daemon's rebuild can delete
        # the daemon.log holding the line this test looks for.
        gone = tmp_path / "gone"
        os.rename(folder, gone)
        shutil.rmtree(gone)
    for t in threads:
        t.join(120)
    total = ReadOutcome()
    for out in outcomes:
        total.merge(out)
    assert len(outcomes) == READERS, "a reader hung"
    assert pid_alive(pid)
    assert total.wrong == [] and total.errors == {}, (total.wrong, total.errors)
    assert wait_until(lambda: lost_lines(cache), NOTICE_S)
    check_clean_after(mount, mp, cache, store, tree, rels)


# -- a full cache disk ---------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path, mount: Mounter) -> Iterator[Path]:
    path = tmp_path / "small-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "cachefs-test-full",
                    str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        for m in list(mount.mounts):
            mount.cleanup(m.mountpoint)
        subprocess.run(["umount", str(path)], check=True, capture_output=True)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (256 * 1024))
                f.flush()
        except OSError:
            pass
    # Bytes a buffered write could not place: the last few pages too.
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def fallback_log(mp: Path) -> Path:
    return STATE_DIR / (hashlib.sha256(str(mp).encode()).hexdigest()[:16] + ".log")


def test_cache_disk_full_many_readers(tree: Tree, store: NginxStore, mount: Mounter,
                                      small_tmpfs: Path) -> None:
    """Many readers with not a byte left on the cache disk: the daemon stays
    up, every read gives the right bytes or EIO, and the log lines daemon.log
    cannot take go to the fallback log; once space returns, all is well."""
    cache = small_tmpfs / "cache"
    mp = mount(store.url, cache, "--min-free", "0")
    pid = mount.daemon_pid(mp)
    rels = [r for r in tree.files if tree.size(r) < 4 * MiB and not r.startswith("empty")][:200]
    os.listdir(mp)  # the root listing, before the disk fills
    filler = fill(small_tmpfs)
    outcomes: list[ReadOutcome] = []
    listing_errors: list[str] = []
    lock = threading.Lock()

    def reader(part: list[str]) -> None:
        out = ReadOutcome()
        for rel in part:
            out.merge(checked_read(mp, tree, rel))
            # Listings too: they must not fail because they cannot be stored.
            try:
                os.listdir(mp / os.path.dirname(rel))
            except OSError as e:
                with lock:
                    listing_errors.append(f"{os.path.dirname(rel)}: {e!r}")
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=reader, args=(rels[i::READERS],)) for i in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    total = ReadOutcome()
    for out in outcomes:
        total.merge(out)
    assert len(outcomes) == READERS, "a reader hung"
    assert pid_alive(pid), "the daemon died with its disk full"
    assert listing_errors == [], listing_errors
    assert total.wrong == [], total.wrong
    assert all("OSError(5," in e for e in total.errors.values()), total.errors
    assert os.listdir(mp / "small")
    fallback = fallback_log(mp)
    assert wait_until(fallback.exists, NOTICE_S), "nothing was logged anywhere but the full disk"
    assert "cannot write" in fallback.read_text(), fallback.read_text()

    # Space returns: reads work and are cached again.
    filler.unlink()
    out = read_all(mp, tree, rels[:20])
    assert out.ok == rels[:20], out
    assert wait_until(lambda: cached(mp, rels[19]), SETTLE_S)
    assert pid_alive(pid)
    mount.umount(mp)
