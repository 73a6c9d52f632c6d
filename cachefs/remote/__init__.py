"""Remote object stores: the only part of cachefs that speaks HTTP.

`base` defines the `Remote` interface and the errors remotes raise. Remote
types are backends in the `registry`, by URL scheme: here a plain HTTP(S)
server with directory indexes (`http`) and an S3 bucket, `s3://BUCKET[/PREFIX]`
(`s3`). `open_remote` turns a source string and its backend's options into
a `Remote`; `record` writes down how a cache folder's remote was opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachefs import lazy

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
from .http.backend import BACKEND as HTTP_BACKEND
from .limits import RequestLimits
from .registry import REGISTRY, Backend, NoOptions, Registry, RemoteOptions
from .s3.address import S3Options
from .s3.backend import BACKEND as S3_BACKEND

if TYPE_CHECKING:
    from .http.index import HttpIndexRemote

__all__ = [
    "REGISTRY",
    "AccessDenied",
    "Backend",
    "BadResponse",
    "HttpIndexRemote",
    "NoOptions",
    "NotFound",
    "Pin",
    "Registry",
    "Remote",
    "RemoteEntry",
    "RemoteError",
    "RemoteOptions",
    "RequestLimits",
    "S3Options",
    "Unreachable",
    "VersionChanged",
    "WrongCredentials",
    "open_remote",
]

# The order is that of `cachefs mount --help` and of its error messages.
REGISTRY.register(HTTP_BACKEND)
REGISTRY.register(S3_BACKEND)


def open_remote(source: str, options: RemoteOptions | None = None, *,
                proxy: str | None = None, limits: RequestLimits | None = None) -> Remote:
    """The remote for `source`, e.g. "http://host/data/" or "s3://bucket/prefix".

    `options` are those of the source's backend (S3Options for s3://), None
    for its defaults. Raises ValueError with a one-line message for sources
    and options we cannot serve.
    """
    return REGISTRY.open(source, options, proxy=proxy, limits=limits)


# The remotes themselves need httpx and trio: loaded when first asked for.
__getattr__ = lazy.exports(__name__, {"HttpIndexRemote": "http.index"})
