"""What fsck finds in a cache folder, and the rows it reads there."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cachefs.cache import data_file

READ_PIECE = 1 << 20


class ProblemKind(enum.Enum):
    """A broken promise, and (in `repair`) what is dropped for it."""

    MISSING_FILE = "missing-file"  # row without its data file: drop the row
    BAD_ROW = "bad-row"  # row that cannot be right (chunk size <= 0): drop row and file
    WRONG_SIZE = "wrong-size"  # data file truncated or grown: drop its chunks, resize the file
    ORPHAN_FILE = "orphan-file"  # data file without a row: delete it
    BAD_CHUNK = "bad-chunk"  # chunk row past the object's last chunk: drop it
    BAD_BYTES_CACHED = "bad-bytes-cached"  # recount from the chunk rows
    BAD_COMPLETE = "bad-complete"  # recompute from the chunk rows
    STALE = "stale"  # the remote has another version, or none: drop row and file
    CORRUPT = "corrupt"  # cached bytes differ from the remote's: drop those chunks
    UNUSABLE_DB = "unusable-db"  # the database cannot be read: drop the whole folder


class FolderState(enum.Enum):
    CLEAN = "clean"
    DIRTY = "dirty"  # problems found, not (all) repaired
    REPAIRED = "repaired"  # problems found, all repaired
    BUSY = "busy"  # a daemon uses it; not checked (or checked only, with force)


@dataclass
class Problem:
    kind: ProblemKind
    detail: str
    key: str | None = None
    data_file: str | None = None
    chunks: list[int] = field(default_factory=list)  # the chunks concerned, for CORRUPT
    repaired: bool = False

    def as_dict(self) -> dict:
        return {"kind": self.kind.value, "key": self.key, "data_file": self.data_file,
                "chunks": self.chunks, "detail": self.detail, "repaired": self.repaired}


@dataclass
class FolderReport:
    folder: Path
    state: FolderState = FolderState.CLEAN
    objects: int = 0
    data_files: int = 0
    chunks_verified: int = 0  # compared with the remote
    problems: list[Problem] = field(default_factory=list)
    # Checks that could not be made (remote unreachable...): not problems,
    # but the folder is not known to be clean either.
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "state": self.state.value, "objects": self.objects,
                "data_files": self.data_files, "chunks_verified": self.chunks_verified,
                "problems": [p.as_dict() for p in self.problems], "warnings": self.warnings}


@dataclass
class ObjectRecord:
    """An object row of a folder's database, with the chunks recorded for it."""

    id: int
    key: str
    version: str
    size: int
    chunk_size: int
    data_name: str
    bytes_cached: int
    complete: bool
    chunks: set[int] = field(default_factory=set)
    validator: str | None = None  # see migrations/m003_validators.py

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def span(self, idx: int) -> tuple[int, int]:
        start = idx * self.chunk_size
        return start, min(self.size, start + self.chunk_size)


def data_path(folder: Path, name: str) -> Path:
    """Where the cache keeps data file `name` (fanned out by its first byte)."""
    return data_file(folder, name)


def sha256_span(path: Path, start: int, end: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0 and (piece := f.read(min(READ_PIECE, remaining))):
            digest.update(piece)
            remaining -= len(piece)
    return digest.hexdigest()
