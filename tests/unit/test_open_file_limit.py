"""The daemon takes the hard limit on open files (each kept backing id holds one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_daemon_raises_its_soft_open_file_limit_to_the_hard_one() -> None:
    # In a child, so this test process keeps its own limits.
    script = textwrap.dedent("""
        import resource
        from cachefs.daemon.serve import raise_open_file_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        now = raise_open_file_limit()
        print(now, *resource.getrlimit(resource.RLIMIT_NOFILE))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    now, soft, hard = map(int, out.split())
    assert now == soft == hard
