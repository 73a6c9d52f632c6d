"""What one mount is: the configuration `cachefs mount` hands its daemon.

Kept apart from the daemon's wiring (`serve`) so that the command line can
build a configuration without importing the daemon.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cachefs.cache import DEFAULT_MIN_FREE
from cachefs.remote import REGISTRY, Remote, RemoteOptions, RequestLimits
from cachefs.remote.limits import (
    DEFAULT_MAX_LISTING_BYTES,
    DEFAULT_MIN_RATE,
    DEFAULT_REQUEST_TIMEOUT_S,
)


@dataclass(frozen=True)
class MountConfig:
    source: str
    mountpoint: str
    cache_dir: Path
    metadata_ttl: float = 60.0
    cap_bytes: int | None = None
    min_free_bytes: int = DEFAULT_MIN_FREE
    proxy: str | None = None
    allow_other: bool = False
    passthrough: bool = True
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    min_rate: int = DEFAULT_MIN_RATE
    max_listing_size: int = DEFAULT_MAX_LISTING_BYTES
    # The daemon gives up on a source that has not answered after this long
    # (None: never). `cachefs mount` sets it a little below its own wait, so
    # that it can report why, and no daemon stays whose mount it reported failed.
    startup_timeout: float | None = None
    # The options of the source's remote type (S3Options for s3://, say);
    # None means that type's defaults.
    remote_options: RemoteOptions | None = None

    def to_dict(self) -> dict:
        """Plain data, to hand the configuration to a detached daemon."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["cache_dir"] = str(self.cache_dir)
        d["remote_options"] = None if self.remote_options is None else self.remote_options.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MountConfig":
        """What `to_dict` gave; the source's remote type rebuilds its options."""
        options = REGISTRY.options_from_dict(d["source"], d["remote_options"])
        return cls(**{**d, "cache_dir": Path(d["cache_dir"]), "remote_options": options})

    def open_remote(self) -> Remote:
        """The source's remote, with its options and the request limits;
        ValueError (one line) for a source or options it cannot serve."""
        limits = RequestLimits(self.request_timeout, self.min_rate, self.max_listing_size)
        return REGISTRY.open(self.source, self.remote_options, proxy=self.proxy, limits=limits)
