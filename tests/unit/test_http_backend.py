"""remote/http/backend.py: http(s):// sources, checked and normalised, credentials kept apart."""

from __future__ import annotations

import pytest
import trio

from cachefs.remote import HttpIndexRemote, open_remote
from cachefs.remote.http.backend import parse_http_source, public_http_source


def test_sources_are_normalised() -> None:
    assert parse_http_source("http://127.0.0.1:1/data").url == "http://127.0.0.1:1/data/"
    assert parse_http_source("HTTPS://example.invalid").url == "https://example.invalid/"
    assert parse_http_source("http://h/a%20b/").url == "http://h/a%20b/"


def test_credentials_become_basic_auth_and_leave_the_source() -> None:
    checked = parse_http_source("https://us%40er:p%3Ass@host:8443/d/")
    assert checked.url == "https://host:8443/d/"
    assert checked.auth == ("us@er", "p:ss")
    assert parse_http_source("http://user@h/").auth == ("user", "")
    assert public_http_source("http://u:secret@h/x") == "http://h/x/"


@pytest.mark.parametrize(("source", "culprit"), [
    ("ftp://host/x", "unsupported source scheme 'ftp'"),
    ("/local/dir", "unsupported source scheme 'none'"),
    ("not a url", "unsupported source scheme 'none'"),
    ("http://", "no host"),
    ("http:///nohost", "no host"),
    ("http://[::1/data/", "IPv6"),
    ("http://127.0.0.1:99999/", "bad port"),
    ("http://127.0.0.1:notaport/", "bad port"),
    ("http://h/data/?x=1", "query"),
    ("http://h/data/#frag", "fragment"),
])
def test_bad_sources_are_refused_in_one_line(source: str, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit) as refused:
        open_remote(source)
    assert "\n" not in str(refused.value)


def test_open_remote_gives_an_index_remote() -> None:
    remote = open_remote("http://u:p@127.0.0.1:1/data")
    assert isinstance(remote, HttpIndexRemote)
    assert remote.source == "http://127.0.0.1:1/data/"
    trio.run(remote.aclose)
