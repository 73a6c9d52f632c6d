"""What one request may cost, whatever the server does: the request limits.

Plain data, kept apart from the HTTP client so that the command line can
show and check the defaults without importing httpx or trio.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import BadResponse, Unreachable

if TYPE_CHECKING:
    from .http.transport import Deadline

# A request must have its answer's headers within the request timeout, and
# then receive its body at the minimum rate on average (see Deadline).
DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_MIN_RATE = 4096  # bytes per second
# The most one listing response (an index page, one page of an S3 listing)
# may hold: a server may send one without end. The daemon streams listings
# into its database; `list_dir`, which holds a listing whole, caps all the
# pages of an S3 listing together.
DEFAULT_MAX_LISTING_BYTES = 64 * 1024 * 1024

# Makes a Deadline(now + timeout, per_byte); set on the first request.
_new_deadline: Callable[[float, float], Deadline] | None = None


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost before it fails, whatever the server does.

    The per-read timeout alone never ends a request whose server trickles a
    byte now and then, or a listing that never ends.
    """

    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    min_rate: int = DEFAULT_MIN_RATE
    max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES

    def deadline(self) -> Deadline:
        """The deadline of a request starting now."""
        global _new_deadline
        if _new_deadline is None:
            # Imported on first use (this module is imported without trio),
            # then kept: an import statement per request showed in profiles.
            import trio

            from .http.transport import Deadline

            def make(timeout_s: float, per_byte: float) -> Deadline:
                return Deadline(trio.current_time() + timeout_s, per_byte)

            _new_deadline = make
        return _new_deadline(self.timeout_s, 1.0 / self.min_rate)

    def too_large(self, what: str) -> BadResponse:
        return BadResponse(f"{what}: listing larger than {self.max_listing_bytes} bytes (--max-listing-size)")

    def too_slow(self, what: str) -> Unreachable:
        return Unreachable(
            f"{what}: server too slow (no answer within {self.timeout_s:g} s, "
            f"or body slower than {self.min_rate} bytes/s)"
        )
