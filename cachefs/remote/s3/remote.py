"""A remote backed by an S3 bucket (AWS or any S3-compatible store).

Directories are ListObjectsV2 with delimiter '/', so a key "a/b/c" makes "a"
and "a/b" directories whether or not "a/" exists as an object; objects are
described by HEAD and read with ranged GETs pinned to the listed ETag
(If-Match), so a rewritten object is never mixed with the old one.

Keys that cannot be path names (empty segments, '.', '..', NUL, components
over 255 bytes) are skipped with one warning each; `names` decides.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx

from ..base import BadResponse, NotFound, Pin, RemoteEntry, RemoteError, VersionChanged
from ..http.client import (
    ClientOwner,
    RetryPolicy,
    ServedRange,
    adopt_pin,
    check_pin,
    check_range_answer,
    make_client,
    precondition_headers,
    range_header,
    ranged_read,
    read_error_body,
    send_with_retries,
    served_validator,
)
from ..http.client import parse_http_date
from ..limits import RequestLimits
from ..names import valid_name
from .address import (
    BucketUrls,
    S3Location,
    S3Options,
    aws_endpoint,
    check_endpoint,
    needs_path_style,
)
from .errors import error_for
from .signing import AnonymousSigner, Signer, SigV4Signer, make_session, resolve_region
from .xml import ListedObject, ListPage, normalize_etag, parse_error, parse_list_page

log = logging.getLogger(__name__)

DELIMITER = "/"
# S3 answers SlowDown (503) when a prefix is hot and asks for exponential
# backoff: more patience than a plain HTTP server gets, but bounded (about
# 3 s of waiting in all).
RETRIES = RetryPolicy(attempts=5, base_delay_s=0.2, max_delay_s=2.0)
# A listing that keeps handing out continuation tokens is cut off here
# (1000 keys a page: ten million keys in one directory).
MAX_LIST_PAGES = 10_000
HTTP_PRECONDITION_FAILED = 412
HTTP_RANGE_NOT_SATISFIABLE = 416


class S3Remote(ClientOwner):
    """A read-only view of the keys under a bucket prefix."""

    def __init__(
        self,
        location: S3Location,
        options: S3Options,
        *,
        proxy: str | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        session = make_session(options.profile)
        self._region = resolve_region(session, options.region)
        endpoint = check_endpoint(options.endpoint_url or aws_endpoint(self._region))
        path_style = options.force_path_style or needs_path_style(endpoint, location.bucket)
        self._urls = BucketUrls(endpoint, location.bucket, path_style)
        self._location = location
        # The cache keeps one folder per source: a bucket of the same name on
        # another endpoint must not share it.
        suffix = f" at {endpoint}" if options.endpoint_url else ""
        self.source = location.uri + suffix
        self._signer: Signer = (
            AnonymousSigner()
            if options.no_sign_request
            else SigV4Signer(session, self._region, location.uri)
        )
        self._client = make_client(proxy, request_limits=limits)
        self._warned: set[str] = set()

    # ------------------------------------------------------------ listing

    async def list_dir(self, path: str) -> list[RemoteEntry]:
        prefix = self._dir_prefix(path)
        pages = await self._all_pages(prefix)
        seen_anything = any(page.objects or page.prefixes for page in pages)
        if path and not seen_anything:
            # Not even a "dir/" marker object: there is no such directory.
            raise NotFound(f"{self._location.uri}: no keys under {prefix!r}")
        return self._page_entries(path, prefix, pages)

    @asynccontextmanager
    async def list_dir_pages(self, path: str) -> AsyncIterator[AsyncIterator[list[RemoteEntry]]]:
        """`list_dir` a page (1000 keys) at a time, each page as it comes:
        a prefix of millions of keys is never held whole. Each response is
        capped by --max-listing-size on its own."""
        yield self._listing_batches(path)

    async def _listing_batches(self, path: str) -> AsyncIterator[list[RemoteEntry]]:
        prefix = self._dir_prefix(path)
        budget = self._client.request_limits.max_listing_bytes
        token: str | None = None
        for number in range(MAX_LIST_PAGES):
            page, _ = await self._sized_list_page(prefix, token, budget)
            if number == 0 and path and not (page.objects or page.prefixes):
                # Not even a "dir/" marker object: there is no such directory.
                raise NotFound(f"{self._location.uri}: no keys under {prefix!r}")
            yield self._page_entries(path, prefix, [page])
            if page.next_token is None:
                return
            if page.next_token == token:
                raise BadResponse(f"{self._location.uri}: listing repeats its continuation token")
            token = page.next_token
        raise BadResponse(f"{self._location.uri}: listing of {prefix!r} never ends")

    def _page_entries(self, path: str, prefix: str, pages: list[ListPage]) -> list[RemoteEntry]:
        files: dict[str, RemoteEntry] = {}
        dirs: dict[str, RemoteEntry] = {}
        for page in pages:
            for obj in page.objects:
                name = self._child_name(path, prefix, obj.key)
                if name is not None:
                    files[name] = _file_entry(name, obj)
            for common in page.prefixes:
                name = self._child_name(path, prefix, common, directory=True)
                if name is not None:
                    dirs[name] = RemoteEntry(name=name, is_dir=True)
        for name in files.keys() & dirs.keys():
            # "x" and "x/..." both exist; a file cannot hold the subtree, so
            # the directory wins and the object "x" is left out.
            self._warn(prefix + name, "an object and a directory share this name")
            del files[name]
        return [*dirs.values(), *files.values()]

    async def _all_pages(self, prefix: str) -> list[ListPage]:
        """Every page of the listing of `prefix`, following continuation tokens."""
        pages: list[ListPage] = []
        token: str | None = None
        # The cap is on all pages together: they are all held until the end.
        budget = self._client.request_limits.max_listing_bytes
        for _ in range(MAX_LIST_PAGES):
            page, size = await self._sized_list_page(prefix, token, budget)
            budget -= size
            pages.append(page)
            if page.next_token is None:
                return pages
            if page.next_token == token:
                raise BadResponse(f"{self._location.uri}: listing repeats its continuation token")
            token = page.next_token
        raise BadResponse(f"{self._location.uri}: listing of {prefix!r} never ends")

    async def _list_page(
        self, prefix: str, token: str | None, max_keys: int | None = None
    ) -> ListPage:
        return (await self._sized_list_page(prefix, token, None, max_keys))[0]

    async def _sized_list_page(
        self, prefix: str, token: str | None, budget: int | None, max_keys: int | None = None
    ) -> tuple[ListPage, int]:
        """One page of a listing, and the size of its body (at most `budget`)."""
        params = {"list-type": "2", "delimiter": DELIMITER, "encoding-type": "url"}
        if prefix:
            params["prefix"] = prefix
        if token is not None:
            params["continuation-token"] = token
        if max_keys is not None:
            params["max-keys"] = str(max_keys)
        url = self._urls.bucket_url(params)
        response = await self._send("GET", url, body_limit=budget)
        if response.status_code != httpx.codes.OK:
            raise self._error(response, f"list {prefix or '/'}")
        return parse_list_page(response.content, url), len(response.content)

    def _child_name(
        self, path: str, prefix: str, key: str, *, directory: bool = False
    ) -> str | None:
        """The name `key` gives directly under `prefix`, or None to skip it."""
        if not key.startswith(prefix):
            raise BadResponse(f"{self._location.uri}: listed {key!r} outside {prefix!r}")
        rest = key[len(prefix) :]
        if directory:
            rest = rest.removesuffix(DELIMITER)
        elif not rest:
            return None  # the directory's own marker object, "dir/"
        name = valid_name(rest)
        if name is None:
            self._warn(key, "not usable as a file name")
        return name

    def _warn(self, key: str, why: str) -> None:
        # Once per key: listings are fetched again whenever they expire.
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: skipping key %r: %s", self._location.uri, key, why)

    # --------------------------------------------------------------- stat

    async def stat(self, path: str) -> RemoteEntry:
        if not path:
            # Also tells a missing bucket or refused access from an empty one.
            await self._list_page(self._location.prefix, None, max_keys=1)
            return RemoteEntry(name="", is_dir=True)
        name = path.rsplit(DELIMITER, 1)[-1]
        url = self._urls.object_url(self._key(path))
        response = await self._send("HEAD", url)
        if response.status_code == httpx.codes.OK:
            return _entry_from_head(name, response, url)
        if response.status_code != httpx.codes.NOT_FOUND:
            raise self._error(response, f"HEAD {path}")
        # No such object: a directory if any key lies below it.
        page = await self._list_page(self._dir_prefix(path), None, max_keys=1)
        if page.objects or page.prefixes:
            return RemoteEntry(name=name, is_dir=True)
        raise NotFound(f"{self._location.uri}: no key {path!r}")

    # --------------------------------------------------------------- read

    def read_range(
        self, path: str, start: int, end: int, version: str, pin: Pin | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        async def send() -> tuple[httpx.Response, str]:
            url = self._urls.object_url(self._key(path))
            headers = range_header(start, end, None if pin is None else pin.size)
            headers.update(precondition_headers(pin))
            if version:
                # S3 then refuses (412) rather than serve another version's bytes.
                headers["If-Match"] = f'"{version}"'
            return await self._send("GET", url, headers=headers, stream=True), url

        async def check(response: httpx.Response, url: str) -> ServedRange:
            return await self._check_range_response(response, path, url, start, end, version, pin)

        return ranged_read(start, end, send, check)

    async def _check_range_response(
        self, response: httpx.Response, path: str, url: str, start: int, end: int, version: str,
        pin: Pin | None,
    ) -> ServedRange:
        status = response.status_code
        if (version or (pin is not None and pin.validator)) and status in (
                HTTP_PRECONDITION_FAILED, HTTP_RANGE_NOT_SATISFIABLE):
            raise VersionChanged(f"{url}: no longer version {version!r} (HTTP {status})")
        if status not in (httpx.codes.OK, httpx.codes.PARTIAL_CONTENT):
            await read_error_body(response, f"GET {path}")
            raise self._error(response, f"GET {path}")
        # Stores that ignore If-Match still report the ETag they served.
        served = normalize_etag(response.headers.get("etag", ""))
        if version and served and served != version:
            raise VersionChanged(f"{url}: ETag is now {served!r}, expected {version!r}")
        validator = served_validator(response)
        check_pin(pin, validator, None, url)
        answer = check_range_answer(response, url, start, end, None if pin is None else pin.size)
        check_pin(pin, validator, answer.total, url)
        adopt_pin(pin, validator)
        return answer

    # ------------------------------------------------------------ helpers

    def _key(self, path: str) -> str:
        parts = path.split(DELIMITER)
        if any(valid_name(part) is None for part in parts):
            raise NotFound(f"{self._location.uri}: invalid path {path!r}")
        return self._location.prefix + path

    def _dir_prefix(self, path: str) -> str:
        return self._key(path) + DELIMITER if path else self._location.prefix

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        body_limit: int | None = None,
    ) -> httpx.Response:
        # Signed again for every try: a retry gets a fresh date and, if they
        # were due for a refresh, fresh credentials.
        async def build_signed() -> httpx.Request:
            request = self._client.build_request(method, url, headers=headers)
            await self._signer.sign(request)
            return request

        return await send_with_retries(
            self._client,
            build_signed,
            RETRIES,
            what=f"{method} {url}",
            stream=stream,
            body_limit=body_limit,
        )

    def _error(self, response: httpx.Response, what: str) -> RemoteError:
        # Callers have read the body: error documents are small.
        return error_for(
            response, parse_error(response.content), what, bucket=self._location.bucket, where=self._location.uri
        )


def _file_entry(name: str, obj: ListedObject) -> RemoteEntry:
    return RemoteEntry(name=name, is_dir=False, size=obj.size, mtime=obj.mtime, version=obj.etag)


def _entry_from_head(name: str, response: httpx.Response, url: str) -> RemoteEntry:
    length = response.headers.get("content-length", "")
    if not length.isdigit():
        raise BadResponse(f"{url}: HEAD gave no Content-Length")
    mtime = parse_http_date(response.headers.get("last-modified")) or 0.0
    etag = normalize_etag(response.headers.get("etag", ""))
    return RemoteEntry(name, False, int(length), mtime, etag)
