"""What a mount leaves in the page cache: what readers asked for stays,
what read-ahead streamed into the cache leaves once it is durable (see
cache/journal.py; the journal's and the reads' own tests are in tests/unit).
"""

from __future__ import annotations

import os
from pathlib import Path

from disk import in_page_cache, on_disk, resident_bytes
from mounter import Mounter, Tree, wait_until

from cachefs.localstore import NginxStore
from cachefs.localstore.tree import CHUNK as DAEMON_CHUNK


def test_a_mount_keeps_what_readers_asked_for_and_drops_what_it_streamed(
    mount: Mounter, store: NginxStore, tree: Tree, tmp_path: Path
) -> None:
    disk = on_disk(tmp_path)
    mp = mount(store.url, disk / "cache")
    big = mp / "big.bin"
    asked = [5, 9]  # chunks a reader waits for, with no read-ahead
    with open(big, "rb", buffering=0) as f:
        for idx in asked:
            offset = idx * DAEMON_CHUNK + 4096
            assert os.pread(f.fileno(), 4096, offset) == tree.read("big.bin", offset, 4096)
    assert Tree.sha256_of(big) == tree.hashes["big.bin"]  # sequential: read-ahead streams the rest

    data = max((p for p in (disk / "cache").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert data.stat().st_size == tree.size("big.bin")
    nchunks = -(-data.stat().st_size // DAEMON_CHUNK)
    # Chunk 0 (the sequential read's first) and the asked ones stay; a
    # chunk or two more may have been asked for before read-ahead got to it.
    bound = (len(asked) + 3) * DAEMON_CHUNK
    assert wait_until(lambda: resident_bytes(data) <= bound, 10), \
        f"{resident_bytes(data)} bytes of {nchunks} chunks still in the page cache"
    fd = os.open(data, os.O_RDONLY)
    try:
        assert [idx for idx in asked if not in_page_cache(fd, idx * DAEMON_CHUNK + 4096)] == []
    finally:
        os.close(fd)
