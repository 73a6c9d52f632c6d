"""Offline check and repair of one source folder: SQLite against the data files.

What the cache promises (see `cachefs.cache`: its journal and layout): every object row names a
data file of exactly the object's size; a chunk row means the chunk's bytes
are in that file; `bytes_cached` and `complete` follow from the chunk rows;
every data file belongs to a row. `check_folder` reports each broken promise
as a `Problem`, and with `repair` drops what is bad, records first and files
second, so a crash half way leaves at worst an orphaned file, which the next
run removes.

Bytes that changed while the file kept its size break no local promise: only
the remote can tell. With a `source`, complete and partial objects are
compared with the remote: size and version by a stat, then every recorded
chunk by downloading it and comparing its sha256 with the cached bytes.

The folder's lock is held throughout (see `cachefs.cache.layout`): a folder a daemon is
using is reported busy, and only ever checked, never repaired (`force`),
because a live cache has data files whose rows are not yet written.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

from cachefs.cache import DATA_NAME, DB_NAME, FolderBusy, OfflineDB, folder_lock, remove_folder, source_digest

from .records import FolderReport, FolderState, ObjectRecord, Problem, ProblemKind, data_path
from .verify import verify_remote

def check_folder(folder: Path, *, repair: bool = False, source: str | None = None,
                 force: bool = False) -> FolderReport:
    """Check one source folder; with `repair`, drop what is bad.

    `source` (the remote's URL) turns on the comparison with the remote.
    A folder in use by a daemon comes back BUSY, unchecked unless `force`
    (then checked read-only, never repaired).
    """
    report = FolderReport(folder)
    with ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder))
        except FolderBusy:
            report.state = FolderState.BUSY
            if repair or not force:
                return report
            repair = False
        try:
            rows = _load(folder)
        except sqlite3.DatabaseError as e:
            report.problems.append(Problem(ProblemKind.UNUSABLE_DB, f"{folder / DB_NAME}: {e}"))
            if repair and report.state is not FolderState.BUSY:
                remove_folder(folder)
                report.problems[-1].repaired = True
            return _finish(report)
        report.objects = len(rows)
        _check_files(folder, rows, report)
        if source is not None:
            verify_remote(folder, source, [r for r in rows.values() if _usable(r, report)], report)
        if repair and report.problems and report.state is not FolderState.BUSY:
            _repair(folder, rows, report)
    return _finish(report)


def _finish(report: FolderReport) -> FolderReport:
    if report.state is FolderState.BUSY:
        return report
    if report.problems:
        done = all(p.repaired for p in report.problems)
        report.state = FolderState.REPAIRED if done else FolderState.DIRTY
    return report


def _load(folder: Path) -> dict[int, ObjectRecord]:
    # Not the daemon's CacheDB: a check must not migrate the schema.
    with OfflineDB(folder / DB_NAME) as db:
        verdict = db.quick_check()
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        rows = {
            r.id: ObjectRecord(r.id, r.key, r.version, r.size, r.chunk_size, r.data_name, r.bytes_cached,
                               r.complete, validator=r.validator)
            for r in db.objects()
        }
        for object_id, idx in db.chunks():
            if object_id in rows:  # foreign keys make any other impossible
                rows[object_id].chunks.add(idx)
        return rows


def _usable(row: ObjectRecord, report: FolderReport) -> bool:
    """Whether the row's file passed the local checks (worth comparing bytes)."""
    bad = {ProblemKind.MISSING_FILE, ProblemKind.BAD_ROW, ProblemKind.WRONG_SIZE}
    return not any(p.key == row.key and p.data_file == row.data_name and p.kind in bad
                   for p in report.problems)


def _check_files(folder: Path, rows: dict[int, ObjectRecord], report: FolderReport) -> None:
    add = report.problems.append
    for row in rows.values():
        where = {"key": row.key, "data_file": row.data_name}
        if row.chunk_size <= 0 or row.size < 0 or not row.data_name:
            add(Problem(ProblemKind.BAD_ROW, f"impossible row: size {row.size}, chunk size {row.chunk_size}", **where))
            continue
        try:
            found = os.stat(data_path(folder, row.data_name)).st_size
        except FileNotFoundError:
            add(Problem(ProblemKind.MISSING_FILE, "the data file is missing", **where))
            continue
        if found != row.size:
            add(Problem(ProblemKind.WRONG_SIZE, f"data file has {found} bytes, the object {row.size}", **where))
            continue
        beyond = sorted(i for i in row.chunks if not 0 <= i < row.nchunks)
        if beyond:
            add(Problem(ProblemKind.BAD_CHUNK, f"chunk rows {beyond} past its {row.nchunks} chunks", **where))
        good = row.chunks - set(beyond)
        expected_bytes = sum(e - s for s, e in map(row.span, good))
        if row.bytes_cached != expected_bytes:
            add(Problem(ProblemKind.BAD_BYTES_CACHED,
                        f"bytes_cached {row.bytes_cached}, its chunk rows hold {expected_bytes}", **where))
        if row.complete != (len(good) == row.nchunks):
            add(Problem(ProblemKind.BAD_COMPLETE,
                        f"complete is {int(row.complete)} with {len(good)} of {row.nchunks} chunks", **where))
    known = {row.data_name for row in rows.values()}
    data_dir = folder / DATA_NAME
    for sub in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        if not sub.is_dir():
            continue
        for entry in sorted(sub.iterdir()):
            report.data_files += 1
            if entry.name in known and entry.name[:2] == sub.name:
                continue
            # An empty object's file never gets a row (it has no chunks to
            # record): that is the cache's normal state, not damage.
            if entry.is_file() and entry.stat().st_size == 0:
                continue
            # Otherwise a fetch was cut short before its first record, or the
            # file sits in the wrong fan-out folder, where the cache never looks.
            add(Problem(ProblemKind.ORPHAN_FILE, "no object row names this data file",
                        data_file=str(entry.relative_to(data_dir))))


def _repair(folder: Path, rows: dict[int, ObjectRecord], report: FolderReport) -> None:
    """Drop what is bad: one transaction for the records, then the files."""
    by_key: dict[tuple[str, str], ObjectRecord] = {(r.key, r.data_name): r for r in rows.values()}
    drop_rows: set[int] = set()
    drop_chunks: dict[int, set[int]] = defaultdict(set)
    recount: set[int] = set()
    files_to_delete: list[Path] = []
    files_to_resize: list[tuple[Path, int]] = []
    for p in report.problems:
        row = by_key.get((p.key, p.data_file)) if p.key is not None else None
        if p.kind is ProblemKind.ORPHAN_FILE:
            files_to_delete.append(folder / DATA_NAME / p.data_file)
            continue
        if row is None:
            continue
        if p.kind in (ProblemKind.MISSING_FILE, ProblemKind.BAD_ROW, ProblemKind.STALE):
            drop_rows.add(row.id)
            if p.kind is not ProblemKind.MISSING_FILE and row.data_name:
                files_to_delete.append(data_path(folder, row.data_name))
        elif p.kind is ProblemKind.WRONG_SIZE:
            # As the cache does when it meets one: trust none of its chunks.
            drop_chunks[row.id] |= row.chunks
            files_to_resize.append((data_path(folder, row.data_name), row.size))
        elif p.kind is ProblemKind.BAD_CHUNK:
            drop_chunks[row.id] |= {i for i in row.chunks if not 0 <= i < row.nchunks}
        elif p.kind is ProblemKind.CORRUPT:
            drop_chunks[row.id] |= set(p.chunks)
        recount.add(row.id)
    counts: dict[int, tuple[int, bool]] = {}
    for object_id in recount - drop_rows:
        row = rows[object_id]
        left = row.chunks - drop_chunks.get(object_id, set())
        left = {i for i in left if 0 <= i < row.nchunks}
        counts[object_id] = (sum(e - s for s, e in map(row.span, left)), len(left) == row.nchunks)
    with OfflineDB(folder / DB_NAME) as db:
        db.repair(drop_rows, drop_chunks, counts)
    # The records no longer name these bytes: now the files may go.
    for path in files_to_delete:
        path.unlink(missing_ok=True)
    for path, size in files_to_resize:
        os.truncate(path, size)
    for p in report.problems:
        p.repaired = True


def recorded_source(folder: Path) -> str | None:
    """The source the folder caches, if its database records it (meta 'source')."""
    try:
        with OfflineDB(folder / DB_NAME) as db:
            return db.source()
    except sqlite3.DatabaseError:
        return None


def source_of(folder: Path, candidates: list[str]) -> str | None:
    """Which of `candidates` (URLs as typed) this folder caches, if any.

    The folder is named by a hash of the remote's normalised source; for an
    HTTP URL that means a trailing slash, so both spellings are tried.
    """
    for source in candidates:
        for spelling in (source, source.rstrip("/") + "/"):
            if folder.name.endswith("-" + source_digest(spelling)):
                return spelling
    return None
