"""Turning S3 error answers into RemoteErrors a person can act on.

S3 says what went wrong in an XML error document (absent on HEAD answers,
which only have the status). The mapping keeps the technical detail in the
message and puts a one-line explanation in `summary`, which `cachefs mount`
prints when the mount cannot be made.
"""

from __future__ import annotations

from enum import Enum

import httpx

from ..base import AccessDenied, BadResponse, NotFound, RemoteError, Unreachable, WrongCredentials
from .xml import S3ErrorDoc

# S3 names the bucket's real region in this header when a request went to
# the wrong one.
REGION_HEADER = "x-amz-bucket-region"


class ErrorKind(Enum):
    NO_SUCH_BUCKET = "no such bucket"
    NOT_FOUND = "not found"
    CREDENTIALS = "wrong credentials"
    DENIED = "access denied"
    WRONG_REGION = "wrong region"
    SERVER = "server error"
    OTHER = "other"


_CODES: dict[str, ErrorKind] = {
    "NoSuchBucket": ErrorKind.NO_SUCH_BUCKET,
    "NoSuchKey": ErrorKind.NOT_FOUND,
    "InvalidAccessKeyId": ErrorKind.CREDENTIALS,
    "SignatureDoesNotMatch": ErrorKind.CREDENTIALS,
    "InvalidToken": ErrorKind.CREDENTIALS,
    "ExpiredToken": ErrorKind.CREDENTIALS,
    "TokenRefreshRequired": ErrorKind.CREDENTIALS,
    "AccessDenied": ErrorKind.DENIED,
    "AllAccessDisabled": ErrorKind.DENIED,
    "PermanentRedirect": ErrorKind.WRONG_REGION,
    "AuthorizationHeaderMalformed": ErrorKind.WRONG_REGION,
    "IllegalLocationConstraintException": ErrorKind.WRONG_REGION,
}

_STATUSES: dict[int, ErrorKind] = {
    301: ErrorKind.WRONG_REGION,
    401: ErrorKind.DENIED,
    403: ErrorKind.DENIED,
    404: ErrorKind.NOT_FOUND,
    410: ErrorKind.NOT_FOUND,
}


def classify(status: int, doc: S3ErrorDoc) -> ErrorKind:
    kind = _CODES.get(doc.code)
    if kind is not None:
        return kind
    if status >= 500:
        return ErrorKind.SERVER
    return _STATUSES.get(status, ErrorKind.OTHER)


def error_for(
    response: httpx.Response, doc: S3ErrorDoc, what: str, *, bucket: str, where: str
) -> RemoteError:
    """The RemoteError for an error answer to request `what` (no secrets in it).

    `where` names the mount, e.g. "s3://bucket/prefix/".
    """
    status = response.status_code
    code = doc.code or f"HTTP {status}"
    detail = f"{what}: {code}" + (f" ({doc.message})" if doc.message else "")
    kind = classify(status, doc)
    if kind is ErrorKind.NO_SUCH_BUCKET:
        return NotFound(detail, summary=f"bucket {bucket!r} does not exist")
    if kind is ErrorKind.NOT_FOUND:
        return NotFound(detail, summary=f"{where} not found ({code})")
    if kind is ErrorKind.CREDENTIALS:
        return WrongCredentials(detail, summary=f"wrong credentials for {where} ({code})")
    if kind is ErrorKind.DENIED:
        return AccessDenied(detail, summary=f"access denied to {where}")
    if kind is ErrorKind.WRONG_REGION:
        region = response.headers.get(REGION_HEADER)
        hint = f"; use --region {region}" if region else "; check --region"
        return BadResponse(detail, summary=f"bucket {bucket!r} is in another region{hint}")
    if kind is ErrorKind.SERVER:
        return Unreachable(detail)
    return BadResponse(f"{detail}: unexpected HTTP {status}")
