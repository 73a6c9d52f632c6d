"""The detached daemon's log: daemon.log in its cache folder, with a way out.

daemon.log sits on the cache's disk. When that disk is full (or the folder
was removed) the file cannot take the very lines that would say what went
wrong, so each record that fails there goes to a fallback instead: syslog
(journald) through /dev/log when there is one, and a file in the runtime
folder (`/run/cachefs/mounts/<mount>.log`, a tmpfs as a rule), which
outlives the daemon for a post-mortem. The switch is announced once each
way. The file is reopened when it was removed or replaced, so a cache
folder rebuilt after a loss gets a new daemon.log.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import time
from pathlib import Path

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "cachefs[%(process)d]: %(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"
FILE_MODE = 0o600
# After a failed write, how long records go to the fallback before
# daemon.log is tried again.
RETRY_S = 10.0


class AppendFile:
    """One log file written with O_APPEND; reopened when removed or replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._id: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        """Write all of `data` or raise OSError (a short write is ENOSPC)."""
        self._reopen_if_gone()
        written = os.write(self._fd, data)
        if written < len(data):
            raise OSError(errno.ENOSPC, "No space left on device (short write)")

    def _reopen_if_gone(self) -> None:
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._id
        except OSError:
            same = False
        if same and self._fd >= 0:
            return
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._id = None


class DaemonLogHandler(logging.Handler):
    """daemon.log, and the fallbacks for each record it cannot take."""

    def __init__(self, path: Path, fallback_path: Path | None) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self._main = AppendFile(path)
        self._fallback = AppendFile(fallback_path) if fallback_path is not None else None
        self._syslog: logging.Handler | None = None
        if os.path.exists(SYSLOG_SOCKET):
            try:
                self._syslog = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
                self._syslog.setFormatter(logging.Formatter(SYSLOG_FORMAT))
            except OSError:
                self._syslog = None
        self._failing: str | None = None  # why daemon.log fails, while it does
        self._retry_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        if self._failing is not None and time.monotonic() < self._retry_at:
            self._to_fallbacks(record, data)
            return
        try:
            self._main.write(data)
        except OSError as e:
            # On a nearly full disk a short line may fit now and then: keep
            # to the fallback a while rather than flap between the two. A
            # removed folder comes back at once when the cache is rebuilt.
            self._retry_at = 0.0 if e.errno == errno.ENOENT else time.monotonic() + RETRY_S
            if self._failing is None:
                self._failing = e.strerror or str(e)
                self._to_fallbacks(self._note(record, f"cannot write {self._main.path} ({self._failing}); "
                                                      f"logging to {self._fallback_names()} until it can"))
            self._to_fallbacks(record, data)
            return
        if self._failing is not None:
            self._failing = None
            self._to_fallbacks(self._note(record, f"{self._main.path} can be written again"))

    def _fallback_names(self) -> str:
        names = [str(self._fallback.path)] if self._fallback is not None else []
        if self._syslog is not None:
            names.append("syslog")
        return " and ".join(names) or "nowhere"

    def _note(self, record: logging.LogRecord, text: str) -> logging.LogRecord:
        return logging.LogRecord("cachefs.log", logging.WARNING, __file__, 0, text, None, None)

    def _to_fallbacks(self, record: logging.LogRecord, data: bytes | None = None) -> None:
        if data is None:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        if self._fallback is not None:
            try:
                self._fallback.write(data)
            except OSError:
                pass  # nowhere left to say it; the next record tries again
        if self._syslog is not None:
            self._syslog.emit(record)

    def close(self) -> None:
        self._main.close()
        if self._fallback is not None:
            self._fallback.close()
        if self._syslog is not None:
            self._syslog.close()
        super().close()


def setup_logging(level: str, stream: object | None) -> None:
    """Root logging at `level`, to `stream` when one is given (a foreground mount)."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if stream is not None:
        handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # httpx logs every request at INFO: too much for a daemon's log.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))


def log_to_file(path: Path, fallback: Path | None) -> None:
    """Send the root logger to `path` as well, with `fallback` when it cannot be written."""
    logging.getLogger().addHandler(DaemonLogHandler(path, fallback))
