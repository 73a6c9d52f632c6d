"""The fetcher's writes into data files: every byte lands where it belongs,
even when the kernel writes short (as it does on a nearly full disk)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cachefs.cache import fetcher


def short_pwritev(limit: int):
    """os.pwritev that writes at most `limit` bytes per call, like a full disk does."""
    real = os.pwritev

    def pwritev(fd: int, buffers: list, offset: int) -> int:
        taken, left = [], limit
        for b in buffers:
            if not left:
                break
            piece = memoryview(b)[:left]
            taken.append(piece)
            left -= len(piece)
        return real(fd, taken, offset)

    return pwritev


@pytest.mark.parametrize("limit", [1, 4095, 4096, 70_000, 10**9])
def test_write_all_survives_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    rng = random.Random(limit)
    pieces = [rng.randbytes(n) for n in (1, 4096, 3, 65536, 12_345, 0, 7)]
    offset = 10_000
    path = tmp_path / "data"
    path.write_bytes(b"\0" * offset)
    monkeypatch.setattr(fetcher.os, "pwritev", short_pwritev(limit))
    fd = os.open(path, os.O_RDWR)
    try:
        fetcher._write_all(fd, pieces, offset)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * offset + b"".join(pieces)
