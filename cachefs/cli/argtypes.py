"""Argument types shared by the subcommands: each turns bad input into argparse's one-line usage error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from urllib.parse import urlsplit

from .sizes import parse_size


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int in [low, high] (no upper bound when `high` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
        return value

    return parse


# The kernel is handed the metadata TTL as whole seconds plus nanoseconds, and
# listings compare it with clock differences: nan or a huge value breaks
# both (nan failed every lookup with EIO). A year is already "forever".
MAX_SECONDS = 365 * 86400
# Past any disk; SQLite's integers (64-bit) and byte counts stay exact below it.
MAX_SIZE = 1 << 60


def seconds(text: str) -> float:
    """A duration from 0 to MAX_SECONDS."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS} (a year): {text!r}")
    return value


def size(text: str) -> int:
    """A size such as 500M or 10G, up to MAX_SIZE."""
    return size_at_least(0)(text)


def size_at_least(low: int, why: str = "") -> Callable[[str], int]:
    """A size from `low` to MAX_SIZE; `why` explains the lower bound."""

    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if value > MAX_SIZE:
            raise argparse.ArgumentTypeError(f"too large (at most {MAX_SIZE >> 40}T): {text!r}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low >> 20}M{why}: {text!r}")
        return value

    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A duration in [low, high] seconds."""

    def parse(text: str) -> float:
        value = seconds(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g} seconds: {text!r}")
        return value

    return parse


def size_between(low: int, high: int) -> Callable[[str], int]:
    """A size (500M, 4K, 100) in [low, high] bytes."""

    def parse(text: str) -> int:
        value = size(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high} bytes: {text!r}")
        return value

    return parse


def proxy_url(text: str) -> str:
    """An http:// or https:// proxy URL. The message never repeats the URL,
    which may hold a password."""
    try:
        parts = urlsplit(text)
    except ValueError:
        raise argparse.ArgumentTypeError("the proxy URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        # httpx speaks SOCKS only with an extra package we do not install.
        shown = f"{scheme}://" if scheme else "no scheme"
        raise argparse.ArgumentTypeError(
            f"unsupported proxy scheme ({shown}); use an http:// or https:// proxy")
    if not parts.hostname:
        raise argparse.ArgumentTypeError("the proxy URL has no host name")
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError("the proxy URL has a bad port") from None
    return text
