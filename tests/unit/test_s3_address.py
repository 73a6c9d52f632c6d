"""remote/s3/address.py: s3:// sources, endpoints, addressing styles, and the S3 options."""

from __future__ import annotations

import json

import pytest

from cachefs.remote.s3.address import (
    BucketUrls,
    S3Options,
    check_endpoint,
    needs_path_style,
    parse_s3_source,
)


def test_source_parsing() -> None:
    assert parse_s3_source("s3://bkt").prefix == ""
    assert parse_s3_source("s3://bkt/a/b").prefix == "a/b/"
    assert parse_s3_source("S3://bkt//a%20b?x#y/").prefix == "a%20b?x#y/"
    assert parse_s3_source("s3://bkt/a").uri == "s3://bkt/a/"
    for bad in ("s3://", "s3:///x", "s3://key:secret@bkt/x", "s3://bkt:9000/x", "s3://b/k\0",
                "s3://no spaces", "s3://" + "b" * 256, "http://bkt/x"):
        with pytest.raises(ValueError):
            parse_s3_source(bad)


def test_credentials_in_the_source_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError) as refused:
        parse_s3_source("s3://AKIDEXAMPLE:s3cr3t@bkt/x")
    assert "s3cr3t" not in str(refused.value)


def test_endpoints() -> None:
    assert check_endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    for bad, culprit in [("ftp://h", "http"), ("http://", "http"), ("http://u:p@h", "credentials"),
                         ("http://h/?x=1", "query")]:
        with pytest.raises(ValueError, match=culprit):
            check_endpoint(bad)


def test_addressing_styles() -> None:
    assert needs_path_style("http://127.0.0.1:9000", "bkt")
    assert needs_path_style("http://localhost:9000", "bkt")
    assert needs_path_style("https://s3.eu-west-1.amazonaws.com", "my.dotted.bucket")
    assert needs_path_style("https://s3.us-east-1.amazonaws.com", "Legacy_Bucket")
    assert not needs_path_style("https://s3.us-east-1.amazonaws.com", "my-bucket")
    virtual = BucketUrls("https://s3.us-east-1.amazonaws.com", "my-bucket", path_style=False)
    assert virtual.object_url("a b/100%.txt") == (
        "https://my-bucket.s3.us-east-1.amazonaws.com/a%20b/100%25.txt"
    )
    path = BucketUrls("http://127.0.0.1:9000", "bkt", path_style=True)
    assert path.bucket_url({"prefix": "a b/", "list-type": "2"}) == (
        "http://127.0.0.1:9000/bkt/?list-type=2&prefix=a%20b%2F"
    )


def test_options_are_plain_data_and_command_line_options() -> None:
    options = S3Options(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", no_sign_request=True)
    assert S3Options.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert S3Options().is_default() and not options.is_default()
    assert [cli.flag for cli in S3Options.cli_options()] == [
        "--endpoint-url", "--region", "--profile", "--no-sign-request", "--force-path-style"]
    for bad in ({"endpoint": "x"}, {"no_sign_request": "yes"}, {"region": ["a"]}):
        with pytest.raises(ValueError):
            S3Options.from_dict(bad)
