"""The `cachefs` command's entry point.

Loading the CLI (trio, httpx, botocore...) takes a few tenths of a second,
and some of it loads while the parser is built; a Ctrl-C in that time should
end the command quietly, as it does later, not with a traceback from the
middle of an import.
"""

from __future__ import annotations


def main() -> int:
    try:
        from .app import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return 130
