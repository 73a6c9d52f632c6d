"""What a daemon imports (issue 17: mount until it answers).

The real `python -m cachefs.daemon`, fed its configuration through its pipe
as `cachefs mount` does, for an http source nobody answers (port 9 of the
loopback refuses): it loads, opens the remote and the cache, fails to list
the root and says so on its ready pipe, before any mount. `-X importtime`
tells which packages it loaded. botocore (S3 signing) and numpy or
matplotlib (the benchmark's chart) have no business in an http daemon, and
sqlite-utils is only needed to apply a migration, not to open a known cache.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlite_utils import Database

from cachefs import migrations
from cachefs.cache.db import CacheDB
from cachefs.cache.layout import DB_NAME, prepare_dir, source_folder
from cachefs.daemon.config import MountConfig
from cachefs.daemon.startup import StartupTimes

SOURCE = "http://127.0.0.1:9/data/"
NEVER_FOR_HTTP = {"botocore", "boto3", "numpy", "matplotlib"}
TIMEOUT_S = 60


def daemon_run(tmp_path: Path, payload: dict | None) -> tuple[str, set[str]]:
    """Run the daemon on `payload` (None: the command gave up): its ready
    line and the top-level packages it imported."""
    config_r, config_w = os.pipe()
    ready_r, ready_w = os.pipe()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir(exist_ok=True, mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-P", "-m", "cachefs.daemon",
         "--config-fd", str(config_r), "--ready-fd", str(ready_w)],
        pass_fds=(config_r, ready_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env)
    os.close(config_r)
    os.close(ready_w)
    with os.fdopen(config_w, "w") as f:
        if payload is not None:
            json.dump(payload, f)
    with os.fdopen(ready_r) as f:
        ready = f.read().strip()
    _out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == (0 if payload is None else 1), err[-2000:]
    imported = {line.split("|")[2].strip().split(".")[0]
                for line in err.splitlines() if line.startswith("import time:") and line.count("|") == 2}
    return ready, imported


def payload_for(tmp_path: Path) -> dict:
    config = MountConfig(SOURCE, str(tmp_path / "mnt"), tmp_path / "cache", startup_timeout=20.0)
    return {**config.to_dict(), "log_level": "info", "environ": {}, "started": None, "spawned": None}


def test_http_daemon_imports_no_botocore_numpy_matplotlib(tmp_path: Path) -> None:
    ready, imported = daemon_run(tmp_path, payload_for(tmp_path))
    assert ready.startswith("ERR cannot list"), ready
    assert {"trio", "httpx", "sqlite3"} <= imported  # it did get as far as the cache and the remote
    assert "sqlite_utils" in imported  # a new cache: the migrations ran
    assert imported & NEVER_FOR_HTTP == set()


def test_known_cache_opens_without_sqlite_utils(tmp_path: Path) -> None:
    folder = source_folder(tmp_path / "cache", SOURCE)
    prepare_dir(tmp_path / "cache")
    prepare_dir(folder)
    CacheDB(folder / DB_NAME).close()  # a cache some earlier mount made
    ready, imported = daemon_run(tmp_path, payload_for(tmp_path))
    assert ready.startswith("ERR cannot list"), ready
    assert "trio" in imported
    assert "sqlite_utils" not in imported
    assert imported & NEVER_FOR_HTTP == set()


def test_migrating_keeps_numpy_out(tmp_path: Path) -> None:
    """sqlite-utils would bring numpy (installed here, for the chart of
    `cachefs bench`) into any process that applies a migration."""
    code = ("import sqlite3, sys; from cachefs import migrations; "
            f"migrations.apply_pending(sqlite3.connect({str(tmp_path / 'state.db')!r})); "
            "assert 'sqlite_utils' in sys.modules; print('numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_daemon_the_command_gave_up_on_exits_quietly(tmp_path: Path) -> None:
    ready, _imported = daemon_run(tmp_path, None)
    assert ready == ""
    assert not (tmp_path / "cache").exists()


def test_steps_are_the_registered_migrations() -> None:
    conn = sqlite3.connect(":memory:")
    assert migrations.pending(conn)
    registered = [m.name for m in migrations.MIGRATIONS.pending(Database(conn))]
    assert registered == list(migrations.STEPS)
    migrations.MIGRATIONS.apply(Database(conn))
    assert not migrations.pending(conn)


def test_startup_line_names_each_step() -> None:
    times = StartupTimes(started=10.0)
    for step, at in (("command", 10.01), ("python", 10.05), ("imports", 10.2), ("config", 10.2),
                     ("remote", 10.23), ("cache", 10.24), ("listing", 10.25), ("mount", 10.26),
                     ("init", 10.27)):
        times.mark(step, at)
    line = times.line()
    assert line.startswith("startup: answered 0.270 s after the command started: command 0.010, python 0.040,")
    assert line.endswith("mount 0.010, init 0.010")
