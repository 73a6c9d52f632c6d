"""Turning names reported by a remote into safe file names.

A remote listing is untrusted input: a name that is empty, '.', '..', holds a
'/' or a NUL, or does not fit in a Linux directory entry would corrupt the
tree we show to the kernel (or escape it). These helpers return the usable
name or None, so callers can skip the entry and log it once.
"""

from __future__ import annotations

from urllib.parse import unquote

# Linux NAME_MAX: the longest file name, in bytes, a directory entry can hold.
NAME_MAX_BYTES = 255

_RESERVED_NAMES = frozenset({"", ".", ".."})


def valid_name(name: str) -> str | None:
    """Return `name` if it can be one path component, else None.

    Names that are not valid Unicode (lone surrogates, as produced by decoding
    invalid UTF-8 with 'surrogateescape') are rejected too: they could not be
    stored, logged or encoded back into a request URL reliably.
    """
    if name in _RESERVED_NAMES or "/" in name or "\0" in name:
        return None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(encoded) > NAME_MAX_BYTES:
        return None
    return name


def decode_component(raw: str) -> str | None:
    """Percent-decode one URL path component and validate the result.

    `raw` must not contain a literal '/' (that would be two components).
    An encoded '%2F' decodes to '/', and is rejected like any other slash.
    """
    if "/" in raw:
        return None
    try:
        decoded = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    return valid_name(decoded)
