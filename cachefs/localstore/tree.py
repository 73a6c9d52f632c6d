"""Deterministic trees of files to serve: same spec, same bytes, names, mtimes.

Contents come from a PRNG seeded per file, so a tree can be rebuilt anywhere
and any byte range re-derived; the hashes returned by `make_tree` are what a
reader through a mount must reproduce. Names are chosen to trip up index
parsers and URL handling: spaces, UTF-8, literal '%XX' sequences, '#', '&',
'+', '?', HTML-special characters and names longer than nginx's HTML column.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

# Files are written in pieces of this size so a 256 MiB file never sits in
# memory whole. It is also the chunk size cachefs fetches by (design.md), so
# the boundary sizes below sit on the cache's edges.
PIECE = 8 * MiB
CHUNK = 8 * MiB

# mtimes are whole seconds from this fixed epoch (2023-11-14T22:13:20Z), so a
# mount that reports "now" or the cache file's time cannot pass for right.
MTIME_BASE = 1_700_000_000
MTIME_SPREAD_S = 10_000_000

# Names that have broken HTTP index clients before. Several contain text that
# looks percent-encoded ('%41', '%2F', '%25'): decoded twice they change.
SPECIAL_NAMES: tuple[str, ...] = (
    "with space.txt",
    "  leading and trailing spaces  .txt",
    "café.txt",
    "naïve résumé ünïcödé.bin",
    "emoji 🎉 party.txt",
    "100%.txt",
    "percent%41.txt",
    "percent%2F slash.txt",
    "percent%25 twice.txt",
    "hash#tag.txt",
    "amp&ersand&amp;.txt",
    "plus+sign+.txt",
    "question?mark.txt",
    "semi;colon=equals,comma.txt",
    "brackets [1] (2) {3}.txt",
    "apostrophe's.txt",
    "less<than>greater.txt",
    "tilde~dollar$at@.txt",
    "a name much longer than fifty characters, which nginx html truncates.txt",
    "長いファイル名も五十文字を超えるとエヌジンクスのHTMLの一覧では途中で切られてしまうかもしれない.bin",
)
# Directory names with the same traps, each holding a file or two.
SPECIAL_DIRS: tuple[str, ...] = ("データ", "dir with space", "dir%20encoded", "dir#hash&amp")


@dataclass(frozen=True)
class TreeSpec:
    """What `make_tree` writes; every field changes the bytes or the names."""

    seed: int = 2
    # One large file at the root, "big.bin"; 0 for none.
    big_size: int = 0
    # Files named by their size under sizes/, on the edges of pages and chunks.
    boundary_sizes: tuple[int, ...] = (0, 1, 4095, 4096, 4097)
    # Files of random sizes (log-uniform up to small_max_size, some empty)
    # spread over small/dNN/; the first directory gets half of them, so one
    # listing is long.
    small_count: int = 50
    small_max_size: int = 64 * KiB
    small_dirs: int = 4
    # nested/l1/l2/... with a file at every level.
    nesting_depth: int = 6
    special_names: tuple[str, ...] = SPECIAL_NAMES
    special_dirs: tuple[str, ...] = SPECIAL_DIRS
    # Empty directories to create (relative paths).
    empty_dirs: tuple[str, ...] = ("empty", "nested/empty inside")
    extra_files: dict[str, int] = field(default_factory=dict)


def demo_spec() -> TreeSpec:
    """A few MB: quick to serve, mount and read twice for the demo."""
    return TreeSpec(big_size=6 * MiB + 12_345, small_count=60, small_dirs=3)


def test_spec() -> TreeSpec:
    """The issue's test tree: a big file past 256 MiB and hundreds of small ones."""
    return TreeSpec(
        # Not a multiple of any chunk or page size: the last chunk is short.
        big_size=256 * MiB + 12_345,
        boundary_sizes=(
            0, 1, 2, 4095, 4096, 4097,
            128 * KiB - 1, 128 * KiB + 1,
            MiB - 1, MiB, MiB + 1,
            CHUNK - 1, CHUNK, CHUNK + 1,
            2 * CHUNK + 3,
        ),
        small_count=400,
        small_max_size=256 * KiB,
        small_dirs=5,
    )


def file_sizes(spec: TreeSpec) -> dict[str, int]:
    """Relative path -> size of every file the spec describes."""
    rng = random.Random(f"{spec.seed}/sizes")
    sizes: dict[str, int] = {}
    if spec.big_size:
        sizes["big.bin"] = spec.big_size
    for size in spec.boundary_sizes:
        sizes[f"sizes/{size}.bin"] = size
    for i in range(spec.small_count):
        # First dir takes half, the rest share the other half.
        d = 0 if i % 2 == 0 else 1 + (i // 2) % max(spec.small_dirs - 1, 1)
        sizes[f"small/d{d:02d}/file-{i:04d}.bin"] = _small_size(rng, spec.small_max_size)
    for name in spec.special_names:
        sizes[f"names/{name}"] = _small_size(rng, spec.small_max_size)
    for dirname in spec.special_dirs:
        sizes[f"names/{dirname}/inside {dirname}.txt"] = _small_size(rng, spec.small_max_size)
        sizes[f"{dirname}/file.bin"] = _small_size(rng, spec.small_max_size)
    parts = ["nested"]
    for level in range(1, spec.nesting_depth + 1):
        parts.append(f"l{level}")
        sizes[f"{'/'.join(parts)}/leaf-{level}.bin"] = _small_size(rng, spec.small_max_size)
    sizes.update(spec.extra_files)
    return sizes


def make_tree(root: Path, spec: TreeSpec) -> dict[str, str]:
    """Write the tree under `root`; return relative path -> sha256 hex."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mtimes = random.Random(f"{spec.seed}/mtimes")
    hashes: dict[str, str] = {}
    for rel, size in sorted(file_sizes(spec).items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        hashes[rel] = write_seeded_file(path, file_seed(spec, rel), size)
        mtime = MTIME_BASE + mtimes.randrange(MTIME_SPREAD_S)
        os.utime(path, (mtime, mtime))
    for rel in spec.empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    # Directory mtimes last: creating entries inside a directory changes its
    # mtime. Deepest first for the same reason.
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for path in dirs:
        mtime = MTIME_BASE + mtimes.randrange(MTIME_SPREAD_S)
        os.utime(path, (mtime, mtime))
    return hashes


def file_seed(spec: TreeSpec, rel: str) -> str:
    """The PRNG seed of one file's contents."""
    return f"{spec.seed}/data/{rel}"


def write_seeded_file(path: Path, seed: str, size: int) -> str:
    """Fill `path` with `size` bytes from a PRNG seeded by `seed`; return their sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            piece = rng.randbytes(min(PIECE, remaining))
            f.write(piece)
            digest.update(piece)
            remaining -= len(piece)
    return digest.hexdigest()


def _small_size(rng: random.Random, max_size: int) -> int:
    # About 1 in 20 empty; otherwise log-uniform so tiny and large both occur.
    if rng.random() < 0.05:
        return 0
    return max(1, int(max_size ** rng.random()))
