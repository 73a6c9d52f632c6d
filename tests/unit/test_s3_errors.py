"""remote/s3/errors.py: S3 error answers become RemoteErrors with a line a person can act on."""

from __future__ import annotations

import httpx
import pytest

from cachefs.remote import AccessDenied, BadResponse, NotFound, RemoteError, Unreachable, WrongCredentials
from cachefs.remote.s3.errors import ErrorKind, classify, error_for
from cachefs.remote.s3.xml import S3ErrorDoc, parse_error

WHERE = "s3://bkt/data/"


def answer(status: int, code: str = "", headers: dict[str, str] | None = None) -> RemoteError:
    body = f"<Error><Code>{code}</Code><Message>told</Message></Error>".encode() if code else b""
    response = httpx.Response(status, headers=headers, content=body)
    return error_for(response, parse_error(body), "GET k", bucket="bkt", where=WHERE)


@pytest.mark.parametrize(("status", "code", "kind", "summary"), [
    (404, "NoSuchBucket", NotFound, "bucket 'bkt' does not exist"),
    (404, "NoSuchKey", NotFound, f"{WHERE} not found (NoSuchKey)"),
    (404, "", NotFound, f"{WHERE} not found (HTTP 404)"),  # a HEAD answer has no body
    (403, "InvalidAccessKeyId", WrongCredentials, f"wrong credentials for {WHERE} (InvalidAccessKeyId)"),
    (403, "SignatureDoesNotMatch", WrongCredentials, f"wrong credentials for {WHERE} (SignatureDoesNotMatch)"),
    (403, "AccessDenied", AccessDenied, f"access denied to {WHERE}"),
    (401, "", AccessDenied, f"access denied to {WHERE}"),
    (400, "AuthorizationHeaderMalformed", BadResponse, "bucket 'bkt' is in another region; check --region"),
    (503, "SlowDown", Unreachable, None),
    (500, "", Unreachable, None),
    (418, "Teapot", BadResponse, None),
])
def test_answers_map_to_errors(status: int, code: str, kind: type, summary: str | None) -> None:
    error = answer(status, code)
    assert type(error) is kind
    assert error.summary == summary
    assert str(error).startswith(f"GET k: {code or f'HTTP {status}'}")


def test_the_region_header_names_the_region() -> None:
    error = answer(301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"})
    assert error.summary == "bucket 'bkt' is in another region; use --region eu-west-1"


def test_a_known_code_wins_over_the_status() -> None:
    assert classify(500, S3ErrorDoc("NoSuchKey")) is ErrorKind.NOT_FOUND
    assert classify(502, S3ErrorDoc("SomethingNew")) is ErrorKind.SERVER


def test_error_documents() -> None:
    doc = parse_error(b'<?xml version="1.0"?><Error xmlns="x"><Code>AccessDenied</Code>'
                      b"<Message>no</Message></Error>")
    assert doc == S3ErrorDoc("AccessDenied", "no")
    for body in (b"", b"<html>proxy error</html>", b"<Error><Code>unclosed"):
        assert parse_error(body) == S3ErrorDoc()
