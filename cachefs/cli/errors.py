"""The one kind of error the command line prints as a line, and how it prints it."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def one_line(text: str) -> str:
    """`text` with control characters escaped: a path holding a newline
    must not split an error message over two lines."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
