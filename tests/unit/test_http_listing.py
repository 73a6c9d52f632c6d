"""Index page parsers, on pages captured from nginx 1.22 and Apache 2.4 layouts."""

from __future__ import annotations

import calendar
import json

import pytest

from cachefs.remote.http.listing import (
    JsonListingStream,
    ListedEntry,
    ListingFormat,
    NotAListing,
    detect_format,
    parse_listing,
    parse_nginx_json,
)
from cachefs.remote.http.client import parse_http_date
from cachefs.remote.names import NAME_MAX_BYTES, decode_component, valid_name

NGINX_URL = "http://127.0.0.1:8080/html/"
APACHE_URL = "http://127.0.0.1:8080/pub/"

# 21-Nov-2026 06:29 UTC, as nginx's HTML index shows it.
T_0629 = float(calendar.timegm((2026, 11, 21, 6, 29, 0)))
LONG_NAME = "L" * 200 + "é" * 27  # 254 bytes: fits, but nginx truncates the text

# Captured from `autoindex on; autoindex_exact_size on;` (nginx 1.22.1).
NGINX_HTML_EXACT = """<html>
<head><title>Index of /html/</title></head>
<body>
<h1>Index of /html/</h1><hr><pre><a href="../">../</a>
<a href="dir%20with%20space/">dir with space/</a>                                    21-Nov-2026 06:29                   -
<a href="sub/">sub/</a>                                               21-Nov-2026 06:29                   -
<a href="%23hash%3Fq.txt">#hash?q.txt</a>                                        21-Nov-2026 06:29                   2
<a href="100%25.txt">100%.txt</a>                                           21-Nov-2026 06:29                   2
<a href="LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9">LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL..&gt;</a> 21-Nov-2026 06:29                   1
<a href="a%26b%3Cc%3E%22q%22.txt">a&amp;b&lt;c&gt;&quot;q&quot;.txt</a>                                      21-Nov-2026 06:29                   2
<a href="a%3Ab.txt">a:b.txt</a>                                            21-Nov-2026 06:30                   2
<a href="bad%E9name">bad\ufffdname</a>                                           21-Nov-2026 06:30                   1
<a href="big.bin">big.bin</a>                                            21-Nov-2026 06:29               20000
<a href="with%20space.txt">with space.txt</a>                                     21-Nov-2026 06:29                   3
<a href="%C3%BCn%C3%AFc%C3%B8d%C3%A9%20%E2%82%AC.txt">ünïcødé €.txt</a>                                21-Nov-2026 06:29                   2
</pre><hr></body>
</html>
"""

# The same directory with `autoindex_exact_size off`: 20000 bytes shows as 20K.
NGINX_HTML_ROUNDED = """<html>
<head><title>Index of /inexact/</title></head>
<body>
<h1>Index of /inexact/</h1><hr><pre><a href="../">../</a>
<a href="sub/">sub/</a>                                               21-Nov-2026 06:29       -
<a href="big.bin">big.bin</a>                                            21-Nov-2026 06:29     20K
<a href="huge.iso">huge.iso</a>                                           21-Nov-2026 06:29      4G
<a href="plain.txt">plain.txt</a>                                          21-Nov-2026 06:29       6
</pre><hr></body>
</html>
"""

# Captured from `autoindex_format json;`, with one name that is not UTF-8.
NGINX_JSON = (
    b'[\n'
    b'{ "name":"dir with space", "type":"directory", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT" },\n'
    b'{ "name":"100%.txt", "type":"file", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT", "size":2 },\n'
    b'{ "name":"a&b<c>\\"q\\".txt", "type":"file", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT", "size":2 },\n'
    b'{ "name":"bad\xe9name", "type":"file", "mtime":"Sat, 21 Nov 2026 06:30:57 GMT", "size":1 },\n'
    b'{ "name":"big.bin", "type":"file", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT", "size":20000 },\n'
    b'{ "name":"fifo", "type":"other", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT" },\n'
    b'{ "name":"\xc3\xbcn\xc3\xafc\xc3\xb8d\xc3\xa9 \xe2\x82\xac.txt", "type":"file", "mtime":"Sat, 21 Nov 2026 06:29:40 GMT", "size":2 }\n'
    b']\n'
)

# Apache 2.4 mod_autoindex, FancyIndexing without HTMLTable.
APACHE_PRE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /pub</title>
 </head>
 <body>
<h1>Index of /pub</h1>
<pre><img src="/icons/blank.gif" alt="Icon "> <a href="?C=N;O=D">Name</a>                    <a href="?C=M;O=A">Last modified</a>      <a href="?C=S;O=A">Size</a>  <a href="?C=D;O=A">Description</a><hr><img src="/icons/back.gif" alt="[PARENTDIR]"> <a href="/">Parent Directory</a>                             -   
<img src="/icons/folder.gif" alt="[DIR]"> <a href="docs/">docs/</a>                   2024-01-15 10:30    -   
<img src="/icons/compressed.gif" alt="[   ]"> <a href="archive.tar.gz">archive.tar.gz</a>          2024-03-02 08:05  1.2M  
<img src="/icons/text.gif" alt="[TXT]"> <a href="read%20me.txt">read me.txt</a>             2023-12-31 23:59  512   
<img src="/icons/text.gif" alt="[TXT]"> <a href="a&amp;b.txt">a&amp;b.txt</a>               2023-12-31 23:59    7   
<img src="/icons/unknown.gif" alt="[   ]"> <a href="a-rather-long-file-name-that-apache-will-truncate.bin">a-rather-long-file-name-..&gt;</a> 2024-01-15 10:30   0   
<hr></pre>
<address>Apache/2.4.57 (Debian) Server at 127.0.0.1 Port 8080</address>
</body></html>
"""

# Apache 2.4 with `IndexOptions FancyIndexing HTMLTable` (Debian's default).
APACHE_TABLE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /pub</title>
 </head>
 <body>
<h1>Index of /pub</h1>
  <table>
   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="docs/">docs/</a></td><td align="right">2024-01-15 10:30  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/compressed.gif" alt="[   ]"></td><td><a href="archive.tar.gz">archive.tar.gz</a></td><td align="right">2024-03-02 08:05  </td><td align="right">1.2M</td><td>gzip tarball, 3 parts</td></tr>
<tr><td valign="top"><img src="/icons/text.gif" alt="[TXT]"></td><td><a href="read%20me.txt">read me.txt</a></td><td align="right">2023-12-31 23:59  </td><td align="right">512 </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/text.gif" alt="[TXT]"></td><td><a href="caf%c3%a9.txt">café.txt</a></td><td align="right">2023-12-31 23:59  </td><td align="right">7 </td><td>&nbsp;</td></tr>
   <tr><th colspan="5"><hr></th></tr>
</table>
<address>Apache/2.4.57 (Debian) Server at 127.0.0.1 Port 8080</address>
</body></html>
"""

# Links an attacker or a sloppy page generator could put in an index.
HOSTILE_HTML = """<html><body><pre>
<a href="../">../</a>
<a href="..">up</a>
<a href="./">self</a>
<a href="%2e%2e/">dot dot</a>
<a href="..%2F..%2Fetc%2Fpasswd">traversal</a>
<a href="a%2Fb">slash inside</a>
<a href="nul%00byte">nul</a>
<a href="sub/deeper/file">grandchild</a>
<a href="/etc/passwd">absolute path</a>
<a href="http://evil.example/pub/x">other host</a>
<a href="https://127.0.0.1:8080/pub/x">other scheme</a>
<a href="//evil.example/pub/y">scheme-relative</a>
<a href="?C=N;O=D">sort</a>
<a href="#top">anchor</a>
<a href="mailto:root@localhost">mail</a>
<a href="{long}">too long</a>
<a>no href</a>
<a href="ok.txt">ok.txt</a>         2024-01-15 10:30    3
<a href="/pub/absolute-child.txt">absolute child</a>  2024-01-15 10:30    4
<a href="http://127.0.0.1:8080/pub/full-url-child/">full url child</a>  2024-01-15 10:30    -
</pre></body></html>
""".replace("{long}", "x" * (NAME_MAX_BYTES + 1))


def by_name(entries: list[ListedEntry]) -> dict[str, ListedEntry]:
    return {e.name: e for e in entries}


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0)[:6]))


def test_nginx_html_exact_sizes() -> None:
    listing = parse_listing(NGINX_HTML_EXACT.encode(), "text/html", NGINX_URL)
    assert listing.format is ListingFormat.HTML
    assert not listing.times_are_exact
    got = by_name(listing.entries)
    assert list(got) == [
        "dir with space", "sub", "#hash?q.txt", "100%.txt", LONG_NAME,
        'a&b<c>"q".txt', "a:b.txt", "big.bin", "with space.txt", "ünïcødé €.txt",
    ]
    assert got["dir with space"] == ListedEntry("dir with space", True, None, T_0629)
    assert got["big.bin"] == ListedEntry("big.bin", False, 20000, T_0629)
    assert got[LONG_NAME].size == 1
    assert got["a:b.txt"].mtime == T_0629 + 60
    # Invalid UTF-8 cannot become a name; the raw href is reported.
    assert listing.rejected == ["bad%E9name"]


def test_nginx_html_rounded_sizes_are_unknown() -> None:
    listing = parse_listing(NGINX_HTML_ROUNDED.encode(), "text/html", NGINX_URL)
    got = by_name(listing.entries)
    assert got["big.bin"].size is None
    assert got["huge.iso"].size is None
    # Small sizes are printed exactly even with exact_size off.
    assert got["plain.txt"].size == 6
    assert got["sub"] == ListedEntry("sub", True, None, T_0629)


def test_nginx_json() -> None:
    listing = parse_listing(NGINX_JSON, "application/json", "http://127.0.0.1:8080/data/")
    assert listing.format is ListingFormat.JSON
    assert listing.times_are_exact
    got = by_name(listing.entries)
    # JSON names are literal: '%' is not an escape there.
    assert list(got) == ["dir with space", "100%.txt", 'a&b<c>"q".txt', "big.bin", "ünïcødé €.txt"]
    assert got["big.bin"] == ListedEntry("big.bin", False, 20000, T_0629 + 40)
    assert got["dir with space"].is_dir and got["dir with space"].size is None
    assert listing.rejected == ["bad\udce9name"]


@pytest.mark.parametrize("page", [APACHE_PRE, APACHE_TABLE], ids=["pre", "table"])
def test_apache(page: str) -> None:
    listing = parse_listing(page.encode(), "text/html;charset=UTF-8", APACHE_URL)
    got = by_name(listing.entries)
    assert "Parent Directory" not in got and "Name" not in got
    assert got["docs"] == ListedEntry("docs", True, None, utc(2024, 1, 15, 10, 30))
    assert got["archive.tar.gz"] == ListedEntry(
        "archive.tar.gz", False, None, utc(2024, 3, 2, 8, 5)
    )
    assert got["read me.txt"] == ListedEntry("read me.txt", False, 512, utc(2023, 12, 31, 23, 59))
    assert listing.rejected == []


def test_apache_pre_details() -> None:
    got = by_name(parse_listing(APACHE_PRE.encode(), "text/html", APACHE_URL).entries)
    assert got["a&b.txt"].size == 7
    # The visible text is truncated; the href has the real name.
    long_name = "a-rather-long-file-name-that-apache-will-truncate.bin"
    assert got[long_name].size == 0


def test_apache_table_utf8_lowercase_escapes() -> None:
    got = by_name(parse_listing(APACHE_TABLE.encode(), "text/html", APACHE_URL).entries)
    assert got["café.txt"].size == 7


def test_hostile_links_are_skipped() -> None:
    listing = parse_listing(HOSTILE_HTML.encode(), "text/html", APACHE_URL)
    assert by_name(listing.entries) == {
        "ok.txt": ListedEntry("ok.txt", False, 3, utc(2024, 1, 15, 10, 30)),
        "absolute-child.txt": ListedEntry("absolute-child.txt", False, 4, utc(2024, 1, 15, 10, 30)),
        "full-url-child": ListedEntry("full-url-child", True, None, utc(2024, 1, 15, 10, 30)),
    }
    # Direct children with unusable names are reported; the rest are not children.
    assert sorted(listing.rejected) == sorted(
        ["%2e%2e", "..%2F..%2Fetc%2Fpasswd", "a%2Fb", "nul%00byte", "x" * (NAME_MAX_BYTES + 1)]
    )


def test_icon_links_do_not_hide_row_details() -> None:
    page = """<pre><a href="f.bin"><img src="/icons/f.gif" alt="[   ]"></a> <a href="f.bin">f.bin</a>  2024-01-15 10:30  900
</pre>"""
    assert parse_listing(page.encode(), "text/html", APACHE_URL).entries == [
        ListedEntry("f.bin", False, 900, utc(2024, 1, 15, 10, 30))
    ]


def test_bare_link_list_has_names_only() -> None:
    # Python's http.server style: no dates, no sizes.
    page = '<ul>\n<li><a href="a.txt">a.txt</a></li>\n<li><a href="d/">d/</a></li>\n</ul>'
    assert parse_listing(page.encode(), "text/html", APACHE_URL).entries == [
        ListedEntry("a.txt", False, None, None),
        ListedEntry("d", True, None, None),
    ]


def test_format_detection() -> None:
    assert detect_format(b"[]", "application/json; charset=utf-8") is ListingFormat.JSON
    assert detect_format(b"<html>", "text/html") is ListingFormat.HTML
    assert detect_format(b"  [ ]", "application/octet-stream") is ListingFormat.JSON
    assert detect_format(b"\n<html>", None) is ListingFormat.HTML
    with pytest.raises(NotAListing):
        detect_format(b"\x89PNG", "image/png")
    with pytest.raises(NotAListing):
        parse_listing(b'{"not": "a list"}', "application/json", NGINX_URL)
    with pytest.raises(NotAListing):
        parse_listing(b"[{", "application/json", NGINX_URL)


def test_http_date() -> None:
    assert parse_http_date("Sat, 21 Nov 2026 06:29:40 GMT") == T_0629 + 40
    assert parse_http_date("yesterday") is None
    assert parse_http_date(None) is None


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("plain.txt", "plain.txt"),
        ("with%20space", "with space"),
        ("100%25.txt", "100%.txt"),
        ("100%.txt", "100%.txt"),  # not an escape: left alone
        ("%C3%BC", "ü"),
        ("%2e", None),
        ("%2E%2E", None),
        ("", None),
        ("a%2Fb", None),
        ("a/b", None),
        ("a%00b", None),
        ("%E9", None),  # Latin-1, not UTF-8
        ("é" * 127, "é" * 127),  # 254 bytes
        ("é" * 128, None),  # 256 bytes
    ],
)
def test_decode_component(raw: str, expected: str | None) -> None:
    assert decode_component(raw) == expected


def test_valid_name() -> None:
    assert valid_name("a" * NAME_MAX_BYTES) == "a" * NAME_MAX_BYTES
    assert valid_name("a" * (NAME_MAX_BYTES + 1)) is None
    assert valid_name("..") is None
    assert valid_name(".") is None
    assert valid_name("x\udce9") is None
    assert valid_name("...") == "..."
    assert valid_name(" ") == " "


# -- nginx JSON, streamed (issue 19) -------------------------------------------


def _json_page(items: list[object]) -> bytes:
    return ("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n]\n").encode()


def test_a_json_index_fed_in_pieces_parses_as_it_does_whole() -> None:
    items: list[object] = [
        {"name": f"f{i} é \"q\"", "type": "file", "mtime": "Mon, 30 Nov 2026 13:25:04 GMT", "size": i}
        for i in range(300)
    ]
    items += [{"name": "d", "type": "directory", "mtime": "Sun, 06 Nov 1994 08:49:37 GMT"},
              {"name": "..", "type": "file", "size": 1}, {"name": "s", "type": "other"}, 5, [1]]
    body = _json_page(items)
    whole = parse_nginx_json(body)
    for piece in (1, 7, 100, 4096):
        stream = JsonListingStream()
        got = []
        for start in range(0, len(body), piece):
            got += stream.feed(body[start : start + piece])
        got += stream.close()
        assert got == whole.entries and stream.rejected == whole.rejected == [".."]
    assert len(whole.entries) == 301


@pytest.mark.parametrize("body", [b'{"a": 1}', b'[{"name": "x", "type": "file"}', b"[] extra", b'[{"name": "x"', b""])
def test_a_broken_json_index_stream_is_not_a_listing(body: bytes) -> None:
    stream = JsonListingStream()
    with pytest.raises(NotAListing):
        stream.feed(body)
        stream.close()
