"""Which answers to a ranged GET are taken, and as what (remote/http/client.py)."""

from __future__ import annotations

import httpx
import pytest

from cachefs.remote.base import BadResponse, VersionChanged
from cachefs.remote.http.client import ServedRange, check_range_answer

URL = "http://127.0.0.1/f"
SIZE = 1000


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_206_and_200_with_the_content_range_asked_are_ranges() -> None:
    for status in (206, 200):  # rclone serve s3 answers 200
        got = check_range_answer(answer(status, content_range="bytes 100-199/1000"), URL, 100, 200, SIZE)
        assert got == ServedRange(100, 200, SIZE)
    got = check_range_answer(answer(200, content_range="bytes 100-199/*"), URL, 100, 200)
    assert got == ServedRange(100, 200, None)


def test_a_content_range_other_than_asked_is_refused_whatever_the_status() -> None:
    for status in (206, 200):
        for wrong in ("bytes 0-999/1000", "bytes 101-200/1000", "bytes 100-198/1000", "nonsense"):
            with pytest.raises(BadResponse):
                check_range_answer(answer(status, content_range=wrong), URL, 100, 200, SIZE)


def test_a_200_without_content_range_is_the_whole_object() -> None:
    """python3 -m http.server: the whole object, for any range asked."""
    got = check_range_answer(answer(200, content_length="1000"), URL, 500, 600, SIZE)
    assert got == ServedRange(0, SIZE, SIZE)
    # Its length is its size, which the caller compares with the pin's.
    got = check_range_answer(answer(200, content_length="999"), URL, 500, 600, SIZE)
    assert got == ServedRange(0, 999, 999)
    # No length: the expected size, which the body must then have.
    assert check_range_answer(answer(200), URL, 500, 600, SIZE) == ServedRange(0, SIZE, SIZE)
    with pytest.raises(BadResponse):
        check_range_answer(answer(200), URL, 500, 600)


def test_an_object_longer_than_pinned_shows_in_the_last_range() -> None:
    # Asked "bytes=900-1000" (one past the expected end): the byte exists.
    with pytest.raises(VersionChanged):
        check_range_answer(answer(200, content_range="bytes 900-1000/1001"), URL, 900, 1000, SIZE)


def test_an_unrequested_coding_is_refused() -> None:
    with pytest.raises(BadResponse):
        check_range_answer(answer(200, content_length="1000", content_encoding="gzip"), URL, 0, 100, SIZE)
