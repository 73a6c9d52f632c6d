"""What a benchmark run stands in, and leaves nothing of.

A `Rig` is a private work folder, the cachefs mounts made in it and the local
store serving the data; all of it is removed at the end, also after an error
or Ctrl-C, and a second Ctrl-C cannot cut that short. `cachefs bench` runs in
one. The scripts in bench/ also measure through a `MountBench` (one
mountpoint, fresh cache folders, the daemon logs' problems noted) and end
through `run_script`.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cachefs.kernel.mounting import mounts_under
from cachefs.localstore.nginx import NginxError

from .data import Store
from .model import Record
from .report import emit_report
from .system import (READ_BLOCK, BenchError, Mounts, daemon_log_problems, lazy_unmount,
                     sigterm_as_interrupt)

S = TypeVar("S", bound=Store)


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")


class Cleanup(contextlib.ExitStack):
    """An ExitStack whose callbacks run with Ctrl-C and SIGTERM ignored, so a
    second interrupt cannot leave a mount or a server behind."""

    def __exit__(self, *exc: object) -> bool:
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in saved:
            signal.signal(sig, signal.SIG_IGN)
        try:
            return super().__exit__(*exc)  # type: ignore[arg-type, return-value]
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)


class Workspace:
    """A private temp directory; removed on close unless something is still
    mounted inside it (then it is left and named, never deleted through a mount)."""

    def __init__(self, prefix: str, program: str = "bench") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.program = program  # names the messages

    def fresh_dir(self, name: str) -> Path:
        path = self.path / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def remove_dir(self, path: Path) -> None:
        """Delete `path` (inside the workspace) unless something is mounted in it."""
        if mounts_under(path):
            print(f"{self.program}: still mounted under {path}; left it in place", file=sys.stderr)
            return
        shutil.rmtree(path, ignore_errors=True)

    def remove(self) -> None:
        """Lazily unmount anything left inside, then delete everything."""
        for mountpoint in reversed(mounts_under(self.path)):
            lazy_unmount(Path(mountpoint))
        self.remove_dir(self.path)


def byte_compile_cachefs() -> None:
    """Write the .pyc files of cachefs (and its migrations) where missing or stale.

    An installed wheel has them. A checkout run with PYTHONDONTWRITEBYTECODE
    set (as on the project's machines) would otherwise compile every changed
    module again at each mount, which times the compiler, not cachefs. Where
    the package cannot be written, nothing happens."""
    for name in ("cachefs", "cachefs.migrations"):
        spec = importlib.util.find_spec(name)
        folders = spec.submodule_search_locations if spec is not None else None
        for folder in folders or ():
            compileall.compile_dir(folder, quiet=2)


class Rig(Cleanup):
    """A workspace and the cachefs mounts made in it. On exit, in this order:
    whatever was registered later (a store, child processes) is stopped, the
    mounts are unmounted, the workspace is removed."""

    def __init__(self, prefix: str, program: str = "bench") -> None:
        super().__init__()
        byte_compile_cachefs()
        self.workspace = Workspace(prefix, program)
        self.callback(self.workspace.remove)
        self.mounts = Mounts()
        self.callback(self.mounts.unmount_all)

    def serve(self, store: S) -> S:
        """Start `store`; it is stopped on exit, even if it fails to start half-way."""
        self.callback(store.stop)
        store.start()
        return store


class MountBench:
    """What the scripts' measurements share: one mountpoint in the workspace,
    mounts of the store at `url` with a cache folder, and the problems in the
    daemon logs of those folders, noted in `record` under "daemon_log_problems"."""

    def __init__(self, rig: Rig, url: str, record: Record) -> None:
        self.rig = rig
        self.url = url
        self.record = record
        self.mountpoint = rig.workspace.fresh_dir("mnt")
        self.buf = bytearray(READ_BLOCK)
        self._problems_seen: dict[Path, int] = {}

    def mount(self, cache: Path, *options: str) -> None:
        self.rig.mounts.mount(self.url, self.mountpoint, cache, *options)

    def unmount(self) -> None:
        self.rig.mounts.unmount(self.mountpoint)

    def remount(self, cache: Path, *options: str) -> None:
        self.unmount()
        self.mount(cache, *options)

    @contextlib.contextmanager
    def fresh_cache(self, label: str) -> Iterator[Path]:
        """A new, empty cache folder; on exit: unmount, note its daemon logs'
        problems, delete it."""
        cache = self.rig.workspace.fresh_dir(f"cache-{label}")
        try:
            yield cache
        finally:
            try:
                self.unmount()
            finally:
                self.note_log_problems(cache, label)
        self.rig.workspace.remove_dir(cache)

    @contextlib.contextmanager
    def mounted(self, cache: Path, label: str, *options: str) -> Iterator[None]:
        """Mount `cache` (which may have been mounted before); on exit unmount
        and note the problems its daemon logs gained meanwhile."""
        self.mount(cache, *options)
        try:
            yield
        finally:
            self.unmount()
        # Read far enough into a log that many mounts appended to.
        self.note_log_problems(cache, label, limit=1000)

    def note_log_problems(self, cache: Path, label: str, limit: int = 20) -> None:
        """The problem lines of `cache`'s daemon logs not noted before (every
        mount of a cache folder appends to the same log)."""
        problems = daemon_log_problems(cache, limit)
        for line in problems[self._problems_seen.get(cache, 0):]:
            self.record.note("daemon_log_problems", f"[{label}] {line}")
        self._problems_seen[cache] = len(problems)


def run_script(measure: Callable[[], tuple[str, dict[str, Any]]], json_path: Path | None,
               errors: tuple[type[Exception], ...] = ()) -> int:
    """A script's main after its options: `measure` (which cleans up after
    itself) returns the table and the raw numbers; the table is printed and
    the numbers written to `json_path`. A failure is one line on stderr."""
    known: tuple[type[Exception], ...] = (BenchError, NginxError, *errors)
    sigterm_as_interrupt()
    try:
        table, report = measure()
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except known as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    emit_report(table, report, json_path)
    return 0
