"""S3 sources end to end, against moto's S3 server with signature checks on,
and the tests any S3 store must pass (those taking `server` or `s3_env`)
against SeaweedFS too, a real server (tests/e2e/test_seaweed.py has what
only a real server shows).

The core issue's byte-identical, persistence and SIGKILL tests run again
here with the tree uploaded to a bucket (under a prefix, next to keys that
must stay hidden), signed and anonymous. moto's request log stands in for
nginx's access log when counting GETs. Smaller tests cover the pieces that
need no mount: error mapping, retries, version pinning (addressing and XML,
which need no server either, are in tests/unit).
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trio

# pytest puts tests/ on sys.path, so helpers import directly.
from mounter import Mounter, Tree, is_mounted
from s3_fixtures import LOOPBACK, MotoS3, S3Server, SeaweedS3, isolated_aws_env
from test_cli_errors import assert_one_line_error
from test_http_remote import canned_server, reply
from test_lifecycle_tools import data_file, fsck, only_folder, problems, wait_complete
from test_mount import (
    BIG,
    KILL_POINTS,
    SUBPROCESS_TIMEOUT_S,
    cat_sha256,
    compare_listings,
    dd_cases,
    first_difference,
    kill_mid_read,
    listing,
    mismatches,
)

from cachefs.localstore.nginx import free_port
from cachefs.localstore.tree import CHUNK
from cachefs.remote import NotFound, RemoteError, S3Options, Unreachable, VersionChanged, open_remote
from cachefs.remote.record import RECORD_NAME
from cachefs.remote.s3.remote import RETRIES

TREE_BUCKET = "cachefs-tree"
TREE_PREFIX = "data/"
# Keys beside the prefix: a mount of s3://TREE_BUCKET/data must not show them.
OUTSIDE_KEYS = ("other/hidden.txt", "data-not-inside.txt", "datafile")
PRIVATE_BUCKET = "cachefs-private"
MANY_BUCKET = "cachefs-many"
MANY_PREFIX = "flat/"
MANY_KEYS = 5000
HOSTILE_BUCKET = "cachefs-hostile"
# Keys no file name can stand for; each must be skipped, with one warning.
HOSTILE_KEYS = (
    "a//double-slash.txt",
    "/leading-slash.txt",
    "./dot.txt",
    "../escape.txt",
    "dir/../up.txt",
    "dir/./here.txt",
    "n" * 256,
    "long/" + "m" * 300 + "/inside.txt",
    "nul\0byte.txt",
)
# What the listings show for them, each warned about once: the key or the
# prefix at which the bad component appears.
HOSTILE_WARNED_KEYS = (
    "a//", "/", "./", "../", "dir/../", "dir/./", "n" * 256,
    "long/" + "m" * 300 + "/", "nul\0byte.txt", "clash",
)
# Good keys in the same bucket: what the mount must show, and nothing else.
GOOD_HOSTILE_NEIGHBOURS = {
    "ok.txt": b"fine\n",
    "dir/inside.txt": b"inside\n",
    "n" * 255: b"just fits\n",
    "clash/inner.txt": b"the directory wins\n",
}
# An object that is also a directory prefix ("clash" vs "clash/inner.txt").
CLASH_KEY = "clash"
PROFILE = "cachefs-test"
# Lines a cold read of the big file may send: one GET per chunk, no more.
BIG_CHUNKS = -(-(256 * 1024 * 1024 + 12_345) // CHUNK)


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tree: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        _fill(server, tree)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["moto", "seaweed"])
def server(request: pytest.FixtureRequest, tree: Tree) -> S3Server:
    """Each test that takes it runs against moto and against SeaweedFS, a
    real S3 server. SeaweedFS's tree bucket holds SEAWEED_TREE_FILES only."""
    if request.param == "moto":
        return request.getfixturevalue("moto")
    server = SeaweedS3(request.getfixturevalue("seaweed"))
    for bucket in (TREE_BUCKET, PRIVATE_BUCKET):
        server.make_bucket(bucket)
    server.upload_tree(tree.root, TREE_BUCKET, TREE_PREFIX,
                       skip=frozenset(tree.files) - set(seaweed_tree_files(tree)))
    server.put_keys(TREE_BUCKET, list(OUTSIDE_KEYS), b"must not be seen\n")
    return server


def seaweed_tree_files(tree: Tree) -> list[str]:
    """The files of the tree a SeaweedFS bucket holds: all but the big one and
    the many small ones (its uploads and reads must stay a few seconds)."""
    return [rel for rel in tree.files if rel != BIG and not rel.startswith("small/")]


def held_files(tree: Tree, server: S3Server) -> list[str]:
    """The files of the tree under TREE_PREFIX in `server`'s bucket."""
    return tree.files if server.name == "moto" else seaweed_tree_files(tree)


def held_listing(tree: Tree, server: S3Server) -> dict[str, tuple[str, int | None, int]]:
    """listing() of the tree as the bucket holds it: its files, the directories
    above them, and the empty directories (uploaded as "dir/" markers)."""
    files = set(held_files(tree, server))
    above = {str(parent) for rel in files for parent in Path(rel).parents} - {"."}
    whole = listing(tree.root)
    return {path: entry for path, entry in whole.items()
            if path in files or path in above
            or (entry[0] == "d" and not any((tree.root / path).iterdir()))}


def _fill(server: MotoS3, tree: Tree) -> None:
    for bucket in (TREE_BUCKET, PRIVATE_BUCKET, MANY_BUCKET, HOSTILE_BUCKET):
        server.make_bucket(bucket)
    server.upload_tree(tree.root, TREE_BUCKET, TREE_PREFIX)
    server.put_keys(TREE_BUCKET, list(OUTSIDE_KEYS), b"must not be seen\n")
    server.make_public(TREE_BUCKET)
    server.put_keys(PRIVATE_BUCKET, ["secret.txt"], b"private\n")
    server.put_keys(MANY_BUCKET, [f"{MANY_PREFIX}k{i:05d}" for i in range(MANY_KEYS)])
    server.put_keys(MANY_BUCKET, ["outside.txt", "flatter/x"])
    server.put_keys(HOSTILE_BUCKET, list(HOSTILE_KEYS), b"hostile\n")
    for key, body in GOOD_HOSTILE_NEIGHBOURS.items():
        server.put_keys(HOSTILE_BUCKET, [key], body)
    server.put_keys(HOSTILE_BUCKET, [CLASH_KEY], b"hidden by the directory\n")


@pytest.fixture
def aws_env(moto: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """`cachefs mount` (our child) sees moto's key and no other AWS settings."""
    _set_env(monkeypatch, moto.env())
    return moto


@pytest.fixture
def s3_env(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Like aws_env, for the tests that run against both servers."""
    _set_env(monkeypatch, server.env())
    return server


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)


def tree_source() -> str:
    return f"s3://{TREE_BUCKET}/{TREE_PREFIX.rstrip('/')}"


def mount_s3(mount: Mounter, moto: S3Server, source: str, cache: Path | None = None,
             *extra: str) -> Path:
    return mount(source, cache, *moto.mount_args(*extra))


def data_gets(moto: MotoS3, mark: int, bucket: str = TREE_BUCKET) -> list[str]:
    """Object GETs (not listings) logged since `mark`, as bucket-relative keys."""
    return [r.key for r in moto.requests_since(mark)
            if r.method == "GET" and r.bucket == bucket and r.key]


# -- reading bytes, signed -------------------------------------------------------


def test_cat_reads_every_file(tree: Tree, aws_env: MotoS3, mount: Mounter) -> None:
    mp = mount_s3(mount, aws_env, tree_source())
    mark = aws_env.log_mark()
    for rel in (BIG, "sizes/0.bin", f"sizes/{CHUNK}.bin", f"sizes/{CHUNK + 1}.bin"):
        assert cat_sha256(mp / rel) == tree.hashes[rel], rel
    assert mismatches(mp, tree) == []
    gets = data_gets(aws_env, mark)
    big_gets = sum(key == TREE_PREFIX + BIG for key in gets)
    # Every chunk once: no refetch of cached bytes, no ranges fetched twice.
    assert big_gets == BIG_CHUNKS, f"{big_gets} GETs for {BIG}, {BIG_CHUNKS} chunks"


def test_every_held_file_reads_back(tree: Tree, s3_env: S3Server, mount: Mounter) -> None:
    """Every name of the tree (spaces, '%', '+', '#', '?', unicode...) signed
    and read back from a server that checks each signature against its own
    reading of the path."""
    if s3_env.name == "moto":
        pytest.skip("test_cat_reads_every_file reads all of moto's tree")
    mp = mount_s3(mount, s3_env, tree_source())
    files = held_files(tree, s3_env)
    assert any("%" in rel for rel in files) and any("+" in rel for rel in files)
    assert mismatches(mp, tree, files) == []


def test_dd_at_odd_offsets(tree: Tree, s3_env: S3Server, mount: Mounter) -> None:
    mp = mount_s3(mount, s3_env, tree_source())
    problems = []
    held = set(held_files(tree, s3_env))
    cases = [case for case in dd_cases(tree) if case[0] in held]
    assert len({rel for rel, *_ in cases}) >= 8
    for rel, offset, bs, count in cases:
        out = subprocess.run(
            ["dd", f"if={mp / rel}", "of=/dev/stdout", f"bs={bs}", f"skip={offset}",
             f"count={count}", "iflag=skip_bytes,count_bytes", "status=none"],
            capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
        )
        want = tree.read(rel, offset, count)
        if out.returncode != 0:
            problems.append(f"{rel}@{offset}: dd exited {out.returncode}: {out.stderr!r}")
        elif out.stdout != want:
            problems.append(f"{rel}@{offset} bs={bs}: {first_difference(out.stdout, want)}")
    assert problems == []


def test_concurrent_readers(tree: Tree, aws_env: MotoS3, mount: Mounter) -> None:
    mp = mount_s3(mount, aws_env, tree_source())
    small = [rel for rel in tree.files if rel != BIG]
    jobs = [lambda: mismatches(mp, tree, [BIG]), lambda: mismatches(mp, tree, [BIG])]
    jobs += [lambda g=small[i::4]: mismatches(mp, tree, g) for i in range(4)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = [f.result() for f in [pool.submit(job) for job in jobs]]
    assert [p for problems in results for p in problems] == []


def test_names_and_sizes(tree: Tree, s3_env: S3Server, mount: Mounter) -> None:
    started = time.time()
    mp = mount_s3(mount, s3_env, tree_source())
    got, want = listing(mp), held_listing(tree, s3_env)
    assert {p for p, (kind, _, _) in want.items() if kind == "f"} == set(held_files(tree, s3_env))
    # S3 keeps upload times, not the source's: names, kinds and sizes only.
    assert compare_listings(got, want, same_mtime=lambda a, b: True) == []
    uploads = [m for kind, _, m in got.values() if kind == "f"]
    assert all(0 < m <= started + 1 for m in uploads), "file mtimes are not upload times"


def test_remount_reads_from_cache_without_data_get(
    tree: Tree, aws_env: MotoS3, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = mount_s3(mount, aws_env, tree_source(), cache)
    assert mismatches(first, tree) == []
    mount.umount(first)

    mark = aws_env.log_mark()
    second = mount_s3(mount, aws_env, tree_source(), cache)
    assert mismatches(second, tree) == []
    assert listing(second).keys() == listing(tree.root).keys()
    gets = data_gets(aws_env, mark)
    assert gets == [], f"{len(gets)} data GETs after remount: {gets[:5]}"


def test_sigkill_mid_read_then_remount(
    tree: Tree, aws_env: MotoS3, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    size = tree.size(BIG)
    for kill_after in KILL_POINTS:
        mp = mount_s3(mount, aws_env, tree_source(), cache)
        mark = aws_env.log_mark()
        killed_at = kill_mid_read(mount, mp, size, kill_after)
        started = sum(key == TREE_PREFIX + BIG for key in data_gets(aws_env, mark))
        assert started < BIG_CHUNKS, (
            f"killed at reader offset {killed_at}, the daemon had already asked for "
            f"all {BIG_CHUNKS} chunks: no fetch was interrupted"
        )
        mount.cleanup(mp)
        assert not mount.is_mounted(mp)
    again = mount_s3(mount, aws_env, tree_source(), cache)
    assert mismatches(again, tree) == []


def test_prefix_hides_the_rest_of_the_bucket(s3_env: S3Server, mount: Mounter) -> None:
    mp = mount_s3(mount, s3_env, tree_source())
    names = set(os.listdir(mp))
    assert not names & {"other", "data-not-inside.txt", "datafile", "data"}, names


def test_profile_from_shared_credentials_file(
    tree: Tree, server: S3Server, mount: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.key is not None
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = {server.key.key_id}\n"
        f"aws_secret_access_key = {server.key.secret}\n"
    )
    env = isolated_aws_env()
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
    _set_env(monkeypatch, env)
    mp = mount_s3(mount, server, tree_source(), None, "--profile", PROFILE)
    rel = "sizes/4097.bin"
    assert tree.sha256_of(mp / rel) == tree.hashes[rel]


# -- anonymous -------------------------------------------------------------------


def test_anonymous_reads_a_public_bucket(
    tree: Tree, moto: MotoS3, mount: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_env(monkeypatch, isolated_aws_env())  # no credentials at all
    with moto.signature_checks_off():
        mp = mount_s3(mount, moto, tree_source(), None, "--no-sign-request")
        assert compare_listings(listing(mp), listing(tree.root), lambda a, b: True) == []
        assert mismatches(mp, tree) == []
        # The private bucket lists (moto does not guard listings of unsigned
        # requests) but refuses its object: the requests really are unsigned.
        private = mount_s3(mount, moto, f"s3://{PRIVATE_BUCKET}", None, "--no-sign-request")
        with pytest.raises(OSError) as refused:
            (private / "secret.txt").read_bytes()
        assert refused.value.errno == errno.EACCES


# -- listings ----------------------------------------------------------------------


def test_five_thousand_keys_through_the_remote(aws_env: MotoS3) -> None:
    """Continuation tokens: moto pages by 1000 keys, so this takes five pages."""

    async def main() -> list[str]:
        remote = open_remote(f"s3://{MANY_BUCKET}/{MANY_PREFIX}",
                             S3Options(endpoint_url=aws_env.url))
        try:
            return [e.name for e in await remote.list_dir("") if not e.is_dir]
        finally:
            await remote.aclose()

    names = trio.run(main)
    assert len(names) == MANY_KEYS and set(names) == {f"k{i:05d}" for i in range(MANY_KEYS)}


# Kernels that take 1 MiB READDIR buffers (6.18 here) ask for more entries
# than writev's IOV_MAX (1024) parts in one reply: this also guards the
# kernel session against sending each dirent as its own part.
def test_five_thousand_keys_list_completely(aws_env: MotoS3, mount: Mounter) -> None:
    mp = mount_s3(mount, aws_env, f"s3://{MANY_BUCKET}/{MANY_PREFIX}")
    want = {f"k{i:05d}" for i in range(MANY_KEYS)}
    names = os.listdir(mp)
    assert len(names) == MANY_KEYS and set(names) == want
    ls = subprocess.run(["ls", "-1", str(mp)], capture_output=True, text=True, check=True)
    assert len(ls.stdout.splitlines()) == MANY_KEYS
    assert os.stat(mp / "k04999").st_size == 0


def test_hostile_keys_are_skipped(aws_env: MotoS3, mount: Mounter, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mp = mount_s3(mount, aws_env, f"s3://{HOSTILE_BUCKET}", cache)
    seen = {str(Path(d, f).relative_to(mp)) for d, _, files in os.walk(mp) for f in files}
    assert seen == set(GOOD_HOSTILE_NEIGHBOURS)
    for key, body in GOOD_HOSTILE_NEIGHBOURS.items():
        assert (mp / key).read_bytes() == body
    # "a//x" makes "a" a directory whose only child has an empty name; the
    # same for "long/" and its over-long component.
    assert sorted(os.listdir(mp)) == sorted(["ok.txt", "dir", "n" * 255, "clash", "a", "long"])
    assert (mp / CLASH_KEY).is_dir()
    for name in os.listdir(mp):
        if (mp / name).is_dir():
            os.listdir(mp / name)  # a second look must not warn again
    log = "\n".join(p.read_text() for p in cache.rglob("daemon.log"))
    warned = [ast.literal_eval(line.split("skipping key ", 1)[1].rsplit(": ", 1)[0])
              for line in log.splitlines() if "skipping key " in line]
    assert sorted(warned) == sorted(HOSTILE_WARNED_KEYS)


# -- failures: one line, non-zero exit -------------------------------------------


def fail_to_mount(mount: Mounter, moto: S3Server, source: str, culprit: str, *extra: str) -> None:
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(source, mountpoint, mount.base / "cache-fail",
                             *moto.mount_args(*extra))
    assert_one_line_error(result, culprit)
    assert not is_mounted(mountpoint), "a failed mount left something mounted"


def test_wrong_secret_key(server: S3Server, mount: Mounter, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, server.env(secret="not-the-secret"))
    fail_to_mount(mount, server, tree_source(),
                  f"wrong credentials for s3://{TREE_BUCKET}/{TREE_PREFIX} (SignatureDoesNotMatch)")


def test_unknown_access_key(server: S3Server, mount: Mounter, monkeypatch: pytest.MonkeyPatch) -> None:
    env = server.env()
    env["AWS_ACCESS_KEY_ID"] = "AKIAUNKNOWNUNKNOWN00"
    _set_env(monkeypatch, env)
    fail_to_mount(mount, server, tree_source(), "(InvalidAccessKeyId)")


def test_access_denied(moto: MotoS3, mount: Mounter, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, moto.env(moto.powerless_key))
    fail_to_mount(mount, moto, tree_source(), f"access denied to s3://{TREE_BUCKET}/")


def test_no_such_bucket(s3_env: S3Server, mount: Mounter) -> None:
    fail_to_mount(mount, s3_env, "s3://no-such-bucket", "bucket 'no-such-bucket' does not exist")


def test_no_credentials(moto: MotoS3, mount: Mounter, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, isolated_aws_env())
    fail_to_mount(mount, moto, tree_source(), "no AWS credentials found")


def test_unknown_profile(aws_env: MotoS3, mount: Mounter) -> None:
    fail_to_mount(mount, aws_env, tree_source(), "'no-such-profile'", "--profile", "no-such-profile")


def test_endpoint_unreachable(aws_env: MotoS3, mount: Mounter) -> None:
    port = free_port()  # nothing listens there
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(tree_source(), mountpoint, mount.base / "cache-fail",
                             "--endpoint-url", f"http://{LOOPBACK}:{port}")
    assert_one_line_error(result, str(port))


def test_secrets_stay_out_of_logs_mounts_and_cache(
    tree: Tree, s3_env: S3Server, mount: Mounter, tmp_path: Path
) -> None:
    assert s3_env.key is not None
    secret = s3_env.key.secret.encode()
    cache = tmp_path / "cache"
    mp = mount_s3(mount, s3_env, tree_source(), cache, "--log-level", "debug")
    assert mismatches(mp, tree, ["sizes/4097.bin", "names/café.txt"]) == []
    pid = mount.daemon_pid(mp)
    places = {
        "/proc/self/mountinfo": Path("/proc/self/mountinfo").read_bytes(),
        "daemon cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
    }
    mount.umount(mp)
    for path in cache.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    assert any(name.endswith("daemon.log") for name in places), "no daemon log found"
    assert [name for name, data in places.items() if secret in data] == []


def test_verify_remote_opens_the_bucket_as_the_mount_did(
    tree: Tree, s3_env: S3Server, mount: Mounter, tmp_path: Path
) -> None:
    """`fsck --verify-remote` of a cache of an S3-compatible service (moto
    or SeaweedFS here, MinIO say): the endpoint and the other S3 options are
    the mount's."""
    cache = tmp_path / "cache"
    mp = mount_s3(mount, s3_env, tree_source(), cache)
    rels = ["sizes/4097.bin", f"sizes/{CHUNK + 1}.bin"]
    assert mismatches(mp, tree, rels) == []
    wait_complete(mp, rels)
    mount.umount(mp)
    code, reports = fsck(cache, "--verify-remote")
    assert code == 0 and reports[0]["state"] == "clean", reports
    assert reports[0]["chunks_verified"] == 3 and reports[0]["warnings"] == []
    # Without the mount's record (a cache made before it was kept), the
    # bucket is not compared at all, rather than with the wrong store.
    record = only_folder(cache) / RECORD_NAME
    kept = record.read_bytes()
    record.unlink()
    code, reports = fsck(cache, "--verify-remote")
    assert code == 2 and reports[0]["problems"] == [], reports
    assert "options of its mount" in reports[0]["warnings"][0], reports
    record.write_bytes(kept)
    # The comparison is with the bucket's bytes: a changed byte is found.
    damaged = data_file(only_folder(cache), rels[1])
    with open(damaged, "r+b") as f:
        f.seek(CHUNK)
        byte = f.read(1)
        f.seek(CHUNK)
        f.write(b"\xff" if byte != b"\xff" else b"\0")
    code, reports = fsck(cache, "--verify-remote")
    assert code == 1 and problems(reports) == {("corrupt", rels[1])}, reports


# -- pieces without a mount ------------------------------------------------------


def test_slowdown_is_retried_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, isolated_aws_env())
    listing_xml = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"
    slow_down = b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
    calls = {"flaky": 0}

    def respond(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        assert "authorization" not in headers  # --no-sign-request
        if "/flaky/" in line:
            calls["flaky"] += 1
            if calls["flaky"] < RETRIES.attempts:
                return reply("503 Slow Down", {}, slow_down), True
            return reply("200 OK", {}, listing_xml), True
        return reply("503 Slow Down", {}, slow_down), True

    async def main() -> None:
        async with canned_server(respond) as (url, seen):
            options = S3Options(endpoint_url=url, no_sign_request=True)
            flaky = open_remote("s3://flaky", options)
            down = open_remote("s3://down", options)
            try:
                assert await flaky.list_dir("") == []
                with pytest.raises(Unreachable):
                    await down.list_dir("")
                assert sum("/down/" in line for line in seen) == RETRIES.attempts
            finally:
                await flaky.aclose()
                await down.aclose()

    trio.run(main)


def test_wrong_region_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, isolated_aws_env())
    moved = b"<Error><Code>PermanentRedirect</Code><Message>Use the right endpoint</Message></Error>"

    def respond(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        return reply("301 Moved Permanently", {"x-amz-bucket-region": "eu-west-1"}, moved), True

    async def main() -> None:
        async with canned_server(respond) as (url, _):
            remote = open_remote("s3://elsewhere", S3Options(endpoint_url=url, no_sign_request=True))
            try:
                with pytest.raises(RemoteError) as caught:
                    await remote.list_dir("")
                assert caught.value.summary == (
                    "bucket 'elsewhere' is in another region; use --region eu-west-1"
                )
            finally:
                await remote.aclose()

    trio.run(main)


def test_rewritten_object_is_never_mixed(s3_env: S3Server) -> None:
    client = s3_env.client()
    client.put_object(Bucket=PRIVATE_BUCKET, Key="changing.bin", Body=b"first version")

    async def main() -> None:
        remote = open_remote(f"s3://{PRIVATE_BUCKET}", S3Options(endpoint_url=s3_env.url))
        try:
            entry = await remote.stat("changing.bin")
            listed = {e.name: e for e in await remote.list_dir("")}["changing.bin"]
            assert listed.version == entry.version and listed.size == entry.size
            async with remote.read_range("changing.bin", 0, 5, entry.version) as body:
                assert b"".join([c async for c in body]) == b"first"
            client.put_object(Bucket=PRIVATE_BUCKET, Key="changing.bin", Body=b"second version")
            with pytest.raises(VersionChanged):
                async with remote.read_range("changing.bin", 0, 5, entry.version) as body:
                    [c async for c in body]
            with pytest.raises(NotFound):
                await remote.stat("no/such/key")
            assert (await remote.stat("")).is_dir
        finally:
            await remote.aclose()

    trio.run(main)


def test_moto_checks_signatures(moto: MotoS3) -> None:
    """The premise of the signed tests: moto refuses a badly signed request."""
    assert moto.key is not None
    bad = moto.client(type(moto.key)(moto.key.key_id, "wrong-secret"))
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        bad.list_objects_v2(Bucket=TREE_BUCKET)
    unsigned = httpx.get(f"{moto.url}/{PRIVATE_BUCKET}/secret.txt")
    assert unsigned.status_code != httpx.codes.OK
