"""remote/record.py: how a cache folder's remote was opened, for fsck --verify-remote."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cachefs.remote import NoOptions, S3Options
from cachefs.remote.record import RECORD_NAME, read_record, write_record


def test_s3_options_are_recorded_and_reopen_the_same_store(tmp_path: Path) -> None:
    options = S3Options(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", no_sign_request=True)
    write_record(tmp_path, "s3://bkt/data", options)
    record = read_record(tmp_path)
    assert record is not None
    assert (record.source, record.options) == ("s3://bkt/data", options)
    # The folder is named after this: the endpoint is part of the store's name.
    assert record.open().source == "s3://bkt/data/ at http://127.0.0.1:9000"
    assert stat.S_IMODE(os.stat(tmp_path / RECORD_NAME).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [RECORD_NAME]


def test_credentials_in_a_url_are_not_recorded(tmp_path: Path) -> None:
    write_record(tmp_path, "http://user:hunter2@h:8080/data", None)
    assert "hunter2" not in (tmp_path / RECORD_NAME).read_text()
    record = read_record(tmp_path)
    assert record is not None
    assert (record.source, record.options) == ("http://h:8080/data/", NoOptions())


def test_a_later_record_replaces_the_earlier(tmp_path: Path) -> None:
    write_record(tmp_path, "s3://bkt", S3Options(region="eu-west-1"))
    write_record(tmp_path, "s3://bkt", S3Options(region="us-west-2"))
    record = read_record(tmp_path)
    assert record is not None and record.options == S3Options(region="us-west-2")


def test_no_record_and_bad_records(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    for text in ("{", "[]", '{"source": "s3://b"}', '{"source": "ftp://x", "options": null}',
                 json.dumps({"source": "s3://b", "options": {"region": 5, "colour": "red"}}),
                 json.dumps({"source": "s3://b", "options": {"no_sign_request": "yes"}}),
                 "\udcff"):
        (tmp_path / RECORD_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(ValueError, match=RECORD_NAME):
            read_record(tmp_path)
