"""`cachefs demo`: the built-in default job, needing no remote.

It generates a small tree, serves it with a local nginx, mounts it with a
fresh cache, reads every file cold (from the network) and then warm (from the
cache), checks every byte against the source, prints both timings, and
cleans everything up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cachefs.localstore.nginx import NginxError, NginxStore
from cachefs.localstore.tree import demo_spec, make_tree

READ_SIZE = 1024 * 1024


def _cachefs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachefs.cli", *args], capture_output=True, text=True)


def _read_all(mountpoint: Path) -> tuple[dict[str, str], int]:
    hashes, total = {}, 0
    for dirpath, _dirs, files in os.walk(mountpoint):
        for name in files:
            path = Path(dirpath) / name
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as f:
                while block := f.read(READ_SIZE):
                    h.update(block)
                    total += len(block)
            hashes[str(path.relative_to(mountpoint))] = h.hexdigest()
    return hashes, total


def _timed_pass(label: str, mountpoint: Path, expected: dict[str, str]) -> None:
    start = time.perf_counter()
    hashes, total = _read_all(mountpoint)
    elapsed = time.perf_counter() - start
    if hashes != expected:
        bad = sorted(k for k in expected.keys() | hashes.keys() if hashes.get(k) != expected.get(k))
        raise SystemExit(f"cachefs demo: {label} read returned wrong data for {len(bad)} files, e.g. {bad[0]}")
    print(f"{label:>5}: {len(hashes)} files, {total / 1e6:.1f} MB in {elapsed:.3f} s"
          f" = {total / 1e6 / elapsed:.0f} MB/s, {len(hashes) / elapsed:.0f} files/s (bytes verified)")


def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cachefs-demo-") as tmp:
        work = Path(tmp)
        tree, mountpoint, cache = work / "tree", work / "mnt", work / "cache"
        mountpoint.mkdir()
        expected = make_tree(tree, demo_spec())
        try:
            store = NginxStore(tree, work / "nginx").start()
        except NginxError as e:
            print(f"cachefs demo: {e}", file=sys.stderr)
            return 1
        try:
            print(f"serving a demo tree at {store.url}; mounting it at {mountpoint}")
            mounted = _cachefs("mount", store.url, str(mountpoint), "--cache-dir", str(cache))
            if mounted.returncode != 0:
                print(mounted.stderr.strip(), file=sys.stderr)
                return 1
            try:
                _timed_pass("cold", mountpoint, expected)
                _timed_pass("warm", mountpoint, expected)
            finally:
                done = _cachefs("umount", str(mountpoint))
                if done.returncode != 0:
                    _cachefs("umount", "--lazy", str(mountpoint))
        finally:
            store.stop()
    return 0
