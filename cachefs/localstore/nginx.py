"""Serve a directory over loopback HTTP with nginx, the way a plain store would.

The same directory is exposed three times: under /data/ with nginx's JSON
autoindex and under /html/ with its HTML autoindex, so both index parsers of
cachefs.remote meet one tree, and under /slow/ (JSON) with every response's
rate limited, to make slow transfers on demand. nginx runs in the foreground
as our child process, with every file it writes (pid, logs, temp dirs) inside
`workdir`, so a test or benchmark owns it completely and stops it by pid.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .process import stop_child
from .tls import ServerCert

LOOPBACK = "127.0.0.1"
DATA_PREFIX = "/data/"
HTML_PREFIX = "/html/"
SLOW_PREFIX = "/slow/"
# Per-request rate of /slow/: slow enough that one chunk takes seconds, so a
# test can see whether a cold read blocks other requests.
DEFAULT_SLOW_RATE = 2 * 1024 * 1024

# How long start() waits for the first answer, and stop() for a clean exit.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
# A port picked as free may be taken before nginx binds it; try a few.
BIND_ATTEMPTS = 5
# How much of nginx's error output to quote in an exception.
ERROR_TAIL_LINES = 20

# nginx modules whose temp path directive we set only when compiled in: an
# unknown directive is a fatal config error.
_TEMP_PATH_MODULES = {
    "client_body": None,  # core: always present
    "proxy": "http_proxy",
    "fastcgi": "http_fastcgi",
    "uwsgi": "http_uwsgi",
    "scgi": "http_scgi",
}
# Characters that would change meaning inside a quoted nginx config string
# ('$' starts a variable even there).
_UNSAFE_CONF_CHARS = set('"\\$\n\r')

_NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class NginxError(RuntimeError):
    """nginx is missing, refused its configuration, or did not answer."""


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as nginx logged it."""

    method: str
    # Percent-decoded, relative to the location's prefix ('' for its root);
    # for a request outside both prefixes, the decoded absolute path.
    path: str
    status: int
    # The request's Range header, None when it had none.
    range: str | None
    # Response body bytes nginx sent (headers excluded); for an aborted
    # transfer, what was written before the abort.
    bytes_sent: int
    # "data", "html", "slow", or "" for other locations.
    index: str
    raw_uri: str

    @property
    def is_listing(self) -> bool:
        """True for a request of a directory (an index page)."""
        return self.path == "" or self.path.endswith("/")


def find_nginx() -> str:
    """The nginx executable; /usr/sbin is often not on a non-root PATH."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise NginxError(
        "nginx not found: install it (Debian: apt-get install nginx-light), "
        "or run ./dev setup"
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def conf_quote(value: Path | str) -> str:
    text = str(value)
    if _UNSAFE_CONF_CHARS & set(text):
        raise NginxError(f"path not usable in an nginx config: {text!r}")
    return f'"{text}"'


def _disabled_modules(nginx: str) -> set[str]:
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    return {
        w.removeprefix("--without-").removesuffix("_module")
        for w in words
        if w.startswith("--without-")
    }


# One JSON object a line, so the log parses without guessing at quoting.
_LOG_FORMAT = (
    '\'{"method":"$request_method","uri":"$request_uri","status":$status,'
    '"range":"$http_range","bytes_sent":$body_bytes_sent}\''
)


class NginxProcess:
    """An nginx child process on a free loopback port, all its files in `workdir`.

    Subclasses say what it serves (`config_text`, inside `http {}`) and the
    URL that answers once it is up (`url`). Use as a context manager, or call
    start() and stop().
    """

    def __init__(self, workdir: Path, *, workers: int = 1, port: int = 0) -> None:
        """`port` 0 picks a free one; a fixed port lets a test restart it in place."""
        self.workdir = Path(workdir).resolve()
        self.workers = workers
        self._fixed_port = port
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def server_text(self) -> str:
        """The `server {}` blocks and anything else inside `http {}`."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise NginxError when it cannot start (called by start())."""

    # -- paths inside workdir -------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    @property
    def _output_path(self) -> Path:
        # nginx's own stderr: config errors are printed there before the
        # error log is open.
        return self.workdir / "nginx.out"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Self:
        """Start nginx and return once it answers; raise NginxError if not."""
        if self._proc is not None:
            raise NginxError("nginx already started")
        self.check()
        nginx = find_nginx()
        disabled = _disabled_modules(nginx)
        # nginx creates each temp dir but not their parent.
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(BIND_ATTEMPTS):
            self.port = self._fixed_port or free_port()
            self.conf_path.write_text(self._config(disabled))
            with open(self._output_path, "wb") as out:
                self._proc = subprocess.Popen(
                    [nginx, "-p", str(self.workdir), "-e", str(self.error_log_path),
                     "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_until_answering():
                return self
            last_error = self._failure_text()
            self._reap()
            if "Address already in use" not in last_error:
                break
        raise NginxError(f"nginx failed to start: {last_error}")

    def stop(self) -> None:
        """Stop nginx by pid: SIGTERM, then SIGKILL if it does not exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # Workers are the master's children; remember them in case the master
        # must be killed, which would orphan them.
        workers = _children_of(proc.pid)
        if stop_child(proc, STOP_TIMEOUT_S):
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access log -----------------------------------------------------------

    def access_log(self) -> list[AccessLogEntry]:
        """Every request logged since start or the last clear_access_log()."""
        try:
            raw = self.access_log_path.read_bytes()
        except FileNotFoundError:
            return []
        entries = []
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.strip():
                entries.append(_parse_log_line(line))
        return entries

    def clear_access_log(self) -> None:
        # nginx appends with O_APPEND, so truncating in place is safe.
        if self.access_log_path.exists():
            os.truncate(self.access_log_path, 0)

    # -- internals ------------------------------------------------------------

    def _config(self, disabled_modules: set[str]) -> str:
        w = self.workdir
        temp_paths = "\n".join(
            f"    {name}_temp_path {conf_quote(w / 'tmp' / name)};"
            for name, module in _TEMP_PATH_MODULES.items()
            if module is None or module not in disabled_modules
        )
        # Running as root, nginx's workers would drop to 'nobody' and could
        # not read a tree under a 0700 temp dir; keep them as the caller.
        user = ""
        if os.geteuid() == 0:
            user = (
                f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};"
            )
        return f"""\
# Generated by cachefs.localstore (nginx.py); everything stays in this dir.
daemon off;
master_process on;
worker_processes {self.workers};
{user}
pid {conf_quote(w / 'nginx.pid')};
error_log {conf_quote(self.error_log_path)} warn;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
{temp_paths}
    log_format cachefs escape=json {_LOG_FORMAT};
    access_log {conf_quote(self.access_log_path)} cachefs;

{self.server_text()}}}
"""

    def _wait_until_answering(self) -> bool:
        assert self._proc is not None
        # Never through a proxy from the environment: this is loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with opener.open(self.url, timeout=POLL_INTERVAL_S * 20) as resp:
                    resp.read()
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(POLL_INTERVAL_S)
        return False

    def _failure_text(self) -> str:
        parts = []
        for path in (self._output_path, self.error_log_path):
            if path.exists():
                lines = path.read_text("utf-8", "replace").strip().splitlines()
                parts.extend(lines[-ERROR_TAIL_LINES:])
        if self._proc is not None and self._proc.poll() is None:
            parts.append(f"no answer from {self.url} within {START_TIMEOUT_S:g}s")
        return "\n".join(parts) or "no output"

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._proc = proc
            self.stop()


class NginxStore(NginxProcess):
    """nginx serving `root` the way a plain store would (see the module docstring).

    `url` is the JSON autoindex base (http://127.0.0.1:PORT/data/), `html_url`
    the HTML one, `slow_url` the JSON one with every response limited to
    `slow_rate` B/s.
    """

    def __init__(
        self, root: Path, workdir: Path, *, workers: int = 1, slow_rate: int = DEFAULT_SLOW_RATE,
        port: int = 0, tls: ServerCert | None = None,
    ) -> None:
        """With `tls`, the same locations are also served over HTTPS (`https_url`)."""
        super().__init__(workdir, workers=workers, port=port)
        self.root = Path(root).resolve()
        self.slow_rate = slow_rate
        self.tls = tls
        self.tls_port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{DATA_PREFIX}"

    @property
    def html_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{HTML_PREFIX}"

    @property
    def slow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{SLOW_PREFIX}"

    @property
    def https_url(self) -> str:
        """The JSON autoindex over HTTPS (only with `tls`)."""
        return f"https://{LOOPBACK}:{self.tls_port}{DATA_PREFIX}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise NginxError(f"store root is not a directory: {self.root}")
        if self.tls is not None and not self.tls_port:
            self.tls_port = free_port()

    def server_text(self) -> str:
        root = conf_quote(f"{self.root}/")
        tls = ""
        if self.tls is not None:
            tls = (f"        listen {LOOPBACK}:{self.tls_port} ssl;\n"
                   f"        ssl_certificate {conf_quote(self.tls.cert)};\n"
                   f"        ssl_certificate_key {conf_quote(self.tls.key)};\n")
        return f"""\
    server {{
        listen {LOOPBACK}:{self.port};
{tls}        server_name localhost;

        location {DATA_PREFIX} {{
            alias {root};
            autoindex on;
            autoindex_format json;
        }}

        location {HTML_PREFIX} {{
            alias {root};
            autoindex on;
            autoindex_format html;
            autoindex_exact_size on;
            autoindex_localtime off;
            charset utf-8;
        }}

        location {SLOW_PREFIX} {{
            alias {root};
            autoindex on;
            autoindex_format json;
            limit_rate {self.slow_rate};
        }}

        location / {{
            return 404;
        }}
    }}
"""


def _parse_log_line(line: str) -> AccessLogEntry:
    record = json.loads(line)
    raw_uri = record["uri"]
    path = urllib.parse.unquote(urllib.parse.urlsplit(raw_uri).path)
    index = ""
    for name, prefix in (("data", DATA_PREFIX), ("html", HTML_PREFIX), ("slow", SLOW_PREFIX)):
        if path.startswith(prefix):
            index, path = name, path[len(prefix):]
            break
    return AccessLogEntry(
        method=record["method"],
        path=path,
        status=int(record["status"]),
        range=record["range"] or None,
        bytes_sent=int(record["bytes_sent"]),
        index=index,
        raw_uri=raw_uri,
    )


def _children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after
        # its closing parenthesis. Fields then: state, ppid, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry.name))
    return children
