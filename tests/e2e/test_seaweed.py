"""S3 sources against SeaweedFS, a real S3 server (cachefs.localstore.seaweed).

moto (tests/e2e/test_s3.py) answers from Python; SeaweedFS shows what only a
real store does: ranged GETs answered 206, ETags that are MD5s, multipart
objects whose ETag ends in "-<parts>" and whose part sizes do not line up
with cachefs's chunks, and objects replaced or deleted while mounted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cachefs.localstore.seaweed import SeaweedStore

SMOKE_BUCKET = "cachefs-seaweed-smoke"


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
