"""Parsing directory index pages served by plain HTTP servers.

Understands nginx autoindex (HTML, and `autoindex_format json`), Apache
mod_autoindex (the <pre> "fancy" style and the <table> style) and, for
names only, any page that links to its children (lighttpd, Python's
http.server...). The format is chosen from the Content-Type, falling back to
sniffing the body.

HTML listings are lossy, and the result says so: names come from the hrefs
(the visible text may be truncated or entity-escaped), times have minute
precision in an unknown time zone, and sizes such as "12K" or "1.2M" are
rounded, so they are reported as unknown and the caller must ask the server.
"""

from __future__ import annotations

import calendar
import codecs
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit

from ..names import decode_component, valid_name
from .client import parse_http_date


class ListingFormat(Enum):
    JSON = "json"
    HTML = "html"


class NotAListing(ValueError):
    """The page is not a directory index we can read."""


@dataclass(frozen=True)
class ListedEntry:
    """One child as the index page shows it."""

    name: str
    is_dir: bool
    # None when the page shows no exact byte count (directories, "12K").
    size: int | None = None
    # Seconds since the epoch, or None when the page shows no time. For HTML
    # pages the time zone is unknown and is read as UTC; see IndexPage.
    mtime: float | None = None


@dataclass
class IndexPage:
    """One directory index page, parsed: its children in page order."""

    format: ListingFormat
    entries: list[ListedEntry] = field(default_factory=list)
    # Raw names that cannot be file names; the caller logs them.
    rejected: list[str] = field(default_factory=list)
    # Some row shows its time to the minute only (nginx's and Apache's HTML).
    minute_times: bool = False

    @property
    def times_are_exact(self) -> bool:
        """True when mtimes are true UTC with seconds (nginx JSON)."""
        return self.format is ListingFormat.JSON


def detect_format(body: bytes, content_type: str | None) -> ListingFormat:
    """Decide how to parse `body`; raises NotAListing if it is neither."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return ListingFormat.JSON
    if media_type in ("text/html", "application/xhtml+xml"):
        return ListingFormat.HTML
    # Servers configured with odd types: sniff the first character.
    head = body.lstrip()[:1]
    if head == b"[":
        return ListingFormat.JSON
    if head == b"<":
        return ListingFormat.HTML
    raise NotAListing(f"not a directory index (Content-Type {media_type or 'missing'!r})")


def parse_listing(body: bytes, content_type: str | None, page_url: str) -> IndexPage:
    """Parse an index page fetched from `page_url` (the URL after redirects)."""
    fmt = detect_format(body, content_type)
    if fmt is ListingFormat.JSON:
        return parse_nginx_json(body)
    return parse_html(body.decode(_charset(content_type), "surrogateescape"), page_url)


def _charset(content_type: str | None) -> str:
    match = re.search(r"charset=\"?([\w.:-]+)", content_type or "", re.IGNORECASE)
    if match:
        try:
            "".encode(match.group(1))
            return match.group(1)
        except LookupError:
            pass
    return "utf-8"


# ---------------------------------------------------------------- nginx JSON


def parse_nginx_json(body: bytes) -> IndexPage:
    """Parse nginx `autoindex_format json`: names are literal, not URL-encoded."""
    listing = IndexPage(ListingFormat.JSON)
    try:
        # nginx copies file names byte for byte; keep invalid UTF-8 decodable
        # so one bad name does not hide the whole directory.
        items = json.loads(body.decode("utf-8", "surrogateescape"))
    except ValueError as exc:
        raise NotAListing(f"malformed JSON index: {exc}") from None
    if not isinstance(items, list):
        raise NotAListing("JSON index is not a list")
    for item in items:
        entry = _json_entry(item, listing.rejected)
        if entry is not None:
            listing.entries.append(entry)
    return listing


class JsonListingStream:
    """nginx's JSON index parsed as it arrives, a few entries at a time.

    The page is a JSON array of objects; each object is decoded as soon as
    it is complete, so a listing of a million entries is never held whole,
    as text or as objects. Entries are read as `parse_nginx_json` reads them.
    """

    def __init__(self) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode
        self._scan = json.JSONDecoder().raw_decode
        self._text = ""
        self._started = False  # past the '['
        self._ended = False  # past the ']'
        self.rejected: list[str] = []

    def feed(self, data: bytes) -> list[ListedEntry]:
        """Entries completed by `data`; NotAListing if the page is not an index."""
        self._text += self._decode(data)
        return self._parse(final=False)

    def close(self) -> list[ListedEntry]:
        """The last entries; NotAListing if the page ended early."""
        self._text += self._decode(b"", True)
        entries = self._parse(final=True)
        if not self._ended:
            raise NotAListing("malformed JSON index: it ends before its closing ']'")
        return entries

    def _parse(self, final: bool) -> list[ListedEntry]:
        text, pos, end = self._text, 0, len(self._text)
        entries: list[ListedEntry] = []
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos == end:
                break
            if self._ended:
                raise NotAListing("malformed JSON index: text after its closing ']'")
            char = text[pos]
            if not self._started:
                if char != "[":
                    raise NotAListing("JSON index is not a list")
                self._started = True
                pos += 1
                continue
            if char == "]":
                self._ended = True
                pos += 1
                continue
            if char == ",":
                pos += 1
                continue
            try:
                item, pos_after = self._scan(text, pos)
            except ValueError as exc:
                if final:
                    raise NotAListing(f"malformed JSON index: {exc}") from None
                break  # the rest of this item has not come yet
            pos = pos_after
            entry = _json_entry(item, self.rejected)
            if entry is not None:
                entries.append(entry)
        self._text = text[pos:]
        return entries


def _json_entry(item: object, rejected: list[str]) -> ListedEntry | None:
    """One item of nginx's JSON index, or None to skip it (invalid names go to `rejected`)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    kind = item.get("type")
    if kind not in ("file", "directory"):
        return None  # "other": sockets, fifos, dangling links
    name = valid_name(item["name"])
    if name is None:
        rejected.append(item["name"])
        return None
    size = item.get("size")
    is_dir = kind == "directory"
    return ListedEntry(
        name=name,
        is_dir=is_dir,
        size=size if isinstance(size, int) and not is_dir else None,
        mtime=parse_http_date(item.get("mtime")),
    )


# ---------------------------------------------------------------------- HTML

_MONTHS = {abbr.lower(): num for num, abbr in enumerate(calendar.month_abbr) if abbr}

# Date styles seen in index pages: nginx and old Apache "21-Nov-2026 06:29",
# Apache 2.4 "2026-11-21 06:29", lighttpd "2026-Nov-21 06:29:40".
_DATE_DMY = re.compile(r"(?P<d>\d{1,2})-(?P<mon>[A-Za-z]{3})-(?P<y>\d{4})")
_DATE_YMD = re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})")
_DATE_YMonD = re.compile(r"(?P<y>\d{4})-(?P<mon>[A-Za-z]{3})-(?P<d>\d{2})")
_TIME = r"\s+(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?"
_DATE_PATTERNS = [re.compile(p.pattern + _TIME) for p in (_DATE_DMY, _DATE_YMD, _DATE_YMonD)]

# The size column: "-" for directories, a byte count, or a rounded "1.2K".
_SIZE = re.compile(r"\s*(?P<num>\d+(?:\.\d+)?)(?P<unit>[KMGTPE]?)(?:i?B)?(?:\s|$)")

# Tags that end one listing row (the next row's anchor starts a new one).
_ROW_END_TAGS = frozenset({"tr", "li", "pre", "table", "ul", "ol", "p", "div", "br", "hr"})
_CELL_TAGS = frozenset({"td", "th"})


@dataclass
class _Anchor:
    href: str
    trailing: list[str] = field(default_factory=list)


class _AnchorCollector(HTMLParser):
    """Collects each link with the text that follows it on the same row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[_Anchor] = []
        self._row: _Anchor | None = None  # the link whose row we are reading
        self._in_anchor = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            self._row = _Anchor(href) if href is not None else None
            if self._row is not None:
                self.anchors.append(self._row)
            self._in_anchor = True
        elif tag in _ROW_END_TAGS:
            self._row = None
        elif tag in _CELL_TAGS and self._row is not None:
            self._row.trailing.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False
        elif tag in _ROW_END_TAGS:
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is None or self._in_anchor:
            return
        # Inside <pre>, a line break ends the row.
        line, newline, _ = data.partition("\n")
        self._row.trailing.append(line)
        if newline:
            self._row = None


def parse_html(text: str, page_url: str) -> IndexPage:
    """Parse an HTML index page; only links to direct children count."""
    collector = _AnchorCollector()
    collector.feed(text)
    collector.close()
    listing = IndexPage(ListingFormat.HTML)
    by_name: dict[str, int] = {}
    for anchor in collector.anchors:
        child = _child_component(anchor.href, page_url)
        if child is None:
            continue
        raw, is_dir = child
        name = decode_component(raw)
        if name is None:
            if raw not in listing.rejected:
                listing.rejected.append(raw)
            continue
        row = "".join(anchor.trailing)
        mtime, rest, seconds = _parse_row_time(row)
        listing.minute_times |= mtime is not None and not seconds
        # Without a date this is not an index row we understand; a number in
        # it could be anything, so the size stays unknown.
        size = None if is_dir or mtime is None else _exact_size(rest)
        entry = ListedEntry(name, is_dir, size, mtime)
        seen = by_name.get(name)
        if seen is None:
            by_name[name] = len(listing.entries)
            listing.entries.append(entry)
        elif listing.entries[seen].mtime is None and entry.mtime is not None:
            # Icon links come first and carry no row details; prefer the text link.
            listing.entries[seen] = entry
    return listing


def _child_component(href: str, page_url: str) -> tuple[str, bool] | None:
    """The raw (still encoded) name and is_dir if `href` is a direct child."""
    target = urlsplit(urljoin(page_url, href))
    page = urlsplit(page_url)
    if target.query or target.fragment:
        return None  # sort links (?C=N;O=D) and in-page anchors
    if (target.scheme, target.netloc.lower()) != (page.scheme, page.netloc.lower()):
        return None
    is_dir = target.path.endswith("/")
    segments = target.path.split("/")
    if is_dir:
        segments.pop()
    parent = page.path.split("/")[:-1]  # page_url ends with '/'
    if len(segments) != len(parent) + 1:
        return None
    # Servers differ in which characters they escape, so compare decoded.
    if [unquote(s) for s in segments[:-1]] != [unquote(s) for s in parent]:
        return None
    return segments[-1], is_dir


def _parse_row_time(row: str) -> tuple[float | None, str, bool]:
    """The row's timestamp (read as UTC), the text after it, and whether the
    timestamp shows seconds."""
    for pattern in _DATE_PATTERNS:
        match = pattern.search(row)
        if match is None:
            continue
        fields = match.groupdict()
        month = int(fields["m"]) if fields.get("m") else _MONTHS.get(fields["mon"].lower())
        if month is None:
            continue
        stamp = (
            int(fields["y"]), month, int(fields["d"]),
            int(fields["H"]), int(fields["M"]), int(fields["S"] or 0),
        )
        try:
            return float(calendar.timegm(stamp)), row[match.end():], fields["S"] is not None
        except (ValueError, OverflowError):
            continue
    return None, row, False


def _exact_size(rest: str) -> int | None:
    """A byte count if the size column shows one exactly, else None."""
    match = _SIZE.match(rest)
    if match is None or match.group("unit") or "." in match.group("num"):
        return None
    return int(match.group("num"))
