"""Remote object stores: the only part of cachefs that speaks HTTP.

`open_remote` turns a source string from the command line into a `Remote`;
`base` defines that interface and the errors remotes raise. A source is a
plain HTTP(S) server with directory indexes (`http_index`) or an S3 bucket,
`s3://BUCKET[/PREFIX]` (`s3`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import (
    AccessDenied,
    BadResponse,
    NotFound,
    Pin,
    Remote,
    RemoteEntry,
    RemoteError,
    Unreachable,
    VersionChanged,
    WrongCredentials,
)
from .http.client import RequestLimits
from .http.index import HttpIndexRemote
from .s3.address import S3Options, is_s3_source, parse_s3_source
from .s3.remote import S3Remote

__all__ = [
    "AccessDenied",
    "BadResponse",
    "HttpIndexRemote",
    "NotFound",
    "Pin",
    "Remote",
    "RemoteEntry",
    "RemoteError",
    "RequestLimits",
    "S3Options",
    "S3Remote",
    "Unreachable",
    "VersionChanged",
    "WrongCredentials",
    "open_remote",
]

_HTTP_SCHEMES = ("http", "https")


def open_remote(
    source: str,
    *,
    proxy: str | None = None,
    s3: S3Options | None = None,
    limits: RequestLimits | None = None,
) -> Remote:
    """The remote for `source`, e.g. "http://host/data/" or "s3://bucket/prefix".

    `s3` holds the S3 settings (endpoint, region, profile...), which only an
    s3:// source may use. Raises ValueError with a one-line message for
    sources we cannot serve.
    """
    s3 = s3 or S3Options()
    if is_s3_source(source):
        return S3Remote(parse_s3_source(source), s3, proxy=proxy, limits=limits)
    if not s3.is_default():
        raise ValueError(
            "--endpoint-url, --region, --profile, --no-sign-request and "
            "--force-path-style apply to s3:// sources only"
        )
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        shown = scheme or "none"
        raise ValueError(
            f"unsupported source scheme {shown!r} in {source!r}; "
            "use http://, https:// or s3://"
        )
    if not parts.hostname:
        raise ValueError(f"source {source!r} has no host name")
    if parts.query or parts.fragment:
        raise ValueError(f"source {source!r} must not have a query or fragment")
    try:
        parts.port  # checked on first use only, which was the first request
    except ValueError:
        raise ValueError(f"source {source!r} has a bad port (want a number from 0 to 65535)") from None
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    # user:password@ becomes basic auth, kept out of the source string that
    # the mount table, logs, cache folder names and SQLite show.
    auth = None
    netloc = parts.netloc
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
        netloc = netloc.rpartition("@")[2]
    clean = parts._replace(scheme=scheme, netloc=netloc, path=path).geturl()
    return HttpIndexRemote(clean, proxy=proxy, auth=auth, limits=limits)
