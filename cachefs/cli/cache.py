"""`cachefs status`, `fsck`, `evict` and `cache clear`: looking after caches.

`status` and `evict` ask a running daemon over its control socket. `fsck`
and `cache clear` work on cache folders directly, and only on folders no
daemon holds (each daemon keeps a lock on its folder): a live cache is
changed only through its daemon.

Exit status of fsck: 0 when every folder is clean (or was repaired), 1 when
problems remain, 2 when some folder could not be fully checked (in use by a
mount, remote unreachable, source unknown for --verify-remote).
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sqlite3
from pathlib import Path

from cachefs.cache import FolderBusy, default_cache_dir, folder_lock, remove_folder, source_folders
from cachefs.control.client import ControlError, request
from cachefs.maint.records import FolderReport, FolderState
from cachefs.runtime import Holder, NotRunning, holder_of_folder, holder_of_mount, running_mounts

from .errors import UserError
from .prefetch import mount_of
from .sizes import format_size


class FsckExit(enum.IntEnum):
    CLEAN = 0
    PROBLEMS = 1
    INCOMPLETE = 2


def _busy_text(folder: Path) -> str:
    holder = holder_of_folder(folder)
    if holder is None:
        return "in use by a running cachefs daemon"
    return f"in use by the mount at {holder.mountpoint} (pid {holder.pid})"


def _cache_dir(args: argparse.Namespace) -> Path:
    path = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if not path.is_dir():
        raise UserError(f"no cache directory at {path}")
    return path


# --- status ------------------------------------------------------------------


def _status_of(holder: Holder) -> dict:
    try:
        (reply,) = request(Path(holder.control), {"op": "status"}, timeout=10.0)
    except ControlError as e:
        raise UserError(f"{holder.mountpoint}: {e}") from None
    except ValueError:
        raise UserError(f"{holder.mountpoint}: the daemon gave no status") from None
    return {"mountpoint": holder.mountpoint, "pid": holder.pid, **reply}


def format_status(s: dict) -> str:
    stats, cache = s["stats"], s["cache"]
    cap = cache.get("cap_bytes")
    used = format_size(cache["bytes_cached"])
    if cap:
        used += f" of {format_size(cap)} cap ({cache['bytes_cached'] / cap:.0%})"
    else:
        used += " (no cap)"
    hits, misses = stats.get("hits"), stats.get("misses")
    if hits is None or misses is None:
        ratio = "not counted by this daemon"
    elif hits + misses == 0:
        ratio = "no reads yet"
    else:
        ratio = f"{hits / (hits + misses):.1%} ({hits} reads from the cache, {misses} fetched)"
    passthrough = "on" if stats["passthrough"] else "off"
    if stats.get("passthrough_reason"):
        passthrough += f" ({stats['passthrough_reason']})"
    opens = ", ".join(f"{mode} {n}" for mode, n in stats["opens"].items())
    rows = [
        ("source", s["source"]),
        ("cache dir", s["cache_dir"]),
        ("used", used),
        ("objects", (f"{cache['objects_complete']} complete, {cache['objects_partial']} partial,"
                     f" {cache['pinned']} pinned")),
        ("hit ratio", ratio),
        ("fetched", format_size(stats.get("bytes_fetched", 0))),
        ("passthrough", passthrough),
        ("opens", opens),
    ]
    return "\n".join([f"{s['mountpoint']} (pid {s['pid']})"] + [f"  {k:<12} {v}" for k, v in rows])


def cmd_status(args: argparse.Namespace) -> int:
    if args.mountpoint:
        mountpoint = os.path.realpath(args.mountpoint)
        try:
            holders = [holder_of_mount(mountpoint)]
        except NotRunning as e:
            raise UserError(str(e)) from None
    else:
        holders = running_mounts()
    statuses, failures = [], []
    for holder in holders:
        try:
            statuses.append(_status_of(holder))
        except UserError as e:
            if args.mountpoint:
                raise
            failures.append({"mountpoint": holder.mountpoint, "error": str(e)})
    if args.json:
        print(json.dumps(statuses[0] if args.mountpoint else statuses + failures, indent=2))
    else:
        blocks = [format_status(s) for s in statuses] + [f"{f['error']}" for f in failures]
        print("\n\n".join(blocks) if blocks else "no cachefs mounts")
    return 1 if failures else 0


# --- fsck --------------------------------------------------------------------


def _fsck_one(folder: Path, args: argparse.Namespace) -> FolderReport:
    # Here, not at the top: the check needs SQLite, and --verify-remote trio
    # and httpx, which no other command of this module does.
    from cachefs.maint.fsck import check_folder, recorded_source, source_of

    source = None
    if args.verify_remote:
        source = recorded_source(folder) or source_of(folder, args.source or [])
    try:
        report = check_folder(folder, repair=args.repair, source=source, force=args.force)
    except (OSError, sqlite3.Error) as e:
        raise UserError(f"fsck of {folder} failed: {e}") from None
    if args.verify_remote and source is None and report.state is not FolderState.BUSY:
        report.warnings.append("not compared with the remote: its source is not known; pass --source URL")
    return report


def format_report(report: FolderReport, args: argparse.Namespace) -> str:
    head = f"{report.folder}: "
    if report.state is FolderState.BUSY:
        checked = " checked read-only (--force);" if args.force and not args.repair else ""
        advice = "unmount it to repair it" if args.repair else "unmount it first, or use --force to check it read-only"
        head += f"{_busy_text(report.folder)};{checked} " + ("" if checked else f"not checked ({advice})")
    elif not report.problems:
        head += f"clean ({report.objects} objects, {report.data_files} data files"
        head += f", {report.chunks_verified} chunks compared with the remote)" if args.verify_remote else ")"
    else:
        fixed = sum(p.repaired for p in report.problems)
        head += f"{len(report.problems)} problems ({report.objects} objects, {report.data_files} data files)"
        head += f", {fixed} repaired" if args.repair else "; run with --repair to drop what is bad"
    lines = [head.rstrip()]
    for p in report.problems:
        where = p.key if p.key is not None else f"data/{p.data_file}"
        lines.append(f"  {p.kind.value:<17} {where}: {p.detail}" + ("  [repaired]" if p.repaired else ""))
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def fsck_exit(reports: list[FolderReport]) -> FsckExit:
    if any(r.state is FolderState.DIRTY or (r.state is FolderState.BUSY and r.problems) for r in reports):
        return FsckExit.PROBLEMS
    if any(r.state is FolderState.BUSY or r.warnings for r in reports):
        return FsckExit.INCOMPLETE
    return FsckExit.CLEAN


def cmd_fsck(args: argparse.Namespace) -> int:
    cache_dir = _cache_dir(args)
    reports = [_fsck_one(folder, args) for folder in source_folders(cache_dir)]
    if args.json:
        out = []
        for r in reports:
            d = r.as_dict()
            if r.state is FolderState.BUSY:
                d["in_use_by"] = _busy_text(r.folder)
            out.append(d)
        print(json.dumps(out, indent=2))
    elif not reports:
        print(f"no caches in {cache_dir}")
    else:
        print("\n".join(format_report(r, args) for r in reports))
    return int(fsck_exit(reports))


# --- evict and cache clear ---------------------------------------------------


def cmd_evict(args: argparse.Namespace) -> int:
    _, keys, control = mount_of(args.paths)
    try:
        (reply,) = request(control, {"op": "evict", "paths": keys}, timeout=None)
    except ControlError as e:
        raise UserError(str(e)) from None
    line = f"evicted {reply['files']} files, {format_size(reply['bytes'])}"
    skipped = reply["skipped"]
    if skipped:
        line += f"; kept {len(skipped)} open or pinned: {', '.join(skipped[:5])}" + (" ..." if len(skipped) > 5 else "")
    print(line)
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    cache_dir = _cache_dir(args)
    kept = 0
    for folder in source_folders(cache_dir):
        try:
            with folder_lock(folder):
                remove_folder(folder)
            print(f"removed {folder}")
        except FolderBusy:
            kept += 1
            holder = holder_of_folder(folder)
            empty = f"; `cachefs evict {holder.mountpoint}` empties it" if holder else ""
            print(f"kept {folder}: {_busy_text(folder)}{empty}")
        except OSError as e:
            raise UserError(f"cannot remove {folder}: {e.strerror or e}") from None
    return 1 if kept else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="what a mount (or every mount) has cached and how it reads")
    s.add_argument("mountpoint", nargs="?", help="a cachefs mount (default: all of them)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(func=cmd_status)

    f = sub.add_parser("fsck", help="check cache folders against their data files; --repair drops what is bad")
    f.add_argument("--cache-dir", help=f"cache directory (default {default_cache_dir()})")
    f.add_argument("--repair", action="store_true", help="drop bad records and files (not on mounted caches)")
    f.add_argument("--verify-remote", action="store_true",
                   help="also compare versions and cached bytes with the remote (downloads what is cached)")
    f.add_argument("--source", action="append", metavar="URL",
                   help="the source a folder caches, for --verify-remote (repeatable)")
    f.add_argument("--force", action="store_true",
                   help="check mounted caches too, read-only (a live cache may show passing differences)")
    f.add_argument("--json", action="store_true", help="print the reports as JSON")
    f.set_defaults(func=cmd_fsck)

    e = sub.add_parser("evict", help="drop the cached data of files or directories in a mount")
    e.add_argument("paths", nargs="+", metavar="PATH", help="a file or directory inside a cachefs mount")
    e.set_defaults(func=cmd_evict)

    c = sub.add_parser("cache", help="manage the cache directory")
    csub = c.add_subparsers(dest="cache_command", required=True)
    cl = csub.add_parser("clear", help="remove every cache folder no mount is using")
    cl.add_argument("--cache-dir", help=f"cache directory (default {default_cache_dir()})")
    cl.set_defaults(func=cmd_cache_clear)
