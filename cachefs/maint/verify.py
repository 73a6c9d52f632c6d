"""`fsck --verify-remote`: compare a folder's cached objects with the remote.

A stat per object compares size and version (the version the remote computes:
the ETag for S3, size and minute of Last-Modified for plain HTTP). Where they
match, every recorded chunk is downloaded again and its sha256 compared with
the cached bytes: the only way to find bytes changed on disk while the file
kept its size, since the cache records no checksums of its own.

The remote is opened the way the folder's last mount opened it (its
`remote.json`: the source and the remote type's options, an S3 endpoint
say), else from the source alone with default options; either way only a
remote whose source is the folder's is compared with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from cachefs.remote import (
    NotFound,
    Pin,
    Remote,
    RemoteError,
    Unreachable,
    VersionChanged,
    open_remote,
)
from cachefs.remote.record import read_record

from .records import FolderReport, ObjectRecord, Problem, ProblemKind, data_path, sha256_span


def verify_remote(folder: Path, source: str, rows: list[ObjectRecord], report: FolderReport) -> None:
    """Add STALE and CORRUPT problems (and warnings) to `report`."""
    trio.run(_verify, folder, source, rows, report)


async def _open(folder: Path, source: str) -> Remote:
    """The remote of the folder whose source is `source`; ValueError if it cannot be opened."""
    record = read_record(folder)
    remote = open_remote(source) if record is None else record.open()
    if remote.source != source:
        # The folder's source is the remote's name for the store, which
        # not every remote type can open again (an S3 endpoint shows as
        # "s3://bucket/ at URL"): comparing with another store would report
        # every object stale.
        with trio.CancelScope(shield=True):
            await remote.aclose()
        raise ValueError(f"{source} cannot be opened without the options of its mount "
                         f"(opening it gives {remote.source}); mount it once to record them")
    return remote


async def _verify(folder: Path, source: str, rows: list[ObjectRecord], report: FolderReport) -> None:
    try:
        remote = await _open(folder, source)
    except ValueError as e:
        report.warnings.append(f"not compared with the remote: {e}")
        return
    try:
        for n, row in enumerate(sorted(rows, key=lambda r: r.key)):
            try:
                await _verify_row(remote, folder, row, report)
            except Unreachable as e:
                # Every other object would fail the same way: stop here.
                report.warnings.append(f"remote unreachable, {len(rows) - n} objects not compared: {e}")
                return
            except RemoteError as e:
                report.warnings.append(f"{row.key}: not compared with the remote: {e}")
    finally:
        with trio.CancelScope(shield=True):
            await remote.aclose()


async def _verify_row(remote: Remote, folder: Path, row: ObjectRecord, report: FolderReport) -> None:
    where = {"key": row.key, "data_file": row.data_name}
    try:
        entry = await remote.stat(row.key)
    except NotFound:
        report.problems.append(Problem(ProblemKind.STALE, "the remote no longer has this object", **where))
        return
    if entry.size != row.size or (entry.version and entry.version != row.version):
        report.problems.append(Problem(
            ProblemKind.STALE,
            f"the remote now has version {entry.version!r} ({entry.size} bytes), the cache {row.version!r}",
            **where))
        return
    path = data_path(folder, row.data_name)
    # Every chunk must come from the version the cache recorded (or, for an
    # old row without one, from one version).
    pin = Pin(row.size, row.validator)
    corrupt = []
    for idx in sorted(i for i in row.chunks if 0 <= i < row.nchunks):
        start, end = row.span(idx)
        digest = hashlib.sha256()
        try:
            async with remote.read_range(row.key, start, end, row.version, pin) as pieces:
                async for piece in pieces:
                    digest.update(piece)
        except VersionChanged as e:
            report.problems.append(Problem(ProblemKind.STALE, f"the remote changed: {e}", **where))
            return
        report.chunks_verified += 1
        if digest.hexdigest() != sha256_span(path, start, end):
            corrupt.append(idx)
    if corrupt:
        report.problems.append(Problem(
            ProblemKind.CORRUPT, f"cached bytes of chunks {corrupt} differ from the remote's",
            chunks=corrupt, **where))
