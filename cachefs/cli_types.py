"""Argument types shared by the subcommands: each turns bad input into argparse's one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .units import parse_size


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


def seconds(text: str) -> float:
    """A duration, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def size(text: str) -> int:
    """A size such as 500M or 10G."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
