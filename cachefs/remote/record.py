"""How a cache folder's remote was opened, written down for offline tools.

A cache folder is named after its remote's `source` ("s3://bucket/ at
http://127.0.0.1:9000"), which is not always a source that can be opened
again, and says nothing of the backend's other options (region, profile,
unsigned requests...). The daemon writes `remote.json` into its folder once
the remote has answered; `fsck --verify-remote` reads it to open the remote
the way the mount did. It holds the source without its secrets
(`Backend.public_source`) and the backend's options, which are settings,
never credentials.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .base import Remote
from .limits import RequestLimits
from .registry import REGISTRY, Registry, RemoteOptions

RECORD_NAME = "remote.json"
FILE_MODE = 0o600


@dataclass(frozen=True)
class RemoteRecord:
    """A source and its backend's options."""

    source: str
    options: RemoteOptions

    def to_dict(self) -> dict:
        return {"source": self.source, "options": self.options.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, registry: Registry = REGISTRY) -> RemoteRecord:
        """ValueError if `data` is not a record of a registered remote type."""
        try:
            source = data["source"]
            options = registry.options_from_dict(source, data["options"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a remote record: {e!r}") from None
        return cls(source, options)

    def open(self, *, proxy: str | None = None, limits: RequestLimits | None = None,
             registry: Registry = REGISTRY) -> Remote:
        return registry.open(self.source, self.options, proxy=proxy, limits=limits)


def write_record(folder: Path, source: str, options: RemoteOptions | None,
                 registry: Registry = REGISTRY) -> None:
    """Record in `folder` how its remote is opened (None: the default options),
    atomically; OSError if it cannot be."""
    if options is None:
        options = registry.options_from_dict(source, None)
    record = RemoteRecord(registry.public_source(source), options)
    temp = folder / f".{RECORD_NAME}.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record.to_dict(), f)
        os.replace(temp, folder / RECORD_NAME)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_record(folder: Path, registry: Registry = REGISTRY) -> RemoteRecord | None:
    """The folder's record; None if it has none. ValueError if it is unreadable."""
    try:
        text = (folder / RECORD_NAME).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / RECORD_NAME}: {e}") from None
    try:
        return RemoteRecord.from_dict(json.loads(text), registry)
    except ValueError as e:
        raise ValueError(f"{folder / RECORD_NAME}: {e}") from None
