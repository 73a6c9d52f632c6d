"""The `cachefs` command line: the parser and the entry point.

Every failure the user can cause ends in one line on stderr and a non-zero
exit status; tracebacks go to the daemon log at --log-level debug only.
Each command group lives in a module of its own and adds its parsers here.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from .errors import UserError, one_line


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line, like every other error: the usage
    block argparse prints first buried the line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (usage: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cachefs",
        description="Mount an HTTP or S3 store read-only, cached on local disk; "
        "complete files are read by the kernel (FUSE passthrough).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench, cache, mount, prefetch

    mount.add_parsers(sub)
    prefetch.add_parsers(sub)
    cache.add_parsers(sub)
    bench.add_parsers(sub)
    return parser


# What a shell reports for a command killed by SIGPIPE (Python ignores it).
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        # Inside the try: output smaller than the buffer is written only here.
        sys.stdout.flush()
        return status
    except UserError as e:
        print(f"cachefs: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cachefs status --json | head`): not an
        # error of ours. Point stdout at /dev/null so that the interpreter's
        # own flush at exit does not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
