"""remote/s3/xml.py: ListObjectsV2 pages."""

from __future__ import annotations

from cachefs.remote.s3.xml import parse_list_page


def test_list_page_parsing() -> None:
    body = (
        b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        b"<NextContinuationToken>t/+=</NextContinuationToken>"
        b"<Contents><Key>d/a+b%2Bc%00</Key><Size>3</Size><ETag>&quot;e1&quot;</ETag>"
        b"<LastModified>2023-11-14T22:13:57.000Z</LastModified></Contents>"
        b"<CommonPrefixes><Prefix>d/sub%20dir/</Prefix></CommonPrefixes></ListBucketResult>"
    )
    page = parse_list_page(body, "u")
    assert [(o.key, o.size, o.etag, o.mtime) for o in page.objects] == [
        ("d/a b+c\0", 3, "e1", 1_700_000_037.0)
    ]
    assert page.prefixes == ["d/sub dir/"] and page.next_token == "t/+="
