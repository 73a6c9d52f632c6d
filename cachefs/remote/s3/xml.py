"""Reading S3's XML answers: ListObjectsV2 pages and error documents.

Element names are matched without their namespace: AWS uses
http://s3.amazonaws.com/doc/2006-03-01/, some S3-compatible stores none.
Keys are requested with encoding-type=url (XML 1.0 cannot carry every
character a key may hold) and decoded here; a key that does not decode to
valid UTF-8 keeps surrogate escapes, which name validation then rejects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus

from ..base import BadResponse


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    mtime: float


@dataclass
class ListPage:
    """One page of a ListObjectsV2 answer."""

    objects: list[ListedObject] = field(default_factory=list)
    # Full prefixes ("dir/sub/"), as rolled up by the delimiter.
    prefixes: list[str] = field(default_factory=list)
    # Set when the answer is truncated: the token for the next page.
    next_token: str | None = None


@dataclass(frozen=True)
class S3ErrorDoc:
    code: str = ""
    message: str = ""


def normalize_etag(etag: str) -> str:
    """The ETag without quotes or a weak marker, as we keep it as a version."""
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def parse_list_page(body: bytes, url: str) -> ListPage:
    """The objects, prefixes and continuation of one ListObjectsV2 page."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadResponse(f"{url}: listing is not XML: {exc}") from None
    if _local(root.tag) != "ListBucketResult":
        raise BadResponse(f"{url}: not a ListBucketResult but {_local(root.tag)!r}")
    url_encoded = (_child_text(root, "EncodingType") or "").lower() == "url"

    def decode(raw: str) -> str:
        return unquote_plus(raw, errors="surrogateescape") if url_encoded else raw

    page = ListPage()
    for element in root:
        tag = _local(element.tag)
        if tag == "Contents":
            key = _child_text(element, "Key")
            size = _child_text(element, "Size") or ""
            if key is None or not size.strip():
                raise BadResponse(f"{url}: an entry without Key or Size")
            page.objects.append(
                ListedObject(
                    key=decode(key),
                    # A size no file can have (negative, huge, not a number)
                    # is passed on as one: the filesystem skips that entry
                    # with a warning rather than fail the whole listing.
                    size=_size(size),
                    etag=normalize_etag(_child_text(element, "ETag") or ""),
                    mtime=_parse_time(_child_text(element, "LastModified")),
                )
            )
        elif tag == "CommonPrefixes":
            prefix = _child_text(element, "Prefix")
            if prefix is not None:
                page.prefixes.append(decode(prefix))
    if (_child_text(root, "IsTruncated") or "").lower() == "true":
        token = _child_text(root, "NextContinuationToken")
        if not token:
            raise BadResponse(f"{url}: truncated listing without a continuation token")
        page.next_token = token
    return page


def parse_error(body: bytes) -> S3ErrorDoc:
    """Code and message of an S3 error document; empty if there is none."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return S3ErrorDoc()
    if _local(root.tag) != "Error":
        return S3ErrorDoc()
    return S3ErrorDoc(
        code=_child_text(root, "Code") or "", message=_child_text(root, "Message") or ""
    )
