"""How bench_clients.py's peers are launched on each source, and /proc parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachefs.benchmark import peers as peers_module
from cachefs.benchmark.peers import CHUNK_STREAMS, PEERS
from cachefs.benchmark.proctree import CLOCK_TICKS, descendants, parse_hwm_mib, parse_stat
from cachefs.benchmark.sources import S3Access, Source

HTTPS = Source("https", "HTTPS", "https://127.0.0.1:2/data/", env={"SSL_CERT_FILE": "/ca.pem"},
               index_url="https://127.0.0.1:2/html/", ca_file=Path("/ca.pem"))
S3 = Source("s3", "S3", "s3://bench", ("--endpoint-url", "http://127.0.0.1:3"),
            s3=S3Access("http://127.0.0.1:3", "bench", "AKEY", "SECRET", "us-east-1"))


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "find_binary", lambda name: f"/bin/{name}")


def test_rclone_trusts_the_generated_ca_and_streams_only_in_its_variant(tmp_path: Path) -> None:
    plain = PEERS["rclone"].launch(HTTPS, tmp_path / "mnt", tmp_path / "cache", tmp_path)
    streams = PEERS["rclone-streams"].launch(HTTPS, tmp_path / "mnt", tmp_path / "cache", tmp_path)
    for launch in (plain, streams):
        argv = launch.argv
        assert argv[:3] == ["/bin/rclone", "mount", ":http:"]
        assert argv[argv.index("--ca-cert") + 1] == "/ca.pem"
        assert argv[argv.index("--http-url") + 1] == "https://127.0.0.1:2/html/"
        assert argv[argv.index("--vfs-cache-mode") + 1] == "full"
    assert CHUNK_STREAMS[0] not in plain.argv
    assert " ".join(CHUNK_STREAMS) in " ".join(streams.argv)


def test_s3_keys_go_through_the_environment_or_a_private_file(tmp_path: Path) -> None:
    rclone = PEERS["rclone"].launch(S3, tmp_path / "mnt", tmp_path / "cache", tmp_path)
    assert "SECRET" not in " ".join(rclone.argv)
    assert rclone.env["RCLONE_S3_SECRET_ACCESS_KEY"] == "SECRET"
    assert ":s3:bench" in rclone.argv
    s3fs = PEERS["s3fs"].launch(S3, tmp_path / "mnt", tmp_path / "cache", tmp_path)
    assert "SECRET" not in " ".join(s3fs.argv)
    passwd = tmp_path / "s3fs.passwd"
    assert passwd.read_text() == "AKEY:SECRET\n" and passwd.stat().st_mode & 0o077 == 0
    options = s3fs.argv[s3fs.argv.index("-o") + 1].split(",")
    assert "url=http://127.0.0.1:3" in options and f"use_cache={tmp_path / 'cache'}" in options


def test_httpdirfs_gets_the_ca_and_a_doubled_trailing_slash(tmp_path: Path) -> None:
    argv = PEERS["httpdirfs"].launch(HTTPS, tmp_path / "mnt", tmp_path / "cache", tmp_path).argv
    assert argv[argv.index("--cacert") + 1] == "/ca.pem"
    assert argv[-2:] == ["https://127.0.0.1:2/html//", str(tmp_path / "mnt")]
    assert "s3" not in PEERS["httpdirfs"].sources and PEERS["s3fs"].sources == {"s3"}


def test_curl_is_told_the_ca_or_signs_for_s3() -> None:
    assert HTTPS.curl_args() == ["--cacert", "/ca.pem"]
    assert S3.curl_args() == ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "AKEY:SECRET"]
    assert S3.object_url("big.bin") == "http://127.0.0.1:3/bench/big.bin"
    assert HTTPS.object_url("small/d00/f00000.bin") == "https://127.0.0.1:2/html/small/d00/f00000.bin"


def test_proc_stat_and_status_are_parsed_whatever_the_command_name() -> None:
    # A name with spaces and parentheses; utime 150 and stime 50 ticks.
    stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 150 50 0 0 20 0 1 0 5 1 1"
    ppid, cpu = parse_stat(stat)
    assert ppid == 7 and cpu == pytest.approx(200 / CLOCK_TICKS)
    assert parse_hwm_mib("Name:\tx\nVmHWM:\t   71680 kB\nVmRSS:\t 1 kB\n") == 70.0
    assert parse_hwm_mib("Name:\tkthreadd\n") == 0.0


def test_descendants_walk_the_whole_tree_below_a_pid() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1}
    assert sorted(descendants(10, parents)) == [10, 11, 12, 13]
    assert descendants(99, parents) == [99]
