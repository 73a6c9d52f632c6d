"""Issue 18, part 2: `cachefs mount --foreground` under systemd.

A `Type=notify` unit is up when the service sends "READY=1" to the socket
named in $NOTIFY_SOCKET; `systemctl stop` sends SIGTERM. Each test binds its
own AF_UNIX datagram socket (a path, or an abstract name), runs the real
command with NOTIFY_SOCKET pointing there, and checks what arrives and when.
The units shipped in contrib/systemd are checked by systemd's own verifier.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounter import CACHEFS, is_mounted, run, sha256_of, wait_until

from cachefs.cli.app import build_parser
from cachefs.localstore import NginxStore, TreeSpec, make_tree
from cachefs.localstore.nginx import free_port

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
# After READY=1, how long to listen for a second (or late) message.
QUIET_S = 0.5


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("systemd-tree")
    spec = TreeSpec(seed=182, small_count=6, small_dirs=2, nesting_depth=1,
                    special_names=(), special_dirs=())
    return root, make_tree(root, spec)


@pytest.fixture(scope="module")
def small_store(small_tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    with NginxStore(small_tree[0], tmp_path_factory.mktemp("systemd-nginx")) as store:
        yield store


class NotifySocket:
    """The socket systemd would listen on: a bound AF_UNIX datagram socket."""

    def __init__(self, tmp_path: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cachefs-test-{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)

    def receive(self, timeout: float) -> list[str] | None:
        """The next message's lines, or None if none came within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode().splitlines()
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def foreground(source: str, mountpoint: Path, cache_dir: Path, notify: NotifySocket | None,
               log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`cachefs mount --foreground` as our child, as systemd would start it;
    killed (by pid) and its mount detached if a test leaves them."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.env_value
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(CACHEFS), "mount", "--foreground", source, str(mountpoint), "--cache-dir", str(cache_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(EXIT_TIMEOUT_S)
        if is_mounted(mountpoint):
            run(["umount", "-l", mountpoint], EXIT_TIMEOUT_S)


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


def test_ready_once_the_mount_answers_and_sigterm_stops_cleanly(
    notify: NotifySocket, small_store: NginxStore, small_tree, tmp_path: Path
) -> None:
    _root, hashes = small_tree
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "foreground.log"
    with foreground(small_store.url, mountpoint, tmp_path / "cache", notify, log) as process:
        message = notify.receive(READY_TIMEOUT_S)
        output = log.read_text(errors="replace")
        assert message is not None, f"no message on NOTIFY_SOCKET within {READY_TIMEOUT_S:g} s:\n{output}"
        assert "READY=1" in message, message
        assert f"STATUS=mounted at {mountpoint}" in message, message
        # Ready means ready: the mount answers now, with the right bytes.
        assert is_mounted(mountpoint), "READY=1 came before the mount"
        for rel, digest in hashes.items():
            assert sha256_of(mountpoint / rel) == digest, rel
        assert notify.receive(QUIET_S) is None, "READY=1 was sent more than once"

        process.send_signal(signal.SIGTERM)
        rc = process.wait(EXIT_TIMEOUT_S)
        output = log.read_text(errors="replace")
        assert rc == 0, f"exit status {rc} after SIGTERM:\n{output}"
        assert not is_mounted(mountpoint), "still mounted after SIGTERM"
        assert "SIGTERM: unmounting" in output and "Traceback" not in output, output


def test_sigterm_with_a_file_open_detaches_and_exits_0(
    small_store: NginxStore, small_tree, tmp_path: Path
) -> None:
    """`systemctl stop` while a reader holds a file open: the mount is busy,
    so it is detached lazily; the daemon still exits 0."""
    _root, hashes = small_tree
    rel = sorted(hashes)[0]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    notify = NotifySocket(tmp_path, abstract=False)
    log = tmp_path / "foreground.log"
    try:
        with foreground(small_store.url, mountpoint, tmp_path / "cache", notify, log) as process:
            assert notify.receive(READY_TIMEOUT_S) is not None, log.read_text(errors="replace")
            held = os.open(mountpoint / rel, os.O_RDONLY)
            try:
                process.send_signal(signal.SIGTERM)
                rc = process.wait(EXIT_TIMEOUT_S)
                output = log.read_text(errors="replace")
                assert rc == 0, f"exit status {rc} after SIGTERM:\n{output}"
                assert not is_mounted(mountpoint), "still mounted after SIGTERM"
                assert "Traceback" not in output, output
            finally:
                # The session has ended under it: closing may say ENOTCONN.
                with contextlib.suppress(OSError):
                    os.close(held)
    finally:
        notify.close()


def test_a_failed_mount_sends_no_ready(notify: NotifySocket, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    port = free_port()  # nothing listens there
    log = tmp_path / "foreground.log"
    with foreground(f"http://127.0.0.1:{port}/data/", mountpoint, tmp_path / "cache", notify,
                    log) as process:
        rc = process.wait(READY_TIMEOUT_S)
        assert rc != 0
        message = notify.receive(QUIET_S)
        assert message is None or "READY=1" not in message, message
        assert not is_mounted(mountpoint)


# How many times the early-SIGTERM tests try: each run hits the window once.
EARLY_STOP_TRIES = 5


@pytest.mark.parametrize("when", ["right-after-ready", "once-mounted-without-notify-socket"])
def test_sigterm_while_starting_still_stops_cleanly(
    when: str, small_store: NginxStore, tmp_path: Path
) -> None:
    """`systemctl stop` as soon as the unit is up (READY=1 just sent), or as
    soon as the mount shows (no NOTIFY_SOCKET: not under systemd): the
    daemon must already handle SIGTERM, unmount and exit 0, not die of it
    and leave a dead mount."""
    for attempt in range(EARLY_STOP_TRIES):
        mountpoint = tmp_path / f"mnt{attempt}"
        mountpoint.mkdir()
        log = tmp_path / f"foreground{attempt}.log"
        notify = NotifySocket(tmp_path, abstract=True) if when.startswith("right") else None
        try:
            with foreground(small_store.url, mountpoint, tmp_path / "cache", notify, log) as process:
                if notify is not None:
                    assert notify.receive(READY_TIMEOUT_S) is not None, log.read_text(errors="replace")
                else:
                    assert wait_until(lambda: is_mounted(mountpoint) or process.poll() is not None,
                                      READY_TIMEOUT_S)
                process.send_signal(signal.SIGTERM)
                rc = process.wait(EXIT_TIMEOUT_S)
                output = log.read_text(errors="replace")
                assert rc == 0, f"try {attempt}: exit status {rc} after SIGTERM:\n{output}"
                assert not is_mounted(mountpoint), f"try {attempt}: still mounted after SIGTERM"
        finally:
            if notify is not None:
                notify.close()


# -- the shipped units --------------------------------------------------------------


def unit_fields(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if "=" in line and not line.lstrip().startswith("#"))


def test_shipped_service_runs_the_foreground_mount() -> None:
    fields = unit_fields(CONTRIB / "cachefs-data.service")
    assert fields["Type"] == "notify"
    argv = shlex.split(fields["ExecStart"])
    assert Path(argv[0]).name == "cachefs"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "mount" and args.foreground and args.mountpoint == "/mnt/data"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_shipped_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own checks (a .mount unit's name must match Where=...), with
    ExecStart pointing at this install's cachefs (it must exist)."""
    for unit in (CONTRIB / "cachefs-data.service", CONTRIB / "mnt-data.mount"):
        text = unit.read_text().replace("/usr/local/bin/cachefs", str(CACHEFS))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.glob("*.*")))],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
