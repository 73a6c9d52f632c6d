"""Remote object stores: the only part of cachefs that speaks HTTP.

`open_remote` turns a source string from the command line into a `Remote`;
`base` defines that interface and the errors remotes raise. Today a source
is a plain HTTP(S) server with directory indexes (`http_index`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    AccessDenied,
    BadResponse,
    NotFound,
    Remote,
    RemoteEntry,
    RemoteError,
    Unreachable,
    VersionChanged,
)
from .http_index import HttpIndexRemote

__all__ = [
    "AccessDenied",
    "BadResponse",
    "HttpIndexRemote",
    "NotFound",
    "Remote",
    "RemoteEntry",
    "RemoteError",
    "Unreachable",
    "VersionChanged",
    "open_remote",
]

_HTTP_SCHEMES = ("http", "https")


def open_remote(source: str, *, proxy: str | None = None) -> Remote:
    """The remote for `source`, e.g. "http://host/data/".

    Raises ValueError with a one-line message for sources we cannot serve.
    """
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        shown = scheme or "none"
        raise ValueError(
            f"unsupported source scheme {shown!r} in {source!r}; "
            "use http:// or https:// (s3:// comes later)"
        )
    if not parts.hostname:
        raise ValueError(f"source {source!r} has no host name")
    if parts.query or parts.fragment:
        raise ValueError(f"source {source!r} must not have a query or fragment")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return HttpIndexRemote(parts._replace(scheme=scheme, path=path).geturl(), proxy=proxy)
