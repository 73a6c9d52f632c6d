"""The `cachefs` command's entry point.

Loading the CLI (trio, httpx, botocore...) takes a few tenths of a second,
and some of it loads while the parser is built; a Ctrl-C in that time should
end the command quietly, as it does later, not with a traceback from the
middle of an import.

A `cachefs mount` that will detach starts its daemon here, first of all, so
that the daemon loads while the command loads and checks its arguments
(see `early`); a daemon the command never handed a mount is stopped on the
way out.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    started = time.monotonic()
    from . import early

    try:
        early.begin(sys.argv[1:], started)
        from .app import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return 130
    finally:
        early.abandon()
