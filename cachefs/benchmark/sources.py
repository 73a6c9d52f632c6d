"""The stores bench/bench_clients.py reads from, and curl's reads of them.

One data set, served three ways on loopback:

- "http": nginx (`NginxStore`), JSON index for cachefs, HTML index for the
  peers (which do not parse the JSON one);
- "https": the same nginx on a second port with a certificate from a
  generated CA (`localstore.tls`); cachefs trusts it through SSL_CERT_FILE,
  curl and the peers through their own CA option;
- "s3": SeaweedFS (`localstore.seaweed.SeaweedStore`) with the files
  uploaded into one bucket; requests are signed with its one key.

A `Source` says how to reach one of them; `start_sources` starts what the
chosen ones need inside a `Rig`, which stops it at the end. `curl_mbps` is
the reference: curl writing the object to a file on the same disk.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cachefs.localstore.nginx import HTML_PREFIX, LOOPBACK, NginxStore
from cachefs.localstore.tls import make_server_cert

from .data import FileSet
from .rig import Rig
from .system import MB, BenchError, hash_whole

SOURCE_NAMES = ("http", "https", "s3")
BUCKET = "bench"
CURL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class S3Access:
    """Where a SeaweedFS bucket is and the key that signs for it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str


@dataclass(frozen=True)
class Source:
    """One way of reaching the data: what cachefs, the peers and curl are given."""

    name: str  # one of SOURCE_NAMES
    label: str
    cachefs_url: str
    cachefs_options: tuple[str, ...] = ()
    # Environment for `cachefs mount` (the daemon inherits it) and curl.
    env: dict[str, str] = field(default_factory=dict)
    index_url: str | None = None  # the HTML index (http and https)
    ca_file: Path | None = None  # https: the generated CA's certificate
    s3: S3Access | None = None
    root: Path = Path()  # the data on local disk, for native reads
    # Where the store keeps the data: read before cold passes so that the
    # store answers from memory and the figure is about the client.
    hot_dirs: tuple[Path, ...] = ()

    def object_url(self, key: str) -> str:
        if self.s3 is not None:
            return f"{self.s3.endpoint}/{self.s3.bucket}/{key}"
        assert self.index_url is not None
        return self.index_url + key

    def curl_args(self) -> list[str]:
        """curl's options to fetch `object_url` (trust, signature)."""
        if self.ca_file is not None:
            return ["--cacert", str(self.ca_file)]
        if self.s3 is not None:
            return ["--aws-sigv4", f"aws:amz:{self.s3.region}:s3",
                    "--user", f"{self.s3.access_key}:{self.s3.secret_key}"]
        return []


def _nginx_sources(rig: Rig, root: Path, names: list[str]) -> list[Source]:
    tls = make_server_cert(rig.workspace.fresh_dir("tls")) if "https" in names else None
    store = rig.serve(NginxStore(root, rig.workspace.fresh_dir("nginx"), tls=tls))
    found = []
    if "http" in names:
        found.append(Source("http", "HTTP (nginx)", store.url, index_url=store.html_url,
                            root=root, hot_dirs=(root,)))
    if tls is not None:
        # SSL_CERT_FILE replaces cachefs's CA list: the generated CA alone.
        found.append(Source("https", "HTTPS (nginx, generated CA)", store.https_url,
                            env={"SSL_CERT_FILE": str(tls.ca)},
                            index_url=f"https://{LOOPBACK}:{store.tls_port}{HTML_PREFIX}",
                            ca_file=tls.ca, root=root, hot_dirs=(root,)))
    return found


def _s3_source(rig: Rig, root: Path) -> Source:
    # Imported here: SeaweedFS is only needed when S3 is measured.
    from cachefs.localstore.seaweed import SeaweedStore

    store = rig.serve(SeaweedStore(rig.workspace.fresh_dir("seaweed")))
    store.create_bucket(BUCKET)
    store.upload_tree(BUCKET, "", root)
    access = S3Access(store.endpoint_url, BUCKET, store.access_key, store.secret_key,
                      store.region)
    return Source("s3", "S3 (SeaweedFS)", f"s3://{BUCKET}",
                  ("--endpoint-url", store.endpoint_url, "--force-path-style",
                   "--region", store.region),
                  env=store.env(), s3=access, root=root, hot_dirs=(store.data_dir,))


def start_sources(rig: Rig, root: Path, names: list[str]) -> list[Source]:
    """Serve the files under `root` the ways `names` ask, in the order of SOURCE_NAMES."""
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise BenchError(f"unknown source {unknown[0]!r}; known: {', '.join(SOURCE_NAMES)}")
    found: list[Source] = []
    if "http" in names or "https" in names:
        found += _nginx_sources(rig, root, names)
    if "s3" in names:
        found.append(_s3_source(rig, root))
    return found


def curl_files_per_s(source: Source, files: FileSet, work: Path, proxy: str | None = None) -> float:
    """One curl fetches every small file, in order, over the connections it
    keeps alive; files/s. Each answer must be a 200 of the file's size
    (their bytes are not kept): through a proxy, what the proxy allows."""
    sizes = [(source.root / key).stat().st_size for key in files.small]
    config = work / "curl-small.conf"
    config.write_text("".join(f'url = "{source.object_url(key)}"\noutput = "/dev/null"\n'
                              for key in files.small))
    argv = ["curl", "-sS", "--fail", "-w", "%{http_code} %{size_download}\n", *source.curl_args(),
            *(["--proxy", proxy] if proxy else ["--noproxy", "*"]), "--config", str(config)]
    try:
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=CURL_TIMEOUT_S, env=os.environ | source.env)
        seconds = time.monotonic() - started
    finally:
        config.unlink(missing_ok=True)
    answers = [line.split() for line in done.stdout.splitlines()]
    if done.returncode != 0 or len(answers) != len(files.small):
        raise BenchError(f"curl of {source.name}'s small files failed (rc {done.returncode}): "
                         f"{done.stderr.strip()[-300:]}")
    for key, size, (code, got) in zip(files.small, sizes, answers):
        if code != "200" or int(got) != size:
            raise BenchError(f"curl of {source.name}'s {key} got {code} with {got} bytes")
    return len(files.small) / seconds


def curl_mbps(source: Source, files: FileSet, out: Path, proxy: str | None = None) -> float:
    """curl fetches the big file into `out` (on the disk the caches use);
    MB/s by curl's own clock. The bytes are checked, then `out` is removed."""
    argv = ["curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download} %{time_total}",
            *source.curl_args()]
    argv += ["--proxy", proxy] if proxy else ["--noproxy", "*"]
    argv.append(source.object_url(files.big))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=CURL_TIMEOUT_S, env=os.environ | source.env)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 2:
            raise BenchError(f"curl of {source.name} failed (rc {done.returncode}): "
                             f"{done.stderr.strip() or done.stdout}")
        size, seconds = int(float(fields[0])), float(fields[1])
        if size != files.big_size or out.stat().st_size != files.big_size:
            raise BenchError(f"curl of {source.name} got {size} bytes, not {files.big_size}")
        if files.expected is not None and hash_whole(out)[1] != files.expected[files.big]:
            raise BenchError(f"curl of {source.name} got wrong bytes (sha256 differs)")
        return size / MB / seconds
    finally:
        out.unlink(missing_ok=True)
