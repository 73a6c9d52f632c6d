"""`cachefs bench` end to end, tiny: every mode and figure lands in the JSON
with a positive number, the chart is a PNG, and nothing is left behind.

No timing is asserted: only that each figure was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachefs.benchmark.model import FIGURES, MODES, NATIVE, OPENED_COLD, RAND, RSS
from cachefs.kernel.mounting import mounts_under

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 120


@pytest.mark.parametrize("server", ["auto", "builtin"])
def test_bench_tiny_run(tmp_path: Path, server: str) -> None:
    out_json, out_png = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    work = tmp_path / "work"
    work.mkdir()
    # The bench's temp dir goes under `work`, so the test can see it is removed.
    env = {**os.environ, "TMPDIR": str(work)}
    done = subprocess.run(
        [sys.executable, "-m", "cachefs.cli", "bench", "--big-size", "2", "--small-count", "12",
         "--runs", "1", "--rand-count", "100", "--server", server,
         "--json", str(out_json), "--chart", str(out_png)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "vs native" in done.stdout  # the table was printed
    assert done.stderr.strip(), "no progress was shown on stderr"

    doc = json.loads(out_json.read_text())
    for figure in FIGURES:
        for mode in MODES:
            entry = doc["figures"][figure.key]["modes"][mode.key]
            if (mode, figure) == (NATIVE, RSS):
                assert entry.get("skipped"), "native has no daemon: its RSS must be marked skipped"
                continue
            if mode == OPENED_COLD and figure != RAND:
                assert entry.get("skipped"), f"{mode.key} measures random reads only: {entry}"
                continue
            assert entry.get("median", 0) > 0, f"{mode.key}/{figure.key}: {entry}"
            assert entry["min"] > 0 and entry["max"] >= entry["min"]
            assert len(entry["runs"]) == 1
    assert doc["host"]["cpus"] >= 1 and "loadavg_1m_start" in doc["host"]

    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert not mounts_under(tmp_path), "the bench left a mount behind"
    assert list(work.iterdir()) == [], "the bench left its temp dir behind"
