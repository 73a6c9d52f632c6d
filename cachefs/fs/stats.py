"""Counters of what the daemon did, for tests, logs and `cachefs status`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Stats:
    """Daemon counters; monotonic except `backing_ids_open` and `backing_ids_kept`."""

    opens: dict[str, int] = field(default_factory=lambda: {"daemon": 0, "page-cache": 0, "passthrough": 0})
    hits: int = 0  # opens of files already complete in the cache
    misses: int = 0  # opens of files that needed fetching
    fuse_reads: int = 0  # READ requests the daemon served
    bytes_served: int = 0  # bytes those requests returned
    backing_ids_open: int = 0  # registered for open passthrough handles
    backing_ids_kept: int = 0  # registered, kept for the next open (see `kept`)
    kept_reopens: int = 0  # passthrough opens that found their backing id kept
    bytes_pushed: int = 0  # put into the kernel's page cache around random misses
    passthrough: bool = False
    passthrough_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)
