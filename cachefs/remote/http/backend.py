"""The http:// and https:// remote type: a server with directory indexes.

A source is the URL of the top directory. Credentials in it
(`http://user:password@host/...`) become basic auth and are kept out of
the source the remote reports, which the mount table, logs, cache folder
names and SQLite show.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from ..base import Remote
from ..registry import Backend, NoOptions
from ..limits import RequestLimits

SCHEMES = ("http", "https")


@dataclass(frozen=True)
class HttpSource:
    """A checked source: the directory's URL (ending in '/', no
    credentials) and the basic auth its user part gave, if any."""

    url: str
    auth: tuple[str, str] | None = None


def _split(source: str) -> SplitResult:
    parts = urlsplit(source)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"{source!r} is not an http:// or https:// source")
    if not parts.hostname:
        raise ValueError(f"source {source!r} has no host name")
    if parts.query or parts.fragment:
        raise ValueError(f"source {source!r} must not have a query or fragment")
    try:
        parts.port  # checked on first use only, which was the first request
    except ValueError:
        raise ValueError(f"source {source!r} has a bad port (want a number from 0 to 65535)") from None
    return parts


def parse_http_source(source: str) -> HttpSource:
    """`source` checked and normalised; ValueError with a one-line message."""
    parts = _split(source)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    auth = None
    netloc = parts.netloc
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
        netloc = netloc.rpartition("@")[2]
    return HttpSource(parts._replace(scheme=parts.scheme.lower(), netloc=netloc, path=path).geturl(), auth)


def public_http_source(source: str) -> str:
    """The source without its credentials (the URL as the remote reports it)."""
    return parse_http_source(source).url


def open_http(source: str, options: NoOptions, *, proxy: str | None = None,
              limits: RequestLimits | None = None) -> Remote:
    checked = parse_http_source(source)
    # Here, not at the top: the registry (and with it the command line's
    # parser) needs this module, and the remote needs httpx and trio.
    from .index import HttpIndexRemote

    return HttpIndexRemote(checked.url, proxy=proxy, auth=checked.auth, limits=limits)


BACKEND = Backend(
    name="http",
    schemes=SCHEMES,
    open=open_http,
    source_help="http(s):// URL of a directory index",
    public_source=public_http_source,
)
