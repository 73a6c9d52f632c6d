"""A remote backed by a plain HTTP server that serves directory indexes.

Directories are read from the server's index pages (see `listing`), objects
are described by HEAD and read with single-range GETs. Works with nginx
autoindex (HTML or JSON) and Apache mod_autoindex, through an optional proxy.

A cached object's bytes all come from one version: the first GET pins the
strongest validator the server gives (ETag, else Last-Modified to the
second), later GETs ask for it (If-Match, or If-Range for a date) and are
refused if they answer another validator or another total size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import quote, unquote

import httpx
import trio

from ..base import (
    AccessDenied,
    BadResponse,
    NotFound,
    Pin,
    RemoteEntry,
    RemoteError,
    Unreachable,
    VersionChanged,
)
from .client import (
    ClientOwner,
    RetryPolicy,
    ServedRange,
    adopt_pin,
    check_pin,
    check_range_answer,
    make_client,
    ListingBody,
    precondition_headers,
    range_header,
    ranged_read,
    read_error_body,
    send_with_retries,
    served_validator,
)
from ..limits import RequestLimits
from ..names import valid_name
from .client import parse_http_date
from .listing import (
    JsonListingStream,
    ListedEntry,
    IndexPage,
    ListingFormat,
    NotAListing,
    detect_format,
    parse_listing,
)

log = logging.getLogger(__name__)

# Each try waits BACKOFF_BASE_S * 2**n before the next: 0.1 s, then 0.2 s.
ATTEMPTS = 3
BACKOFF_BASE_S = 0.1
RETRIES = RetryPolicy(attempts=ATTEMPTS, base_delay_s=BACKOFF_BASE_S)
# HEAD requests one listing may have in flight, to find exact sizes.
HEAD_CONCURRENCY = 8
# Entries of a streamed JSON index handed on at a time.
LISTING_BATCH = 1000
HTTP_PRECONDITION_FAILED = 412

SECONDS_PER_MINUTE = 60
# Time zone offsets are whole quarter hours and at most 14 hours.
ZONE_STEP_S = 15 * SECONDS_PER_MINUTE
MAX_ZONE_OFFSET_S = 14 * 3600


def make_version(size: int, mtime: float) -> str:
    """The version of an object of `size` bytes last modified at `mtime`.

    nginx's HTML index shows times to the minute only, and list_dir must give
    the same version as stat (which sees Last-Modified to the second), so the
    version keeps only the minute. No index page shows the ETag, so a rewrite
    that keeps the size and lands in the same minute keeps the version: what
    tells it is the Pin (base.py), the validator of the first answer, which
    every later ranged GET of the cached object must carry.
    """
    return f"{size}-{int(mtime) // SECONDS_PER_MINUTE}"


def _parse_version(version: str) -> tuple[int, int] | None:
    size, sep, minute = version.partition("-")
    if not sep or not size.isdigit() or not minute.lstrip("-").isdigit():
        return None
    return int(size), int(minute)


class HttpIndexRemote(ClientOwner):
    """A read-only store at an HTTP base URL ending in '/'."""

    def __init__(
        self,
        base_url: str,
        *,
        proxy: str | None = None,
        auth: tuple[str, str] | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        """`auth` is HTTP basic auth; `base_url` must not carry credentials,
        since `source` shows in the mount table, logs and the cache."""
        if not base_url.endswith("/"):
            base_url += "/"
        self.source = base_url
        self._client = make_client(proxy, auth, limits)
        self._head_limiter = trio.CapacityLimiter(HEAD_CONCURRENCY)
        self._warned_names: set[tuple[str, str]] = set()
        # Whether each directory's index shows times to the minute only, and
        # what the last index showed, for directories not listed yet.
        self._minute_dirs: dict[str, bool] = {}
        self._minute_times = False

    # ------------------------------------------------------------ listing

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        url = self._url(path, directory=True)
        response = await self._send("GET", url, follow_redirects=True)
        if response.status_code != 200:
            _raise_for_status(response, url)
        try:
            listing = parse_listing(
                response.content, response.headers.get("content-type"), str(response.url)
            )
        except NotAListing as exc:
            raise BadResponse(f"{url}: {exc}") from None
        return await self._described(path, listing)

    async def _described(self, path: str, listing: IndexPage) -> list[RemoteEntry]:
        """The entries of a parsed index page, with HEADs for what it leaves unsaid."""
        self._warn_rejected(path, listing.rejected)

        # Every file shows its time at the precision of its index page, also
        # where a HEAD tells seconds: HEADs come and go (see `stat`).
        self._minute_dirs[path] = self._minute_times = listing.minute_times
        heads = await self._stat_many(path, _names_to_head(listing))
        offset = 0 if listing.times_are_exact else _zone_offset(listing.entries, heads)
        entries = []
        for item in listing.entries:
            if item.name in heads:
                entries.append(heads[item.name])
            elif item.is_dir or item.size is not None:
                entries.append(_entry_from_listing(item, offset))
            # else: HEAD said it is gone since the listing; leave it out.
        return entries

    @asynccontextmanager
    async def list_dir_pages(self, path: str) -> AsyncIterator[AsyncIterator[list[RemoteEntry]]]:
        """The entries of directory `path` in batches as the page arrives.

        nginx's JSON index is parsed as it streams in, so a directory of a
        million files is never held whole; an HTML page is read whole
        (within --max-listing-size) and given as one batch.
        """
        url = self._url(path, directory=True)
        response = await self._send("GET", url, stream=True, follow_redirects=True)
        try:
            if response.status_code != 200:
                await read_error_body(response, f"GET {url}")
                _raise_for_status(response, url)
            yield self._listing_batches(path, url, response)
        finally:
            await response.aclose()

    async def _listing_batches(
        self, path: str, url: str, response: httpx.Response
    ) -> AsyncIterator[list[RemoteEntry]]:
        limits = self._client.request_limits
        body = ListingBody(response, url, limits)
        content_type = response.headers.get("content-type")
        first = b""
        async for first in body:
            if first.strip():
                break
        try:
            fmt = detect_format(first, content_type)
        except NotAListing as exc:
            raise BadResponse(f"{url}: {exc}") from None
        if fmt is not ListingFormat.JSON:
            rest = [first]
            async for piece in body:
                rest.append(piece)
            try:
                listing = parse_listing(b"".join(rest), content_type, str(response.url))
            except NotAListing as exc:
                raise BadResponse(f"{url}: {exc}") from None
            yield await self._described(path, listing)
            return
        stream = JsonListingStream()
        try:
            items = stream.feed(first)
            async for piece in body:
                items += stream.feed(piece)
                if len(items) >= LISTING_BATCH:
                    yield await self._described(path, IndexPage(ListingFormat.JSON, items, stream.rejected))
                    items, stream.rejected = [], []
            items += stream.close()
        except NotAListing as exc:
            raise BadResponse(f"{url}: {exc}") from None
        yield await self._described(path, IndexPage(ListingFormat.JSON, items, stream.rejected))

    def _warn_rejected(self, path: str, rejected: list[str]) -> None:
        for raw in rejected:
            if (path, raw) not in self._warned_names:
                self._warned_names.add((path, raw))
                log.warning("%s: skipping unusable name %r in /%s", self.source, raw, path)

    async def _stat_many(self, directory: str, names: list[str]) -> dict[str, RemoteEntry]:
        """stat() each name concurrently; names that vanished are left out."""
        found: dict[str, RemoteEntry] = {}
        failures: list[RemoteError] = []

        async def stat_one(name: str) -> None:
            async with self._head_limiter:
                try:
                    found[name] = await self.stat(_join(directory, name))
                except NotFound:
                    pass
                except RemoteError as exc:
                    failures.append(exc)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(stat_one, name)
        if failures:
            raise failures[0]
        return found

    # --------------------------------------------------------------- stat

    async def stat(self, path: str) -> RemoteEntry:
        name = path.rsplit("/", 1)[-1]
        if not path:
            await self._head_directory(self.source)
            return RemoteEntry(name="", is_dir=True)
        url = self._url(path)
        response = await self._send("HEAD", url, follow_redirects=False)
        if response.is_redirect and response.next_request is not None:
            target = response.next_request.url
            if unquote(target.path) == unquote(httpx.URL(url + "/").path):
                return RemoteEntry(name=name, is_dir=True)
            # A file served from elsewhere (a mirror, a CDN): ask there.
            response = await self._send("HEAD", str(target), follow_redirects=True)
        elif response.status_code == 404:
            # Some servers only know a directory by its URL with the slash.
            await self._head_directory(url + "/")
            return RemoteEntry(name=name, is_dir=True)
        if response.status_code != 200:
            _raise_for_status(response, url)
        if response.url.path.endswith("/"):
            return RemoteEntry(name=name, is_dir=True)
        entry = _entry_from_head(name, response, url)
        directory = path.rpartition("/")[0]
        if self._minute_dirs.get(directory, self._minute_times):
            # Its index shows minutes: so must this, or the same file would
            # show 04:05:00 listed and 04:05:06 once a HEAD was made.
            entry = dataclasses.replace(entry, mtime=_to_minute(entry.mtime))
        return entry

    async def _head_directory(self, url: str) -> None:
        response = await self._send("HEAD", url, follow_redirects=True)
        if response.status_code != 200:
            _raise_for_status(response, url)

    # --------------------------------------------------------------- read

    def read_range(
        self, path: str, start: int, end: int, version: str, pin: Pin | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        async def send() -> tuple[httpx.Response, str]:
            url = self._url(path)
            headers = range_header(start, end, None if pin is None else pin.size)
            headers.update(precondition_headers(pin))
            return await self._send("GET", url, headers=headers, stream=True, follow_redirects=True), url

        async def check(response: httpx.Response, url: str) -> ServedRange:
            return self._check_range_response(response, url, start, end, version, pin)

        return ranged_read(start, end, send, check)

    def _check_range_response(
        self, response: httpx.Response, url: str, start: int, end: int, version: str, pin: Pin | None
    ) -> ServedRange:
        status = response.status_code
        if status == HTTP_PRECONDITION_FAILED and pin is not None and pin.validator:
            raise VersionChanged(f"{url}: no longer the pinned version {pin.validator!r} (HTTP 412)")
        if status == 416 and version:
            raise VersionChanged(f"{url}: range {start}-{end - 1} no longer exists")
        if status not in (200, 206):
            _raise_for_status(response, url)
        # The validator first: a changed object answers an If-Range with a
        # 200 of the whole, which is no reason to retry.
        served = served_validator(response)
        check_pin(pin, served, None, url)
        answer = check_range_answer(response, url, start, end, None if pin is None else pin.size)
        check_pin(pin, served, answer.total, url)
        _check_version(version, answer.total, response.headers.get("last-modified"), url)
        adopt_pin(pin, served)
        return answer

    # ------------------------------------------------------------ helpers

    def _url(self, path: str, *, directory: bool = False) -> str:
        if not path:
            return self.source
        parts = path.split("/")
        if any(valid_name(part) is None for part in parts):
            raise NotFound(f"{self.source}: invalid path {path!r}")
        url = self.source + "/".join(quote(part, safe="") for part in parts)
        return url + "/" if directory else url

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        follow_redirects: bool,
    ) -> httpx.Response:
        """Send with bounded retries of transport errors and transient 5xx."""

        async def build() -> httpx.Request:
            return self._client.build_request(method, url, headers=headers)

        return await send_with_retries(
            self._client,
            build,
            RETRIES,
            what=f"{method} {url}",
            stream=stream,
            follow_redirects=follow_redirects,
        )


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _names_to_head(listing: IndexPage) -> list[str]:
    """Files the listing does not describe exactly, plus one to learn its clock.

    HTML indexes print times in the server's display zone (Apache: local
    time; nginx with autoindex_localtime), so one HEAD of a file tells us the
    offset to Last-Modified, which is always GMT.
    """
    files = [e for e in listing.entries if not e.is_dir]
    names = [e.name for e in files if e.size is None or e.mtime is None]
    if not listing.times_are_exact and not names:
        names = [e.name for e in files[:1]]
    return names


def _zone_offset(entries: list[ListedEntry], heads: dict[str, RemoteEntry]) -> int:
    """Seconds to add to the page's times to make them UTC (0 if unknown)."""
    for item in entries:
        head = heads.get(item.name)
        if head is None or head.is_dir or item.mtime is None:
            continue
        shown_minute = int(item.mtime) // SECONDS_PER_MINUTE * SECONDS_PER_MINUTE
        true_minute = int(head.mtime) // SECONDS_PER_MINUTE * SECONDS_PER_MINUTE
        offset = true_minute - shown_minute
        # Anything else means the file changed between the two requests.
        if offset % ZONE_STEP_S == 0 and abs(offset) <= MAX_ZONE_OFFSET_S:
            return offset
    return 0


def _to_minute(mtime: float) -> float:
    return float(int(mtime) // SECONDS_PER_MINUTE * SECONDS_PER_MINUTE)


def _entry_from_listing(item: ListedEntry, offset: int) -> RemoteEntry:
    mtime = item.mtime + offset if item.mtime is not None else 0.0
    if item.is_dir:
        return RemoteEntry(name=item.name, is_dir=True, mtime=mtime)
    size = item.size or 0
    return RemoteEntry(item.name, False, size, mtime, make_version(size, mtime))


def _entry_from_head(name: str, response: httpx.Response, url: str) -> RemoteEntry:
    length = response.headers.get("content-length", "")
    if not length.isdigit():
        raise BadResponse(f"{url}: HEAD gave no Content-Length")
    size = int(length)
    mtime = parse_http_date(response.headers.get("last-modified")) or 0.0
    return RemoteEntry(name, False, size, mtime, make_version(size, mtime))


def _check_version(version: str, total: int | None, last_modified: str | None, url: str) -> None:
    """Raise VersionChanged if what the server reports contradicts `version`."""
    if not version:
        return
    expected = _parse_version(version)
    if expected is None:
        raise VersionChanged(f"{url}: version {version!r} is not one of ours")
    size, minute = expected
    if total is not None and total != size:
        raise VersionChanged(f"{url}: size is now {total}, expected {size}")
    mtime = parse_http_date(last_modified)
    if mtime is not None and int(mtime) // SECONDS_PER_MINUTE != minute:
        raise VersionChanged(f"{url}: modified at {last_modified}")


def _raise_for_status(response: httpx.Response, url: str) -> None:
    code = response.status_code
    if code in (404, 410):
        raise NotFound(f"{url}: HTTP {code}")
    if code in (401, 403):
        raise AccessDenied(f"{url}: HTTP {code}")
    if code >= 500:
        raise Unreachable(f"{url}: HTTP {code}")
    raise BadResponse(f"{url}: unexpected HTTP {code}")
