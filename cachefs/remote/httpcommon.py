"""HTTP plumbing shared by the remotes: one client setup, bounded retries, and
checks that a ranged GET answered exactly the bytes asked for.

Both `http_index` and `s3` fetch object bytes with single-range GETs over
httpx; everything here is about trusting those answers no more than they
deserve: a range response must say it is the range we asked for, in identity
coding, and its body must be exactly that long.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from .base import BadResponse, Unreachable

MAX_CONNECTIONS = 16
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# 5xx answers that usually mean "try again shortly" (overload, restarts).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

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


class ClientOwner:
    """A remote that owns one httpx client: `aclose` closes it, and the remote
    is an async context manager."""

    _client: httpx.AsyncClient

    async def __aenter__(self) -> "ClientOwner":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(proxy: str | None = None, auth: tuple[str, str] | None = None) -> httpx.AsyncClient:
    """An async client for object reads: identity coding, bounded waits."""
    # An explicit proxy is used for every host, loopback included (httpx maps
    # it to "all://"); without one, trust_env applies the usual HTTP(S)_PROXY
    # / NO_PROXY variables.
    return httpx.AsyncClient(
        proxy=proxy,
        auth=auth,
        trust_env=True,
        # Raw bytes must be the object's bytes: no content coding.
        headers={"Accept-Encoding": "identity"},
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
        # No pool timeout: a request waiting for a free connection waits for
        # transfers that have their own read timeouts.
        timeout=httpx.Timeout(
            connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S, write=READ_TIMEOUT_S, pool=None
        ),
    )


async def send_with_retries(
    client: httpx.AsyncClient,
    build: Callable[[], Awaitable[httpx.Request]],
    policy: RetryPolicy,
    *,
    what: str,
    stream: bool = False,
    follow_redirects: bool = False,
) -> httpx.Response:
    """Send the request `await build()` makes, retrying transport errors and transient
    statuses per `policy`; raise Unreachable once the tries are used up.

    `build` runs once per try so a signed request gets a fresh signature (and
    fresh credentials) each time. `what` names the request in errors; it must
    not hold secrets.
    """
    failure = ""
    for attempt in range(policy.attempts):
        if attempt:
            await trio.sleep(policy.delay(attempt))
        request = await build()
        try:
            response = await client.send(request, stream=stream, follow_redirects=follow_redirects)
        except httpx.UnsupportedProtocol as exc:
            raise Unreachable(f"{what}: {exc}") from None
        except httpx.TransportError as exc:
            failure = f"{type(exc).__name__}: {exc}"
            continue
        if response.status_code not in RETRY_STATUSES:
            return response
        failure = f"HTTP {response.status_code}"
        await response.aclose()
    raise Unreachable(f"{what}: {failure} (after {policy.attempts} attempts)")


def check_range_answer(response: httpx.Response, url: str, start: int, end: int) -> int | None:
    """Check that a 200 or 206 answer holds exactly bytes [start, end).

    Returns the object's total size when the answer gives it. Raises
    BadResponse for a different range, a 200 that is more than the range, or
    a content coding we did not ask for. Other statuses are the caller's.
    """
    status = response.status_code
    if status == HTTP_PARTIAL:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None:
            raise BadResponse(f"{url}: 206 without a usable Content-Range")
        first, last, total = match.groups()
        if (int(first), int(last) + 1) != (start, end):
            raise BadResponse(f"{url}: asked for {start}-{end - 1}, got {first}-{last}")
        total_size = None if total == "*" else int(total)
    elif status == HTTP_OK:
        # The server ignored Range; fine only if the body is exactly the range.
        length = response.headers.get("content-length")
        if start != 0 or length is None or int(length) != end:
            raise BadResponse(f"{url}: server ignored the Range header")
        total_size = end
    else:
        raise ValueError(f"check_range_answer called for HTTP {status}")
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise BadResponse(f"{url}: unrequested Content-Encoding {coding!r}")
    return total_size


@asynccontextmanager
async def ranged_read(
    start: int,
    end: int,
    send: Callable[[], Awaitable[tuple[httpx.Response, str]]],
    check: Callable[[httpx.Response, str], Awaitable[None]],
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The body of bytes [start, end) of one object, for `Remote.read_range`.

    `send` makes the ranged GET and returns it with its URL (for messages);
    `check` raises if the answer cannot be trusted (wrong range, version...).
    The body yields exactly end-start bytes or raises; both are closed after.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end})")
    if start == end:
        yield empty_body()
        return
    response, url = await send()
    body = None
    try:
        await check(response, url)
        body = ExactBody(response, end - start, url)
        yield body
    finally:
        if body is not None:
            await body.aclose()
        await response.aclose()


def range_header(start: int, end: int) -> dict[str, str]:
    """The Range header for bytes [start, end) (end > start)."""
    return {"Range": f"bytes={start}-{end - 1}"}


async def empty_body() -> AsyncIterator[bytes]:
    for chunk in ():
        yield chunk


class ExactBody:
    """The body of a range response, checked to be exactly `expected` bytes.

    Chunks are passed on as httpx hands them over (up to 64 KiB each), never
    joined or re-sliced: aiter_raw(chunk_size=1 MiB) measured slower, since
    it joins small reads into a new buffer.
    """

    def __init__(self, response: httpx.Response, expected: int, url: str) -> None:
        self._chunks = response.aiter_raw()
        self._remaining = expected
        self._url = url

    def __aiter__(self) -> ExactBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            if self._remaining:
                raise BadResponse(f"{self._url}: body {self._remaining} bytes short") from None
            raise
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{self._url}: {type(exc).__name__} during body") from None
        except httpx.TransportError as exc:
            raise BadResponse(f"{self._url}: body cut short: {exc}") from None
        self._remaining -= len(chunk)
        if self._remaining < 0:
            raise BadResponse(f"{self._url}: body longer than the requested range")
        return chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()
