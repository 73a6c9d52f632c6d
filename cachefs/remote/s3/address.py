"""Where an S3 bucket lives: parsing s3:// sources and building request URLs.

A source is `s3://BUCKET[/PREFIX]`, taken literally (S3 keys are not URLs:
'%', '?' and '#' are ordinary key characters, as in the AWS CLI). Requests go
to the endpoint either path-style (ENDPOINT/BUCKET/KEY) or virtual-host style
(BUCKET.ENDPOINT/KEY); path style is chosen whenever virtual hosts cannot
work: an IP address or a single-label host such as localhost, or a bucket
name that is not a valid DNS label.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..registry import RemoteOptions, option

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
# Buckets made before 2018 on us-east-1 may be up to 255 characters long and
# hold capitals and underscores; S3-compatible stores are as lenient.
MAX_BUCKET_NAME = 255
_BUCKET_CHARS = re.compile(r"[A-Za-z0-9._-]+")
# A bucket name usable as a host name label (S3's current naming rules).
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# Characters left as they are in a key's URL path: RFC 3986 unreserved
# characters and '/', which is also what SigV4's canonical URI expects.
_KEY_SAFE = "/~"
# Query values are encoded the way SigV4 canonicalises them, so the URL sent
# is byte for byte the one signed.
_QUERY_SAFE = "-_.~"


@dataclass(frozen=True)
class S3Options(RemoteOptions):
    """The S3 settings of a mount (its `cachefs mount` options); all optional.

    None of them is a credential: those come from the AWS chain (environment,
    shared files, profiles), so the options may be written down.
    """

    endpoint_url: str | None = option(
        None, "--endpoint-url", metavar="URL", shown=False,
        help="an S3-compatible service instead of AWS (e.g. http://127.0.0.1:9000)")
    region: str | None = option(
        None, "--region", help="the bucket's region (default: the profile's, else us-east-1)")
    profile: str | None = option(
        None, "--profile", help="a profile from the AWS config and credentials files")
    no_sign_request: bool = option(
        False, "--no-sign-request", help="send requests unsigned, for public buckets")
    force_path_style: bool = option(
        False, "--force-path-style",
        help="address the bucket as ENDPOINT/BUCKET rather than BUCKET.ENDPOINT")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix inside it ('' or ending in '/')."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"


def is_s3_source(source: str) -> bool:
    return source[: len(S3_SCHEME)].lower() == S3_SCHEME


def parse_s3_source(source: str) -> S3Location:
    """The location named by `s3://BUCKET[/PREFIX]`; ValueError if malformed."""
    if not is_s3_source(source):
        raise ValueError(f"{source!r} is not an s3:// source")
    bucket, _, prefix = source[len(S3_SCHEME) :].partition("/")
    if "@" in bucket or ":" in bucket:
        # Also keeps credentials out of the mount table, where the source shows.
        raise ValueError(
            "the s3:// source must not hold credentials or a port; use the AWS "
            "environment variables or --profile, and --endpoint-url"
        )
    if not bucket:
        raise ValueError(f"source {source!r} has no bucket name")
    if len(bucket) > MAX_BUCKET_NAME or not _BUCKET_CHARS.fullmatch(bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name")
    if "\0" in prefix:
        raise ValueError("the prefix must not contain NUL")
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Location(bucket, prefix)


def aws_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com"


def check_endpoint(url: str) -> str:
    """`url` without a trailing slash; ValueError if it cannot be an endpoint."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--endpoint-url {url!r} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("--endpoint-url must not hold credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"--endpoint-url {url!r} must not have a query or fragment")
    return url.rstrip("/")


def needs_path_style(endpoint: str, bucket: str) -> bool:
    """Whether BUCKET.HOST cannot work for this endpoint and bucket."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if "." not in host:  # localhost, a container name
        return True
    if not _DNS_BUCKET.fullmatch(bucket.replace(".", "-")):
        return True
    # A dotted bucket name breaks the endpoint's wildcard TLS certificate.
    return "." in bucket and parts.scheme.lower() == "https"


@dataclass(frozen=True)
class BucketUrls:
    """Builds the URLs of one bucket's requests at one endpoint."""

    endpoint: str
    bucket: str
    path_style: bool

    def _bucket_root(self) -> str:
        if self.path_style:
            return f"{self.endpoint}/{quote(self.bucket, safe='')}"
        scheme, _, rest = self.endpoint.partition("://")
        return f"{scheme}://{self.bucket}.{rest}"

    def object_url(self, key: str) -> str:
        return f"{self._bucket_root()}/{quote(key, safe=_KEY_SAFE)}"

    def bucket_url(self, params: dict[str, str]) -> str:
        """The bucket's URL with a canonically encoded, sorted query."""
        query = "&".join(
            f"{quote(k, safe=_QUERY_SAFE)}={quote(v, safe=_QUERY_SAFE)}"
            for k, v in sorted(params.items())
        )
        return f"{self._bucket_root()}/?{query}" if query else f"{self._bucket_root()}/"
