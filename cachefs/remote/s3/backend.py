"""The s3:// remote type: a bucket on AWS or any S3-compatible service."""

from __future__ import annotations

from ..base import Remote
from ..limits import RequestLimits
from ..registry import Backend
from .address import S3Options, parse_s3_source


def open_s3(source: str, options: S3Options, *, proxy: str | None = None,
            limits: RequestLimits | None = None) -> Remote:
    # Here, not at the top: botocore (signing) takes a third of a second to
    # import, which a daemon serving an HTTP index should not pay.
    from .remote import S3Remote

    return S3Remote(parse_s3_source(source), options, proxy=proxy, limits=limits)


BACKEND = Backend(
    name="s3",
    schemes=("s3",),
    open=open_s3,
    options=S3Options,
    source_help="s3://BUCKET[/PREFIX]",
    group_title="s3:// sources",
    group_description="credentials come from the standard AWS chain: environment, "
    "shared credentials and config files, profiles",
    # Only an s3:// daemon needs the AWS credentials.
    environ_prefixes=("AWS_",),
)
