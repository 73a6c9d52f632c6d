"""`cachefs fsck`, `status`, `cache clear` and `evict` on real caches made by real mounts.

Damage is done to a cache the way a crash, a full disk or a bad sector would
leave it (files truncated, deleted, their bytes changed, rows wrong), while
it is unmounted; fsck must find each, --repair must drop it, and a mount of
the repaired cache must read every file's true bytes again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from mounter import CACHEFS, Mounter, Tree, wait_until

from cachefs.localstore import NginxStore
from cachefs.localstore.tree import CHUNK

STATE = "user.cachefs.state"
COMMAND_TIMEOUT_S = 120.0
SETTLE_S = 30.0

# Files under sizes/ are named by their size; these span 1 to 3 chunks.
TRUNCATED = f"sizes/{2 * CHUNK + 3}.bin"  # 3 chunks
CORRUPTED = f"sizes/{CHUNK + 1}.bin"  # 2 chunks; damage goes in chunk 1
MISSING = f"sizes/{1024 * 1024}.bin"
BAD_BYTES = "sizes/4097.bin"
BAD_FLAGS = f"sizes/{128 * 1024 + 1}.bin"
DAMAGED = [TRUNCATED, CORRUPTED, MISSING, BAD_BYTES, BAD_FLAGS]
ORPHAN = "ab" + "0" * 38
EMPTY = "sizes/0.bin"


def cachefs(*args: str | Path, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CACHEFS), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def read_whole(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def wait_complete(mp: Path, rels: list[str]) -> None:
    """Until every file is recorded complete (passthrough opens imply it)."""
    def state(rel: str) -> str:
        return os.getxattr(mp / rel, STATE).decode()

    ok = wait_until(lambda: all(state(r) == "complete" or state(r).startswith("passthrough") for r in rels),
                    SETTLE_S)
    assert ok, {r: state(r) for r in rels}


def only_folder(cache_dir: Path) -> Path:
    folders = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def db(folder: Path) -> sqlite3.Connection:
    return sqlite3.connect(folder / "state.db")


def row_of(folder: Path, key: str) -> tuple[int, str, int, int, int] | None:
    """(id, data_name, size, bytes_cached, complete) of the object at `key`."""
    with db(folder) as conn:
        return conn.execute("SELECT id, data_name, size, bytes_cached, complete FROM objects WHERE key = ?",
                            (key,)).fetchone()


def wait_recorded(folder: Path, keys: list[str]) -> None:
    """Until SQLite records every key complete (the xattr may know it sooner)."""
    def recorded(key: str) -> bool:
        row = row_of(folder, key)
        return row is not None and row[4] == 1

    assert wait_until(lambda: all(map(recorded, keys)), SETTLE_S), keys


def data_file(folder: Path, key: str) -> Path:
    row = row_of(folder, key)
    assert row is not None, f"{key} has no row"
    return folder / "data" / row[1][:2] / row[1]


def fsck(cache_dir: Path, *extra: str) -> tuple[int, list[dict]]:
    result = cachefs("fsck", "--cache-dir", cache_dir, "--json", *extra)
    assert result.returncode in (0, 1, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def problems(reports: list[dict]) -> set[tuple[str, str | None]]:
    return {(p["kind"], p["key"] or p["data_file"]) for r in reports for p in r["problems"]}


@pytest.fixture
def filled_cache(tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path) -> Path:
    """A cache dir holding the DAMAGED files complete, unmounted."""
    cache_dir = tmp_path / "cache"
    mp = mount(store.url, cache_dir)
    # An empty file leaves a data file and no row: fsck must call that clean.
    read_whole(mp / EMPTY)
    for rel in DAMAGED:
        read_whole(mp / rel)
    wait_complete(mp, DAMAGED)
    mount.umount(mp)
    mount.cleanup(mp)
    return cache_dir


def test_fsck_finds_and_repairs_damage(tree: Tree, store: NginxStore, mount: Mounter,
                                       filled_cache: Path) -> None:
    cache_dir = filled_cache
    folder = only_folder(cache_dir)
    code, reports = fsck(cache_dir)
    assert code == 0 and reports[0]["state"] == "clean", reports
    assert cachefs("fsck", "--cache-dir", cache_dir).stdout.split(": ", 1)[1].startswith("clean")

    # The damage.
    os.truncate(data_file(folder, TRUNCATED), 100)
    with open(data_file(folder, CORRUPTED), "r+b") as f:
        # Chunk 1 is the file's last byte: change it, keeping the size.
        (byte,) = os.pread(f.fileno(), 1, CHUNK)
        os.pwrite(f.fileno(), bytes([byte ^ 0xFF]), CHUNK)
    data_file(folder, MISSING).unlink()
    (folder / "data" / ORPHAN[:2] / ORPHAN).write_bytes(b"left behind")
    bad_flags_id = row_of(folder, BAD_FLAGS)[0]
    with db(folder) as conn:
        conn.execute("UPDATE objects SET bytes_cached = bytes_cached + 7 WHERE key = ?", (BAD_BYTES,))
        conn.execute("UPDATE objects SET complete = 0 WHERE id = ?", (bad_flags_id,))
        conn.execute("INSERT INTO chunks (object_id, idx) VALUES (?, 5)", (bad_flags_id,))

    code, reports = fsck(cache_dir)
    local = {
        ("wrong-size", TRUNCATED), ("missing-file", MISSING), ("orphan-file", f"{ORPHAN[:2]}/{ORPHAN}"),
        ("bad-bytes-cached", BAD_BYTES), ("bad-chunk", BAD_FLAGS), ("bad-complete", BAD_FLAGS),
    }
    assert code == 1 and reports[0]["state"] == "dirty"
    assert problems(reports) == local
    # Changed bytes of the right size break no local promise: only the remote tells.
    code, reports = fsck(cache_dir, "--verify-remote", "--source", store.url)
    assert code == 1
    assert problems(reports) == local | {("corrupt", CORRUPTED)}, reports
    (corrupt,) = [p for p in reports[0]["problems"] if p["kind"] == "corrupt"]
    assert corrupt["chunks"] == [1]

    code, reports = fsck(cache_dir, "--repair", "--verify-remote", "--source", store.url)
    assert code == 0 and reports[0]["state"] == "repaired", reports
    assert all(p["repaired"] for p in reports[0]["problems"])
    code, reports = fsck(cache_dir, "--verify-remote", "--source", store.url)
    assert code == 0 and reports[0]["state"] == "clean", reports
    assert reports[0]["chunks_verified"] > 0

    # What was dropped, exactly.
    assert row_of(folder, MISSING) is None
    assert not (folder / "data" / ORPHAN[:2] / ORPHAN).exists()
    _, _, size, cached, complete = row_of(folder, TRUNCATED)
    assert (cached, complete) == (0, 0) and data_file(folder, TRUNCATED).stat().st_size == size
    _, _, _, cached, complete = row_of(folder, CORRUPTED)
    assert (cached, complete) == (CHUNK, 0)  # chunk 0 kept, chunk 1 dropped
    assert row_of(folder, BAD_BYTES)[3:] == (4097, 1)
    assert row_of(folder, BAD_FLAGS)[3:] == (128 * 1024 + 1, 1)

    # A mount of the repaired cache reads the true bytes of every file.
    mp = mount(store.url, cache_dir)
    for rel in DAMAGED:
        assert Tree.sha256_of(mp / rel) == tree.hashes[rel], rel


def test_fsck_refuses_to_repair_a_mounted_cache(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    mp = mount(store.url, cache_dir)
    read_whole(mp / TRUNCATED)
    wait_complete(mp, [TRUNCATED])
    folder = only_folder(cache_dir)
    wait_recorded(folder, [TRUNCATED])
    os.truncate(data_file(folder, TRUNCATED), 100)  # damage fsck must not touch while mounted
    result = cachefs("fsck", "--cache-dir", cache_dir, "--repair")
    assert result.returncode == 2, result
    assert f"in use by the mount at {mp}" in result.stdout and "unmount it" in result.stdout
    assert data_file(folder, TRUNCATED).stat().st_size == 100
    assert row_of(folder, TRUNCATED)[4] == 1  # the row is untouched too
    # Without --repair it is skipped, not checked: a live cache's state is in motion.
    result = cachefs("fsck", "--cache-dir", cache_dir)
    assert result.returncode == 2 and "not checked" in result.stdout
    result = cachefs("fsck", "--cache-dir", cache_dir, "--force")
    assert result.returncode == 1 and "wrong-size" in result.stdout and "read-only" in result.stdout


def test_status_shows_real_figures(tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    mp = mount(store.url, cache_dir, "--cache-size", "1G")

    def status() -> dict:
        result = cachefs("status", mp, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    before = status()
    assert before["mountpoint"] == str(mp) and before["source"] == store.url
    assert before["cache"]["bytes_cached"] == 0 and before["cache"]["objects_complete"] == 0
    assert before["cache"]["cap_bytes"] == 1 << 30

    files = [TRUNCATED, CORRUPTED]
    for rel in files:
        read_whole(mp / rel)
    wait_complete(mp, files)
    folder = only_folder(cache_dir)
    wait_recorded(folder, files)
    read_whole(mp / TRUNCATED)  # complete now: a passthrough open
    assert before["cache_dir"] == str(folder)

    def recorded() -> tuple[int, int]:
        with db(folder) as conn:
            return conn.execute("SELECT SUM(bytes_cached), SUM(complete) FROM objects").fetchone()

    after = status()
    cache, stats = after["cache"], after["stats"]
    assert (cache["bytes_cached"], cache["objects_complete"]) == recorded()
    assert cache["bytes_cached"] >= sum(tree.size(r) for r in files)
    assert cache["objects_complete"] >= 2 and cache["objects_partial"] == 0
    assert stats["bytes_fetched"] >= sum(tree.size(r) for r in files)
    assert stats["passthrough"] is True, stats["passthrough_reason"]
    assert stats["opens"]["page-cache"] >= 2 and stats["opens"]["passthrough"] >= 1

    text = cachefs("status", mp).stdout
    assert text.startswith(f"{mp} (pid ")
    assert "of 1.0 GiB cap" in text
    assert "passthrough  on" in text and f"objects      {cache['objects_complete']} complete" in text
    # Without a mountpoint: every mount, ours among them.
    everything = cachefs("status", "--json")
    assert any(s["mountpoint"] == str(mp) for s in json.loads(everything.stdout))


def test_cache_clear_keeps_the_mounted_folder(tree: Tree, store: NginxStore, mount: Mounter,
                                              tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    unused = mount(store.url, cache_dir)
    read_whole(unused / BAD_BYTES)
    mount.umount(unused)
    mount.cleanup(unused)
    idle = only_folder(cache_dir)
    live = mount(store.html_url, cache_dir)  # another source: another folder
    read_whole(live / BAD_BYTES)
    (cache_dir / "notes.txt").write_text("not a cache folder")

    result = cachefs("cache", "clear", "--cache-dir", cache_dir)
    assert result.returncode == 1, result
    assert f"removed {idle}" in result.stdout
    assert f"in use by the mount at {live}" in result.stdout and f"cachefs evict {live}" in result.stdout
    assert not idle.exists()
    (kept,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert (kept / "state.db").exists() and (cache_dir / "notes.txt").exists()
    assert Tree.sha256_of(live / TRUNCATED) == tree.hashes[TRUNCATED]


def test_evict_drops_cached_data(store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    mp = mount(store.url, cache_dir)
    files = [TRUNCATED, CORRUPTED]
    for rel in files:
        read_whole(mp / rel)
    wait_complete(mp, files)
    wait_recorded(only_folder(cache_dir), files)
    result = cachefs("evict", mp / TRUNCATED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("evicted 1 files"), result.stdout
    assert os.getxattr(mp / TRUNCATED, STATE).decode() == "absent"
    assert os.getxattr(mp / CORRUPTED, STATE).decode() == "complete"
    # The mountpoint itself empties the cache; status then shows nothing cached.
    result = cachefs("evict", mp)
    assert result.returncode == 0 and result.stdout.startswith("evicted "), result
    status = json.loads(cachefs("status", mp, "--json").stdout)
    assert status["cache"]["bytes_cached"] == 0 and status["cache"]["objects_complete"] == 0
