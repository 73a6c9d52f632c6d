"""`cachefs prefetch` and `cachefs unpin`: ask a running daemon to cache paths.

The daemon does the fetching; this command only starts a job and, unless
--no-wait, shows its progress until it ends. Ctrl-C stops waiting, not the
job; `cachefs prefetch --cancel PATH` stops the job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from cachefs.control.client import ControlError, locate_all, request
from cachefs.runtime import NotRunning, holder_of_mount

from .argtypes import whole_number
from .errors import UserError
from .sizes import format_size

BAR_WIDTH = 24


def mount_of(paths: list[str]) -> tuple[str, list[str], Path]:
    """The one mount all `paths` are in, their keys in it, and its daemon's control socket."""
    try:
        mountpoint, keys = locate_all(paths)
        return mountpoint, keys, Path(holder_of_mount(mountpoint).control)
    except (ControlError, NotRunning) as e:
        raise UserError(str(e)) from None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(p: dict) -> str:
    """One line: bar, files, bytes, rate and ETA (while scanning: what was found)."""
    rate = p["bytes_fetched"] / p["elapsed"] if p["elapsed"] > 0 else 0.0
    files = f"{p['files_done']}/{p['files_total']} files"
    size = f"{format_size(p['bytes_done'])}/{format_size(p['bytes_total'])}"
    failed = f"  {len(p['failures'])} failed" if p["failures"] else ""
    if p["scanning"]:
        return f"scanning... {files}  {size}  {format_size(rate)}/s{failed}"
    fraction = p["bytes_done"] / p["bytes_total"] if p["bytes_total"] else 1.0
    filled = int(fraction * BAR_WIDTH)
    remaining = p["bytes_total"] - p["bytes_done"]
    eta = f"ETA {_duration(remaining / rate)}" if rate > 0 and remaining > 0 else ""
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}  {files}  {size}  {format_size(rate)}/s  {eta}{failed}"


def summary(p: dict) -> str:
    verb = "prefetched" if p["state"] == "done" else "cancelled after"
    lines = [
        f"{verb} {p['files_done']} of {p['files_total']} files, {format_size(p['bytes_done'])} cached"
        f" ({format_size(p['bytes_fetched'])} fetched) in {p['elapsed']:.1f} s"
    ]
    if p["failures"]:
        lines.append(f"{len(p['failures'])} failed:")
        lines += [f"  {f['path']}: {f['error']}" for f in p["failures"]]
    return "\n".join(lines)


def _show(replies: Iterator[dict], live: TextIO | None) -> dict:
    """Follow a job's replies to its end, drawing the progress line on `live`."""
    last: dict = {}
    width = 0
    for reply in replies:
        last = reply
        if live is not None and reply["event"] != "started":
            line = progress_line(reply)
            live.write("\r" + line.ljust(width))
            live.flush()
            width = len(line)
    if live is not None and width:
        live.write("\n")
    return last


def cmd_prefetch(args: argparse.Namespace) -> int:
    _, keys, control = mount_of(args.paths)
    try:
        if args.cancel:
            (reply,) = request(control, {"op": "cancel", "paths": keys})
            ids = reply["cancelled"]
            print(f"cancelled prefetch job {', '.join(map(str, ids))}" if ids else "no prefetch was running there")
            return 0
        message = {"op": "prefetch", "paths": keys, "jobs": args.jobs, "pin": args.pin, "wait": not args.no_wait}
        replies = request(control, message, timeout=None)
        if args.no_wait:
            started = next(replies)
            print(f"prefetch job {started['job']} started in the daemon")
            return 0
        live = sys.stderr if sys.stderr.isatty() and not args.json else None
        try:
            final = _show(replies, live)
        except KeyboardInterrupt:
            print(f"\nstopped waiting; the prefetch goes on in the daemon"
                  f" (stop it with: cachefs prefetch --cancel {' '.join(args.paths)})", file=sys.stderr)
            return 130
    except ControlError as e:
        raise UserError(str(e)) from None
    if final.get("event") != "done":
        raise UserError("the daemon stopped before the prefetch ended")
    print(json.dumps(final) if args.json else summary(final))
    return 0 if final["state"] == "done" and not final["failures"] else 1


def cmd_unpin(args: argparse.Namespace) -> int:
    _, keys, control = mount_of(args.paths)
    try:
        (reply,) = request(control, {"op": "unpin", "paths": keys})
    except ControlError as e:
        raise UserError(str(e)) from None
    print(f"unpinned {reply['unpinned']} files")
    return 0



def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prefetch", help="bring files and directories of a mount into the cache")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a file or directory inside a cachefs mount")
    p.add_argument("--jobs", type=whole_number(1, 64), default=4, help="files fetched at once (default 4)")
    p.add_argument("--pin", action="store_true", help="keep these files cached until `cachefs unpin`")
    p.add_argument("--no-wait", action="store_true", help="start the prefetch and return")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--cancel", action="store_true", help="stop the prefetch running on PATH")
    p.set_defaults(func=cmd_prefetch)

    u = sub.add_parser("unpin", help="let eviction remove pinned files again")
    u.add_argument("paths", nargs="+", metavar="PATH")
    u.set_defaults(func=cmd_unpin)
