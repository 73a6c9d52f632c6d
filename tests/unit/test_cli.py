"""The command line's answers that need no mount: a path outside any cachefs
mount, a missing cache dir, a bad option value. Each is one line on stderr,
with exit 1 (2 for usage errors), never a traceback. Run in-process through
`cachefs.cli.app.main`, as the `cachefs` command runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachefs.cli import app


def cachefs(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """(exit status, stderr) of `cachefs ARGS...`."""
    try:
        status = app.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    return status, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error: {err!r}"
    return lines[0]


@pytest.mark.parametrize("command", ["prefetch", "unpin"])
def test_a_path_outside_any_mount_is_a_one_line_error(tmp_path: Path, capsys, command: str) -> None:
    status, err = cachefs(capsys, command, tmp_path)
    assert status == 1
    assert "not inside a cachefs mount" in one_line(err)


@pytest.mark.parametrize("jobs", ["0", "65", "many"])
def test_bad_jobs_is_a_usage_error(tmp_path: Path, capsys, jobs: str) -> None:
    status, err = cachefs(capsys, "prefetch", "--jobs", jobs, tmp_path)
    assert status == 2
    assert "usage:" in err and "--jobs" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["status", "{tmp}"],
    ["fsck", "--cache-dir", "{tmp}/nope"],
    ["cache", "clear", "--cache-dir", "{tmp}/nope"],
    ["evict", "{tmp}"],
], ids=["status", "fsck", "cache-clear", "evict"])
def test_the_cache_tools_fail_in_one_line(tmp_path: Path, capsys, args: list[str]) -> None:
    status, err = cachefs(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert status == 1
    assert one_line(err).startswith("cachefs: ")


def test_bench_rejects_a_path_outside_any_mount(tmp_path: Path, capsys) -> None:
    status, err = cachefs(capsys, "bench", tmp_path, "--quiet", "--json", tmp_path / "b.json",
                          "--chart", tmp_path / "b.png")
    assert status == 1
    assert "not inside a cachefs mount" in one_line(err)
