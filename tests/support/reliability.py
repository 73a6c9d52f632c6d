"""Helpers shared by the reliability tests (faults, crashes, load, bad input,
security): running the CLI, fsck verdicts, and reading files while checking
every byte against the source tree."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mounter import CACHEFS, Tree

COMMAND_TIMEOUT_S = 180.0
PIECE = 1024 * 1024


def cachefs(*args: str | Path, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CACHEFS), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def fsck(cache_dir: Path, *extra: str | Path) -> tuple[int, list[dict]]:
    """(exit status, reports) of `cachefs fsck --json` on an unmounted cache."""
    result = cachefs("fsck", "--cache-dir", cache_dir, "--json", *extra)
    assert result.returncode in (0, 1, 2), f"fsck exited {result.returncode}: {result.stderr}"
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"fsck printed no JSON: {result.stdout!r} {result.stderr!r}") from None


def fsck_problems(reports: list[dict]) -> list[str]:
    out = []
    for r in reports:
        for p in r["problems"]:
            out.append(f"{p['kind']} {p['key'] or p['data_file']}: {p['detail']}")
        out += [f"warning: {w}" for w in r.get("warnings", [])]
        if r["state"] not in ("clean",):
            out.append(f"folder {r['folder']} is {r['state']}")
    return out


@dataclass
class ReadOutcome:
    ok: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # rel -> error text
    wrong: list[str] = field(default_factory=list)  # wrong bytes: never allowed

    def merge(self, other: ReadOutcome) -> None:
        self.ok += other.ok
        self.errors.update(other.errors)
        self.wrong += other.wrong


def checked_read(mp: Path, tree: Tree, rel: str, piece: int = PIECE) -> ReadOutcome:
    """Read `rel` through the mount in `piece`s, comparing each with the source.

    An OSError ends the read and is an allowed outcome; any byte that differs
    from the source (or a short file) is not.
    """
    out = ReadOutcome()
    size = tree.size(rel)
    offset = 0
    try:
        fd = os.open(mp / rel, os.O_RDONLY)
    except OSError as e:
        out.errors[rel] = f"open: {e!r}"
        return out
    try:
        with open(tree.root / rel, "rb") as src:
            while True:
                try:
                    got = os.pread(fd, piece, offset)
                except OSError as e:
                    out.errors[rel] = f"read at {offset}: {e!r}"
                    return out
                want = os.pread(src.fileno(), len(got), offset)
                # A short read is allowed (a page-cache handle whose daemon
                # died returns the pages it has, then the error); bytes that
                # differ, or an end of file before the file's size, are not.
                if got != want:
                    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                    zeros = got[first:] == bytes(len(got) - first)
                    out.wrong.append(f"{rel}: read of {len(got)} bytes at {offset} differs from the source "
                                     f"from byte {offset + first} on{' (zeros from there)' if zeros else ''}")
                    return out
                if not got:
                    break
                offset += len(got)
    finally:
        try:
            os.close(fd)
        except OSError as e:
            # A close whose FLUSH the kernel had sent when the daemon was
            # killed ends with ECONNABORTED: an error, which is allowed.
            out.errors.setdefault(rel, f"close: {e!r}")
    if rel in out.errors:
        return out
    if offset != size:
        out.wrong.append(f"{rel}: read {offset} bytes, the file has {size}")
    else:
        out.ok.append(rel)
    return out


def only_folder(cache_dir: Path) -> Path:
    folders = [p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == 1, folders
    return folders[0]


def log_text(cache_dir: Path) -> str:
    return "\n".join(p.read_text("utf-8", "replace") for p in sorted(cache_dir.rglob("daemon.log")))


def log_lines(cache_dir: Path, *needles: str, limit: int = 20) -> list[str]:
    """Lines of the daemon logs that hold any of `needles` (for failure messages)."""
    lines = [ln for ln in log_text(cache_dir).splitlines() if any(n in ln for n in needles)]
    return lines[:limit]
