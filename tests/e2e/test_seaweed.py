"""S3 sources against SeaweedFS, a real S3 server (cachefs.localstore.seaweed).

moto (tests/e2e/test_s3.py) answers from Python; SeaweedFS shows what only a
real store does: ranged GETs answered 206, ETags that are MD5s, multipart
objects whose ETag ends in "-<parts>" and whose part sizes do not line up
with cachefs's chunks, and objects replaced or deleted while mounted. One
server serves the whole session (the `seaweed` fixture); the objects here
are a few tens of MiB, made from a seed, and compared byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mounter import Mounter, is_mounted
from s3_fixtures import SEAWEED_PUBLIC_BUCKET, SeaweedS3, isolated_aws_env
from test_cli_errors import assert_one_line_error
from test_lifecycle_tools import fsck, problems

from cachefs.localstore.seaweed import SeaweedStore
from cachefs.localstore.tree import CHUNK
from cachefs.remote import S3Options, open_remote

MiB = 1024 * 1024
# S3's smallest part but the last.
PART = 5 * MiB
SMOKE_BUCKET = "cachefs-seaweed-smoke"
BUCKET = "cachefs-seaweed"
PAGES_BUCKET = "cachefs-seaweed-pages"
# Past one of SeaweedFS's 1000-key pages (each PUT costs a few ms).
PAGED_KEYS = 1500
# Objects of the bucket the tests only read, and how each was uploaded: its
# part sizes (one part: a plain PUT). Neither kind of boundary lines up with
# the other: parts end at 5, 10, 15, 20 MiB, chunks at 8 and 16 MiB.
LAYOUTS: dict[str, tuple[int, ...]] = {
    "multi/five-parts.bin": (PART, PART, PART, PART, 3 * MiB + 12_345),
    "multi/uneven.bin": (PART + 4097, 6 * MiB - 3, 777),
    "plain/chunk-plus-one.bin": (CHUNK + 1,),
}
# Read lengths tried at each boundary: a byte on each side, a page and a bit,
# and more than a MiB (the daemon pushes 1 MiB windows into the page cache).
SPANS = (2, 4096 + 7, MiB + 5)
# A read of bytes not cached, of an object deleted since its open: the
# remote's 404, or EIO.
GONE = (errno.ENOENT, errno.EIO)


@dataclass(frozen=True)
class Uploaded:
    data: bytes
    parts: tuple[int, ...]

    @property
    def part_ends(self) -> list[int]:
        ends, total = [], 0
        for size in self.parts[:-1]:
            total += size
            ends.append(total)
        return ends


def seeded_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def put_in_parts(server: SeaweedS3, bucket: str, key: str, data: bytes,
                 parts: tuple[int, ...]) -> None:
    """`data` as one object of exactly these parts (one part: a plain PUT)."""
    assert sum(parts) == len(data)
    client = server.client()
    if len(parts) == 1:
        client.put_object(Bucket=bucket, Key=key, Body=data)
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done, offset = [], 0
    for number, size in enumerate(parts, start=1):
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                    Body=data[offset:offset + size])
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
        offset += size
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": done})


@pytest.fixture(scope="module")
def server(seaweed: SeaweedStore) -> SeaweedS3:
    return SeaweedS3(seaweed)


@pytest.fixture(scope="module")
def objects(server: SeaweedS3) -> dict[str, Uploaded]:
    server.make_bucket(BUCKET)
    made = {}
    for key, parts in LAYOUTS.items():
        made[key] = Uploaded(seeded_bytes(key, sum(parts)), parts)
        put_in_parts(server, BUCKET, key, made[key].data, parts)
    return made


@pytest.fixture
def s3_env(server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """`cachefs mount` (our child) signs as the server's user, with no other AWS settings."""
    set_aws_env(monkeypatch, server.env())
    return server


def set_aws_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)


def boundary_reads(item: Uploaded) -> list[tuple[int, int]]:
    """(offset, length) of reads that cross each part and chunk boundary,
    each a few bytes before it, and the object's end."""
    size = len(item.data)
    edges = set(item.part_ends) | set(range(CHUNK, size, CHUNK)) | {size}
    reads = []
    for edge in sorted(edges):
        for span in SPANS:
            reads.append((max(edge - 3, 0), span))
    return reads


# -- the server itself ----------------------------------------------------------


def test_server_stores_and_serves_an_object(seaweed: SeaweedStore, tmp_path: Path) -> None:
    """The server itself: a signed upload reads back byte for byte, a range is
    a 206, the ETag is the MD5, and a wrong secret is refused."""
    import boto3
    from botocore.exceptions import ClientError

    seaweed.create_bucket(SMOKE_BUCKET)
    body = os.urandom(100_000)
    path = tmp_path / "object.bin"
    path.write_bytes(body)
    seaweed.upload_file(SMOKE_BUCKET, "dir/object.bin", path)

    client = seaweed.client()
    answer = client.get_object(Bucket=SMOKE_BUCKET, Key="dir/object.bin")
    assert answer["Body"].read() == body
    assert answer["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    ranged = client.get_object(Bucket=SMOKE_BUCKET, Key="dir/object.bin", Range="bytes=10-19")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["Body"].read() == body[10:20]

    forged = boto3.client(
        "s3", endpoint_url=seaweed.endpoint_url, region_name=seaweed.region,
        aws_access_key_id=seaweed.access_key, aws_secret_access_key="not-the-secret",
    )
    try:
        forged.list_objects_v2(Bucket=SMOKE_BUCKET)
    except ClientError as error:
        assert error.response["Error"]["Code"] == "SignatureDoesNotMatch"
    else:
        raise AssertionError("a request signed with a wrong secret was served")


def test_multipart_objects_have_part_etags(server: SeaweedS3, objects: dict[str, Uploaded]) -> None:
    """The premise of the tests below: the store answers as S3 does."""
    client = server.client()
    for key, item in objects.items():
        head = client.head_object(Bucket=BUCKET, Key=key)
        etag = head["ETag"].strip('"')
        assert head["ContentLength"] == len(item.data)
        if len(item.parts) == 1:
            assert etag == hashlib.md5(item.data).hexdigest(), key
        else:
            assert etag.endswith(f"-{len(item.parts)}"), (key, etag)
        first, last = CHUNK - 5, min(CHUNK + 4, len(item.data) - 1)
        ranged = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={first}-{last}")
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert ranged["ContentRange"] == f"bytes {first}-{last}/{len(item.data)}"
        assert ranged["Body"].read() == item.data[first:last + 1]


# -- reading through a mount ----------------------------------------------------


def test_cold_ranged_reads_across_chunk_and_part_boundaries(
    objects: dict[str, Uploaded], s3_env: SeaweedS3, mount: Mounter, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    mp = mount(f"s3://{BUCKET}", cache, *s3_env.mount_args())
    wrong = []
    for key, item in objects.items():
        # Last boundary first: each read lands on chunks no earlier read fetched.
        with open(mp / key, "rb", buffering=0) as f:
            for offset, length in reversed(boundary_reads(item)):
                got = os.pread(f.fileno(), length, offset)
                if got != item.data[offset:offset + length]:
                    wrong.append(f"{key} bytes {offset}+{length}: got {len(got)} bytes, differ")
        assert (mp / key).stat().st_size == len(item.data)
    assert wrong == []
    # Whole, now partly cached: the rest comes in, and all of it must match.
    for key, item in objects.items():
        assert (mp / key).read_bytes() == item.data, key
    mount.umount(mp)
    code, reports = fsck(cache, "--verify-remote")
    assert code == 0 and reports[0]["state"] == "clean", reports
    chunks = sum(-(-len(item.data) // CHUNK) for item in objects.values())
    assert reports[0]["chunks_verified"] == chunks, reports


def test_concurrent_cold_readers_of_a_multipart_object(
    objects: dict[str, Uploaded], s3_env: SeaweedS3, mount: Mounter,
) -> None:
    """Readers in different orders at once, on nothing cached yet: fetches of
    one chunk are shared or repeated, never mixed up."""
    key = "multi/five-parts.bin"
    data = objects[key].data
    mp = mount(f"s3://{BUCKET}", None, *s3_env.mount_args())
    piece = MiB + 4099  # never aligned with a chunk or a part
    starts = list(range(0, len(data), piece))
    orders = [starts, starts[::-1], starts[1::2] + starts[::2],
              random.Random(17).sample(starts, len(starts))]

    def read_in(order: list[int]) -> list[int]:
        with open(mp / key, "rb", buffering=0) as f:
            return [at for at in order if os.pread(f.fileno(), piece, at) != data[at:at + piece]]

    with ThreadPoolExecutor(len(orders)) as pool:
        wrong = list(pool.map(read_in, orders))
    assert wrong == [[]] * len(orders)


# -- objects that change while mounted ----------------------------------------------


def read_or_fail(fd: int, offset: int, length: int,
                 errors: tuple[int, ...] = (errno.EIO,)) -> bytes | None:
    """What a handle reads there, or None when the read fails with one of `errors`.

    A read that reaches bytes no longer to be had may also come back short,
    with the bytes before them (as a read interrupted by an error does)."""
    try:
        return os.pread(fd, length, offset)
    except OSError as error:
        assert error.errno in errors, error
        return None


def old_bytes_or_none(got: bytes | None, data: bytes, offset: int) -> bool:
    """True when a read got nothing (failed) or only `data`'s bytes from `offset`,
    and not an early end of file."""
    if got is None:
        return True
    return got == data[offset:offset + len(got)] and (got != b"" or offset >= len(data))


@pytest.fixture
def changing(server: SeaweedS3) -> Iterator[tuple[str, Uploaded]]:
    """A multipart object of three chunks, its own key per test."""
    key = f"changing/{os.urandom(4).hex()}.bin"
    parts = (PART + 11, PART + 7, 2 * CHUNK + 9 - 2 * PART - 18)
    item = Uploaded(seeded_bytes(key, sum(parts)), parts)
    put_in_parts(server, BUCKET, key, item.data, parts)
    yield key, item
    server.client().delete_object(Bucket=BUCKET, Key=key)


def test_replaced_object_never_mixes_versions(
    objects: dict[str, Uploaded], changing: tuple[str, Uploaded], s3_env: SeaweedS3,
    mount: Mounter, tmp_path: Path,
) -> None:
    """A handle opened on the old version reads only its bytes (or EIO where
    they were not cached); an open after the change reads the new bytes."""
    key, old = changing
    cache = tmp_path / "cache"
    # TTL 0: every open asks the remote whether the object is still current.
    mp = mount(f"s3://{BUCKET}", cache, *s3_env.mount_args("--metadata-ttl", "0"))
    # As long as the old one: only its ETag (If-Match) can tell them apart.
    new = seeded_bytes(key + "/v2", len(old.data))
    with open(mp / key, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 4096, 0) == old.data[:4096]
        put_in_parts(s3_env, BUCKET, key, new, (len(new),))
        mixed = []
        for offset, length in boundary_reads(old):
            got = read_or_fail(f.fileno(), offset, length)
            if not old_bytes_or_none(got, old.data, offset):
                mixed.append((offset, length))
        assert mixed == [], "an open handle read bytes that are not the old version's"
        # A new open, while the old handle stays open, gets the new object.
        assert (mp / key).read_bytes() == new
        assert old_bytes_or_none(read_or_fail(f.fileno(), 0, 4096), old.data, 0)
    assert (mp / key).read_bytes() == new
    mount.umount(mp)
    code, reports = fsck(cache, "--verify-remote")
    # The new version's bytes are the bucket's; an old one still cached may
    # only be called stale, never corrupt.
    assert {kind for kind, _ in problems(reports)} <= {"stale"}, reports
    assert code in (0, 1), reports


def test_change_found_by_a_read_reaches_new_opens(
    changing: tuple[str, Uploaded], s3_env: SeaweedS3, mount: Mounter,
) -> None:
    """With the listing still fresh (default TTL), a read that finds the
    object replaced fails, and from then on opens get the new object."""
    key, old = changing
    mp = mount(f"s3://{BUCKET}", None, *s3_env.mount_args())
    new = seeded_bytes(key + "/v3", len(old.data))
    with open(mp / key, "rb", buffering=0) as f:
        # Chunk 1 only: nothing fetches chunk 0 ahead of a reader moving forward.
        assert os.pread(f.fileno(), 4096, CHUNK) == old.data[CHUNK:CHUNK + 4096]
        put_in_parts(s3_env, BUCKET, key, new, (PART, len(new) - PART))
        with pytest.raises(OSError) as failed:
            os.pread(f.fileno(), 4096, 0)
        assert failed.value.errno == errno.EIO
        assert os.pread(f.fileno(), 4096, CHUNK) == old.data[CHUNK:CHUNK + 4096]
    assert (mp / key).read_bytes() == new


def test_first_open_after_a_change_gets_the_new_object(
    server: SeaweedS3, s3_env: SeaweedS3, mount: Mounter,
) -> None:
    """An object of one chunk replaced behind a fresh listing (default TTL):
    the open that finds out, fetching it whole, opens the new one instead
    of failing."""
    key = f"changing/{os.urandom(4).hex()}.txt"
    server.client().put_object(Bucket=BUCKET, Key=key, Body=b"version one\n")
    try:
        mp = mount(f"s3://{BUCKET}", None, *s3_env.mount_args())
        assert (mp / key).stat().st_size == len(b"version one\n")
        server.client().put_object(Bucket=BUCKET, Key=key, Body=b"version two, longer\n")
        assert (mp / key).read_bytes() == b"version two, longer\n"
        assert (mp / key).stat().st_size == len(b"version two, longer\n")
    finally:
        server.client().delete_object(Bucket=BUCKET, Key=key)


def test_deleted_object_disappears_for_new_opens(
    changing: tuple[str, Uploaded], s3_env: SeaweedS3, mount: Mounter, tmp_path: Path,
) -> None:
    key, old = changing
    cache = tmp_path / "cache"
    mp = mount(f"s3://{BUCKET}", cache, *s3_env.mount_args("--metadata-ttl", "0"))
    with open(mp / key, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 4096, CHUNK) == old.data[CHUNK:CHUNK + 4096]
        s3_env.client().delete_object(Bucket=BUCKET, Key=key)
        for offset, length in boundary_reads(old):
            got = read_or_fail(f.fileno(), offset, length, GONE)
            assert old_bytes_or_none(got, old.data, offset), (offset, length)
        with pytest.raises(FileNotFoundError):
            (mp / key).read_bytes()
    assert key.rpartition("/")[2] not in os.listdir(mp / "changing")
    mount.umount(mp)
    code, reports = fsck(cache, "--verify-remote")
    assert {kind for kind, _ in problems(reports)} <= {"stale"}, reports


# -- listings -----------------------------------------------------------------------


def test_listing_pages_of_a_real_server(server: SeaweedS3, s3_env: SeaweedS3,
                                        mount: Mounter) -> None:
    """Continuation tokens and common prefixes as a real server pages them."""
    server.make_bucket(PAGES_BUCKET)
    names = {f"k{i:05d}" for i in range(PAGED_KEYS)}
    server.put_keys(PAGES_BUCKET, [f"flat/{name}" for name in sorted(names)])
    server.put_keys(PAGES_BUCKET, ["flat/sub/inside.txt", "flatter/outside.txt"], b"x")

    async def main() -> tuple[set[str], set[str]]:
        remote = open_remote(f"s3://{PAGES_BUCKET}/flat", S3Options(endpoint_url=server.url))
        try:
            entries = await remote.list_dir("")
        finally:
            await remote.aclose()
        return {e.name for e in entries if not e.is_dir}, {e.name for e in entries if e.is_dir}

    files, dirs = trio.run(main)
    assert files == names and dirs == {"sub"}
    mp = mount(f"s3://{PAGES_BUCKET}/flat", None, *s3_env.mount_args())
    assert set(os.listdir(mp)) == names | {"sub"}
    assert os.listdir(mp / "sub") == ["inside.txt"]


# -- unsigned ---------------------------------------------------------------------


def test_anonymous_reads_only_a_public_bucket(
    server: SeaweedS3, objects: dict[str, Uploaded], mount: Mounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--no-sign-request against a store that checks: the public bucket's
    multipart object reads whole; the private bucket refuses the mount."""
    key = "multi/uneven.bin"
    item = objects[key]
    server.make_bucket(SEAWEED_PUBLIC_BUCKET)
    put_in_parts(server, SEAWEED_PUBLIC_BUCKET, key, item.data, item.parts)
    set_aws_env(monkeypatch, isolated_aws_env())  # no credentials at all
    mp = mount(f"s3://{SEAWEED_PUBLIC_BUCKET}", None, *server.mount_args("--no-sign-request"))
    with open(mp / key, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), MiB, CHUNK - 7) == item.data[CHUNK - 7:CHUNK - 7 + MiB]
    assert (mp / key).read_bytes() == item.data
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(f"s3://{BUCKET}", mountpoint, mount.base / "cache-private",
                             *server.mount_args("--no-sign-request"))
    assert_one_line_error(result, f"access denied to s3://{BUCKET}/")
    assert not is_mounted(mountpoint)
