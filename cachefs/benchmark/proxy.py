"""tinyproxy on a free loopback port, for the through-a-proxy figures.

bench/bench_clients.py measures cachefs with `--proxy` against the same
reads without it; tinyproxy (Debian's `tinyproxy`, installed by `./dev
peers`) is a small forwarding proxy, so most of the difference is the
client's own. It runs in the foreground as our child, every file it writes
inside `workdir`, and is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cachefs.localstore.nginx import LOOPBACK, free_port
from cachefs.localstore.process import stop_child

from .system import BenchError

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def find_tinyproxy() -> str | None:
    return shutil.which("tinyproxy") or next(
        (p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy") if os.access(p, os.X_OK)), None)


class TinyProxy:
    """A tinyproxy that forwards for loopback clients only; `url` once started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> str:
        # Without User/Group a root tinyproxy keeps running as root (our own
        # child, loopback only); its log goes to a file of ours. No
        # ConnectPort line: CONNECT is allowed to any port (HTTPS stores).
        return "\n".join([
            f"Port {self.port}", f"Listen {LOOPBACK}", "Timeout 600",
            f'LogFile "{self.workdir / "tinyproxy.log"}"', "LogLevel Warning",
            f'PidFile "{self.workdir / "tinyproxy.pid"}"',
            "MaxClients 100", f"Allow {LOOPBACK}", "DisableViaHeader Yes", "",
        ])

    def start(self) -> TinyProxy:
        binary = find_tinyproxy()
        if binary is None:
            raise BenchError("tinyproxy is not installed (./dev peers)")
        self.port = free_port()
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(self.config())
        with open(self.workdir / "tinyproxy.out", "ab") as out:
            self.proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        tail = (self.workdir / "tinyproxy.out").read_text("utf-8", "replace").strip()[-500:]
        self.stop()
        raise BenchError(f"tinyproxy did not start: {tail or 'no output'}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc, STOP_TIMEOUT_S)
