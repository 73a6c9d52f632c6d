"""S3 servers for the S3 tests: moto, started once, signature checks on, and
SeaweedFS (a real store) behind the same `S3Server` interface.

moto checks SigV4 signatures (and IAM policies) once it has served
INITIAL_NO_AUTH_ACTION_COUNT requests; those first requests create the IAM
users and access keys the tests sign with. From then on a request signed
with a wrong secret is refused, as AWS would. Anonymous requests cannot be
checked that way (moto's checker needs an Authorization header), so the
anonymous tests switch checking off for their duration through moto's
/moto-api/reset-auth; moto then still enforces bucket policies and ACLs on
unsigned object reads.

Every request moto serves is logged to its stderr, which goes to a file we
parse to count GETs. moto is our child process and is stopped by its pid.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import boto3
import httpx
from botocore.config import Config

from cachefs.localstore.nginx import free_port
from cachefs.localstore.process import stop_child
from cachefs.localstore.seaweed import SeaweedStore

LOOPBACK = "127.0.0.1"
# The bucket of the session's SeaweedFS server anyone may read unsigned.
SEAWEED_PUBLIC_BUCKET = "cachefs-seaweed-public"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
# Parallel uploads: moto's server is threaded, and PUTs are mostly latency.
UPLOAD_THREADS = 16
# The IAM calls made before signature checking starts (see MotoS3.start).
SETUP_ACTIONS = 5
AUTH_OFF = "inf"
AUTH_ON = "0"

# werkzeug's request log line; colour codes are stripped first.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')

ALLOW_ALL_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    secret: str


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    bucket: str
    key: str  # '' for bucket-level requests such as listings
    query: str
    status: int


class S3Server:
    """What the S3 tests need of a server, whichever it is: a signed client,
    the environment and options of `cachefs mount`, and buckets to fill."""

    # "moto" or "seaweed": test ids and server-specific expectations.
    name = ""
    # Whether requests_since() can tell which requests the server served.
    logs_requests = False

    def __init__(self, url: str, key: AccessKey | None) -> None:
        self.url = url
        self.key = key

    def client(self, key: AccessKey | None = None):  # -> botocore S3 client
        key = key or self.key
        assert key is not None
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=key.key_id, aws_secret_access_key=key.secret,
            config=Config(s3={"addressing_style": "path"}),
        )

    def env(self, key: AccessKey | None = None, *, secret: str | None = None) -> dict[str, str]:
        """Environment for `cachefs mount`: only these credentials, no AWS files."""
        key = key or self.key
        assert key is not None
        env = isolated_aws_env()
        env["AWS_ACCESS_KEY_ID"] = key.key_id
        env["AWS_SECRET_ACCESS_KEY"] = secret if secret is not None else key.secret
        return env

    def mount_args(self, *extra: str) -> list[str]:
        return ["--endpoint-url", self.url, *extra]

    def make_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def upload_tree(self, root: Path, bucket: str, prefix: str = "",
                    skip: frozenset[str] = frozenset()) -> None:
        """Every file under `root` as a key, but those whose relative path is
        in `skip`; empty directories as "dir/" markers."""
        client = self.client()
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and str(p.relative_to(root)) not in skip)
        empty_dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir()))

        def upload(path: Path) -> None:
            key = prefix + str(path.relative_to(root))
            # upload_file goes multipart past 8 MiB: those ETags are not MD5s.
            client.upload_file(str(path), bucket, key, ExtraArgs={
                "ContentType": mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            })

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(upload, files))
        for path in empty_dirs:
            client.put_object(Bucket=bucket, Key=prefix + str(path.relative_to(root)) + "/")

    def put_keys(self, bucket: str, keys: list[str], body: bytes = b"") -> None:
        client = self.client()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=body), keys))

    def requests_since(self, mark: int) -> list[LoggedRequest]:
        raise NotImplementedError(f"{self.name} keeps no request log")


class SeaweedS3(S3Server):
    """The session's SeaweedFS server (cachefs.localstore.seaweed) as an S3Server."""

    name = "seaweed"

    def __init__(self, store: SeaweedStore) -> None:
        super().__init__(store.endpoint_url, AccessKey(store.access_key, store.secret_key))
        self.store = store


class MotoS3(S3Server):
    """A moto server on a free loopback port, with two IAM users' keys."""

    name = "moto"
    logs_requests = True

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        # An access key allowed everything in S3 (set by start()).
        super().__init__(f"http://{LOOPBACK}:{self.port}", None)
        self.log_path = workdir / "moto.log"
        self._process: subprocess.Popen[bytes] | None = None
        # And one allowed nothing.
        self.powerless_key: AccessKey | None = None

    def start(self) -> None:
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS))
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        self._wait_ready()
        iam = boto3.client(
            "iam", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )
        # Exactly SETUP_ACTIONS calls: after them every request must be signed.
        iam.create_user(UserName="reader")
        iam.put_user_policy(
            UserName="reader", PolicyName="s3-all", PolicyDocument=json.dumps(ALLOW_ALL_S3)
        )
        self.key = _key_of(iam.create_access_key(UserName="reader"))
        iam.create_user(UserName="powerless")
        self.powerless_key = _key_of(iam.create_access_key(UserName="powerless"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"moto exited:\n{self.log_path.read_text(errors='replace')}")
            try:
                # moto's own API does not count as an S3 or IAM action.
                httpx.get(f"{self.url}/moto-api/data.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(POLL_S)
        raise RuntimeError(f"moto did not answer on {self.url} within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_child(process, STOP_TIMEOUT_S)

    # -- moto only ------------------------------------------------------------

    @contextmanager
    def signature_checks_off(self) -> Iterator[None]:
        """For unsigned requests, which moto's checker cannot handle."""
        self._reset_auth(AUTH_OFF)
        try:
            yield
        finally:
            self._reset_auth(AUTH_ON)

    def _reset_auth(self, count: str) -> None:
        response = httpx.post(f"{self.url}/moto-api/reset-auth", content=count.encode())
        response.raise_for_status()

    # -- the request log -------------------------------------------------------

    def log_mark(self) -> int:
        """A position in the request log; see `requests_since`."""
        return self.log_path.stat().st_size

    def requests_since(self, mark: int) -> list[LoggedRequest]:
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = _ANSI.sub("", f.read().decode("utf-8", "replace"))
        found = []
        for match in _REQUEST_LINE.finditer(text):
            path, _, query = match["target"].partition("?")
            bucket, _, key = path.lstrip("/").partition("/")
            found.append(LoggedRequest(
                match["method"], unquote(bucket), unquote(key), query, int(match["status"])
            ))
        return found

    def make_public(self, bucket: str) -> None:
        """Let anyone list the bucket and read its objects."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow", "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def isolated_aws_env() -> dict[str, str]:
    """os.environ without any AWS settings, and no AWS files or metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    # The chain's last resort is the instance metadata service: never leave loopback.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _key_of(answer: dict) -> AccessKey:
    key = answer["AccessKey"]
    return AccessKey(key["AccessKeyId"], key["SecretAccessKey"])
