"""HTTP plumbing shared by the remotes: one client setup, bounded retries, and
checks that a ranged GET answered exactly the bytes asked for.

Both `http_index` and `s3` fetch object bytes with single-range GETs over
httpx; everything here is about trusting those answers no more than they
deserve: a range response must say it is the range we asked for, in identity
coding, and its body must be exactly that long. Nor is a server trusted to
finish: every request has a deadline that only a body arriving at a minimum
rate extends, and a listing has a size cap (RequestLimits).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import functools
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ..base import BadResponse, Pin, Unreachable, VersionChanged
from .proxies import Proxy, ProxyChoice
from ..limits import RequestLimits
from .transport import DEADLINE_ENFORCED, DEADLINE_EXTENSION, Deadline, Http11Transport

MAX_CONNECTIONS = 16
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# 5xx answers that usually mean "try again shortly" (overload, restarts).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# Error documents (S3's XML) are a few hundred bytes.
MAX_ERROR_BODY = 64 * 1024

HTTP_OK = 200
HTTP_PARTIAL = 206

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try a request, and how long to wait between tries.

    Try n (counting from 0) waits `base_delay_s * 2**(n-1)` before it starts,
    capped at `max_delay_s`, so the whole sequence has a known bound.
    """

    attempts: int
    base_delay_s: float
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return 0.0 if attempt == 0 else min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)


class RemoteClient(httpx.AsyncClient):
    """httpx's client over our transport, plus a short way to send body-less requests.

    A cold read of small files sends one GET per file, and httpx's client
    adds about 0.1 ms of CPU to each (cookies, auth and redirect machinery
    we do not use). `send_quick` hands such requests straight to our
    transport, and falls back to `send` for everything else, and for
    redirects.
    """

    def __init__(self, *, http11: Http11Transport, request_limits: RequestLimits, **kwargs: Any) -> None:
        super().__init__(transport=http11, **kwargs)
        self._http11 = http11
        self.request_limits = request_limits

    async def send_quick(
        self, request: httpx.Request, *, stream: bool, follow_redirects: bool
    ) -> httpx.Response:
        if not self._http11.handles(request):
            return await self.send(request, stream=stream, follow_redirects=follow_redirects)
        response = await self._http11.handle_async_request(request)
        response.request = request
        try:
            if response.has_redirect_location:
                # Rare (directories, mirrors): the client follows it, or
                # prepares `next_request` for a caller who does.
                await response.aclose()
                return await self.send(request, stream=stream, follow_redirects=follow_redirects)
            if not stream:
                await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response


class ClientOwner:
    """A remote that owns one httpx client: `aclose` closes it, and the remote
    is an async context manager."""

    _client: RemoteClient

    async def __aenter__(self) -> "ClientOwner":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(
    proxy: str | None = None,
    auth: tuple[str, str] | None = None,
    request_limits: RequestLimits | None = None,
) -> RemoteClient:
    """An async client for object reads: identity coding, bounded waits."""
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    headers = {"Accept-Encoding": "identity"}  # raw bytes must be the object's bytes
    if auth is not None:
        # Sent with every request, as httpx's BasicAuth would; httpx drops
        # it from redirects to another origin.
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    # Our transport carries every request: it picks the proxy (explicit, or
    # from HTTP(S)_PROXY / NO_PROXY) and hands what it does not send itself
    # (bodies, https:// proxies) to httpx's transport for that proxy. httpx
    # reads no proxy variable itself when given a transport.
    def fallback(via: Proxy | None) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(limits=limits, trust_env=True,
                                        proxy=str(via.url) if via else None)

    http11 = Http11Transport(fallback, max_connections=MAX_CONNECTIONS, proxies=ProxyChoice(proxy))
    return RemoteClient(
        http11=http11,
        request_limits=request_limits or RequestLimits(),
        trust_env=True,
        headers=headers,
        limits=limits,
        # No pool timeout: a request waiting for a free connection waits for
        # transfers that have their own read timeouts.
        timeout=httpx.Timeout(
            connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S, write=READ_TIMEOUT_S, pool=None
        ),
    )


async def send_with_retries(
    client: RemoteClient,
    build: Callable[[], Awaitable[httpx.Request]],
    policy: RetryPolicy,
    *,
    what: str,
    stream: bool = False,
    follow_redirects: bool = False,
    body_limit: int | None = None,
) -> httpx.Response:
    """Send the request `await build()` makes, retrying transport errors and transient
    statuses per `policy`; raise Unreachable once the tries are used up.

    `build` runs once per try so a signed request gets a fresh signature (and
    fresh credentials) each time. `what` names the request in errors; it must
    not hold secrets.

    All tries together, and the body, are bounded by the client's
    RequestLimits: a body read here (not `stream`) is a listing or an error
    document, and may hold at most `body_limit` bytes (default: the limits'
    max_listing_bytes). Every httpx error becomes a RemoteError.
    """
    limits = client.request_limits
    deadline = limits.deadline()
    failure = ""
    with deadline.enforced() as scope:
        for attempt in range(policy.attempts):
            if attempt:
                await trio.sleep(policy.delay(attempt))
            request = await build()
            request.extensions[DEADLINE_EXTENSION] = deadline
            try:
                response = await client.send_quick(request, stream=True, follow_redirects=follow_redirects)
            except httpx.UnsupportedProtocol as exc:
                raise Unreachable(f"{what}: {exc}") from None
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            except httpx.TooManyRedirects:
                raise BadResponse(f"{what}: redirect loop (too many redirects)") from None
            except httpx.HTTPError as exc:
                raise BadResponse(f"{what}: {type(exc).__name__}: {exc}") from None
            if response.status_code in RETRY_STATUSES:
                failure = f"HTTP {response.status_code}"
                await _close(response)
                continue
            if stream:
                return response
            limit = limits.max_listing_bytes if body_limit is None else body_limit
            try:
                await _read_capped(response, limit, deadline, lambda: limits.too_large(what))
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            except httpx.DecodingError:
                coding = response.headers.get("content-encoding", "")
                raise BadResponse(f"{what}: body cannot be decoded (Content-Encoding {coding!r})") from None
            except httpx.HTTPError as exc:
                raise BadResponse(f"{what}: {type(exc).__name__}: {exc}") from None
            finally:
                await _close(response)
            return response
    if scope.cancelled_caught or deadline.passed:
        raise limits.too_slow(what)
    raise Unreachable(f"{what}: {failure} (after {policy.attempts} attempts)")


async def _close(response: httpx.Response) -> None:
    # Also when the request's deadline has cancelled us: the connection must
    # go back to the pool (or be closed) either way.
    with trio.CancelScope(shield=True):
        await response.aclose()


async def read_error_body(response: httpx.Response, what: str) -> None:
    """Read the error document of a streamed response into `response.content`,
    within the request's deadline and at most MAX_ERROR_BODY bytes."""
    deadline = response.request.extensions.get(DEADLINE_EXTENSION) or Deadline(math.inf)
    with deadline.enforced() as scope:
        try:
            await _read_capped(response, MAX_ERROR_BODY, deadline,
                               lambda: BadResponse(f"{what}: HTTP {response.status_code} with an endless body"))
        except httpx.HTTPError as exc:
            raise BadResponse(f"{what}: HTTP {response.status_code}, then {type(exc).__name__}: {exc}") from None
    if scope.cancelled_caught:
        raise Unreachable(f"{what}: HTTP {response.status_code}, and its body too slow")


async def _read_capped(
    response: httpx.Response,
    limit: int,
    deadline: Deadline,
    too_large: Callable[[], BadResponse],
) -> None:
    """Read the body into `response.content`: at most `limit` bytes (as sent:
    before any content decoding), each of which moves `deadline` on."""
    response.stream = _CappedStream(response.stream, limit, deadline, too_large)
    await response.aread()


class _CappedStream(httpx.AsyncByteStream):
    """A body that raises `too_large()` past `limit` bytes, and earns time by
    its bytes for `deadline`."""

    def __init__(self, inner: Any, limit: int, deadline: Deadline,
                 too_large: Callable[[], BadResponse]) -> None:
        self._inner = inner
        self._limit = limit
        self._deadline = deadline
        self._too_large = too_large

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        async for piece in self._inner:
            received += len(piece)
            if received > self._limit:
                raise self._too_large()
            self._deadline.earn(len(piece))
            yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(frozen=True)
class ServedRange:
    """The bytes [start, end) an answer to a ranged GET holds, and the object's
    total size when the answer gives it. Wider than asked only when the server
    sent the whole object (it ignores Range): then (0, size)."""

    start: int
    end: int
    total: int | None


def check_range_answer(
    response: httpx.Response, url: str, start: int, end: int, size: int | None = None
) -> ServedRange:
    """Check that a 200 or 206 answer holds bytes [start, end), or the whole object.

    A Content-Range, with either status (`rclone serve s3` answers 200 with
    one), must be the range asked for. A 200 without one is the whole object
    (`python3 -m http.server` ignores Range): fine when `size`, the object's
    expected size, is known; the caller then gets more than it asked for
    (see WholeBody). Raises BadResponse for another range and for a content
    coding we did not ask for; other statuses are the caller's. A range
    asked with `range_header(start, end, size)` that reaches past `size`
    (the object is longer) raises VersionChanged.
    """
    status = response.status_code
    if status not in (HTTP_OK, HTTP_PARTIAL):
        raise ValueError(f"check_range_answer called for HTTP {status}")
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise BadResponse(f"{url}: unrequested Content-Encoding {coding!r}")
    content_range = response.headers.get("content-range")
    if status == HTTP_PARTIAL or content_range is not None:
        match = _CONTENT_RANGE.match(content_range or "")
        if match is None:
            raise BadResponse(f"{url}: {status} without a usable Content-Range")
        first, last, total = match.groups()
        if size is not None and end == size and (int(first), int(last)) == (start, end):
            # We asked for one byte past the expected end (range_header), and
            # it exists: with a total of "*" nothing else would tell.
            raise VersionChanged(f"{url}: the object is longer than {size} bytes")
        if (int(first), int(last) + 1) != (start, end):
            raise BadResponse(f"{url}: asked for {start}-{end - 1}, got {first}-{last}")
        return ServedRange(start, end, None if total == "*" else int(total))
    # A 200 without Content-Range is the whole object, whatever was asked:
    # its length is the object's size (check_pin compares it with the pin's).
    length = response.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise BadResponse(f"{url}: unusable Content-Length {length!r}")
    total = size if length is None else int(length)
    if total is None:
        raise BadResponse(f"{url}: server ignored the Range header and gave no length")
    return ServedRange(0, total, total)


@asynccontextmanager
async def ranged_read(
    start: int,
    end: int,
    send: Callable[[], Awaitable[tuple[httpx.Response, str]]],
    check: Callable[[httpx.Response, str], Awaitable[ServedRange]],
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The body of bytes [start, end) of one object, for `Remote.read_range`.

    `send` makes the ranged GET and returns it with its URL (for messages);
    `check` raises if the answer cannot be trusted (wrong range, version...)
    and says which bytes it holds. The body yields exactly end-start bytes
    or raises (a WholeBody can be asked for the whole object instead); both
    are closed after.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end})")
    if start == end:
        yield empty_body()
        return
    response, url = await send()
    body: ExactBody | WholeBody | None = None
    try:
        served = await check(response, url)
        if (served.start, served.end) == (start, end):
            body = ExactBody(response, end - start, url)
        elif served.start <= start and end <= served.end:
            body = WholeBody(response, served.end, start, end, url)
        else:
            raise BadResponse(f"{url}: the answer holds bytes {served.start}-{served.end - 1}, "
                              f"not {start}-{end - 1}")
        yield body
    finally:
        if body is not None:
            await body.aclose()
        await response.aclose()


def range_header(start: int, end: int, size: int | None = None) -> dict[str, str]:
    """The Range header for bytes [start, end) (end > start).

    When the range ends where the object is expected to end (`size`), it
    asks for one byte more: a server clamps the range to the object's real
    end, so an object longer than expected shows in the answer's range even
    when its Content-Range gives no total ("*"); check_range_answer checks it.
    """
    last = end if size is not None and end == size else end - 1
    return {"Range": f"bytes={start}-{last}"}


def served_validator(response: httpx.Response) -> str:
    """The strongest validator an answer gives: its ETag, else its
    Last-Modified to the second, else "" (the server gives none)."""
    etag = response.headers.get("etag", "").strip()
    if etag:
        return "etag:" + etag
    mtime = parse_http_date(response.headers.get("last-modified"))
    return "" if mtime is None else f"lm:{int(mtime)}"


def precondition_headers(pin: Pin | None) -> dict[str, str]:
    """Headers that make the server itself refuse to serve another version
    than the pinned one: If-Match for a strong ETag (412 if it changed),
    If-Range for a Last-Modified (the whole new object, with its own
    validator, instead of a range). A weak ETag can be neither (RFC 9110
    13.1.1, 13.1.5); its answers are only compared."""
    if pin is None or not pin.validator:
        return {}
    kind, _, value = pin.validator.partition(":")
    if kind == "etag" and not value.startswith("W/"):
        return {"If-Match": value}
    if kind == "lm" and value.lstrip("-").isdigit():
        return {"If-Range": email.utils.formatdate(int(value), usegmt=True)}
    return {}


def check_pin(pin: Pin | None, served: str, total: int | None, url: str) -> None:
    """Raise VersionChanged if an answer is not of the pinned version: another
    total size, or another validator than the one pinned."""
    if pin is None:
        return
    if total is not None and total != pin.size:
        raise VersionChanged(f"{url}: size is now {total}, expected {pin.size}")
    if pin.validator is not None and served != pin.validator:
        raise VersionChanged(f"{url}: validator is now {served or 'none'!r}, pinned {pin.validator or 'none'!r}")


def adopt_pin(pin: Pin | None, served: str) -> None:
    """Pin the version of the first answer accepted; check_pin holds the rest to it."""
    if pin is not None and pin.validator is None:
        pin.validator = served


async def empty_body() -> AsyncIterator[bytes]:
    for chunk in ():
        yield chunk


class ListingBody:
    """The body of a streamed listing: at most the listing cap in all (as
    sent, before any content decoding), within the request's deadline,
    which each byte moves on; errors become RemoteErrors."""

    def __init__(self, response: httpx.Response, url: str, limits: RequestLimits) -> None:
        what = f"GET {url}"
        deadline = response.request.extensions.get(DEADLINE_EXTENSION) or limits.deadline()
        response.stream = _CappedStream(response.stream, limits.max_listing_bytes, deadline,
                                        lambda: limits.too_large(what))
        self._chunks = response.aiter_bytes()
        self._coding = response.headers.get("content-encoding", "")
        self._url = url
        self._deadline = deadline
        self._limits = limits
        # Our transport checks the deadline on every socket read; httpx's
        # transports do not, so their bodies are read under a cancel scope.
        self._guard = not response.extensions.get(DEADLINE_ENFORCED)

    def __aiter__(self) -> ListingBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            if self._guard:
                with trio.fail_at(self._deadline.at):
                    return await self._chunks.__anext__()
            return await self._chunks.__anext__()
        except trio.TooSlowError:
            raise self._limits.too_slow(f"GET {self._url}") from None
        except httpx.TimeoutException as exc:
            if self._deadline.passed:
                raise self._limits.too_slow(f"GET {self._url}") from None
            raise Unreachable(f"{self._url}: {type(exc).__name__} during body: {exc}") from None
        except httpx.DecodingError:
            raise BadResponse(f"GET {self._url}: body cannot be decoded (Content-Encoding {self._coding!r})") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"{self._url}: listing cut short: {exc}") from None
        except httpx.HTTPError as exc:
            raise BadResponse(f"{self._url}: {type(exc).__name__} during body: {exc}") from None


class ExactBody:
    """The body of a range response, checked to be exactly `expected` bytes.

    Chunks are passed on as the transport hands them over (what one socket
    read gave), never joined or re-sliced: aiter_raw(chunk_size=1 MiB)
    measured slower, since it joins small reads into a new buffer.
    """

    def __init__(self, response: httpx.Response, expected: int, url: str) -> None:
        self._chunks = response.aiter_raw()
        self._remaining = expected
        self._url = url
        self._deadline: Deadline | None = response.request.extensions.get(DEADLINE_EXTENSION)
        # Our transport checks the deadline on every socket read; httpx's
        # transports do not, so their bodies are read under a cancel scope.
        self._guard = self._deadline is not None and not response.extensions.get(DEADLINE_ENFORCED)

    def __aiter__(self) -> ExactBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            if self._guard:
                assert self._deadline is not None
                with trio.fail_at(self._deadline.at):
                    chunk = await self._chunks.__anext__()
            else:
                chunk = await self._chunks.__anext__()
        except trio.TooSlowError:
            raise Unreachable(f"{self._url}: body too slow (request deadline passed)") from None
        except StopAsyncIteration:
            if self._remaining:
                raise BadResponse(f"{self._url}: body {self._remaining} bytes short") from None
            raise
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{self._url}: {type(exc).__name__} during body: {exc}") from None
        except httpx.TransportError as exc:
            raise BadResponse(f"{self._url}: body cut short: {exc}") from None
        except httpx.HTTPError as exc:
            raise BadResponse(f"{self._url}: {type(exc).__name__} during body: {exc}") from None
        if self._deadline is not None:
            self._deadline.earn(len(chunk))
        self._remaining -= len(chunk)
        if self._remaining < 0:
            raise BadResponse(f"{self._url}: body longer than the requested range")
        return chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()


class WholeBody:
    """The body of a whole object sent for a range (the server ignores Range).

    It yields the bytes asked for, [start, end), as ExactBody would: those
    before are read and dropped, and it stops at `end`. After `take_whole()`
    it yields every byte of the object instead, from its first: a cache can
    keep them all, since they come anyway (base.take_whole_object).
    """

    def __init__(self, response: httpx.Response, size: int, start: int, end: int, url: str) -> None:
        self._body = ExactBody(response, size, url)
        self._start = start
        self._end = end
        self._pos = 0  # bytes of the object read so far
        self._whole = False

    def take_whole(self) -> bool:
        """Yield the whole object from its first byte; only before any is read."""
        if self._pos:
            raise RuntimeError("take_whole() after the body was read")
        self._whole = True
        return True

    def __aiter__(self) -> WholeBody:
        return self

    async def __anext__(self) -> bytes:
        if self._whole:
            return await self._body.__anext__()
        while self._pos < self._end:
            chunk = await self._body.__anext__()
            at = self._pos
            self._pos += len(chunk)
            if self._pos > self._start:
                return chunk[max(0, self._start - at) : self._end - at]
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._body.aclose()


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch from an RFC 9110 date, or None if unreadable."""
    if not value:
        return None
    # Listings give one date per entry, and many entries share one: a
    # directory of 10^5 files is parsed in a fraction of the time.
    return _parse_http_date(value)


_IMF_FIXDATE = re.compile(r"[A-Z][a-z]{2}, (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT")
_MONTH_NUMBERS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


@functools.lru_cache(maxsize=4096)
def _parse_http_date(value: str) -> float | None:
    # The preferred format (IMF-fixdate), which nginx, S3 and most servers
    # send, without the general parser's cost; anything else goes to it.
    match = _IMF_FIXDATE.fullmatch(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        number = _MONTH_NUMBERS.get(month)
        if number is not None:
            try:
                return datetime.datetime(int(year), number, int(day), int(hour), int(minute), int(second),
                                         tzinfo=datetime.timezone.utc).timestamp()
            except ValueError:
                pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
