"""A first run on a fresh machine: nothing left by an earlier run is needed.

Issue 13: the daemon could not start where /run/cachefs did not exist yet,
and the tests could not see it because earlier runs had left that folder on
every machine they ran on. These tests make each piece of first-run state
themselves, or hide what the machine has, instead of finding it there:

- a new /run (a tmpfs in a private mount namespace: the host's is neither
  seen nor touched), with no /run/cachefs, or one that is empty, or one that
  must be refused;
- a new HOME with XDG_CACHE_HOME unset, empty or new: the default cache dir
  does not exist yet;
- a user other than root with XDG_RUNTIME_DIR unset (a private /tmp in a
  namespace, so no /tmp/cachefs-UID left by anyone counts), or set;
- the machine without /run;
- a `cachefs/` folder in the working directory, as in a checkout next to an
  installed wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounter import CACHEFS, Mounter, default_cache_dir_in, pid_alive, sha256_of, wait_until

from cachefs import runtime
from cachefs.localstore import NginxStore, TreeSpec, make_tree

FRESH_MACHINE = Path(__file__).parents[1] / "support" / "fresh_machine.py"
NOBODY = 65534
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 120.0
DAEMON_EXIT_S = 10.0
SMALL = "small/d00/file-0000.bin"


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fresh-tree")
    spec = TreeSpec(seed=13, small_count=8, small_dirs=2, nesting_depth=2,
                    special_names=("café.txt",), special_dirs=())
    return root, make_tree(root, spec)


@pytest.fixture(scope="module")
def small_store(small_tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    with NginxStore(small_tree[0], tmp_path_factory.mktemp("fresh-nginx")) as store:
        yield store


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def in_private_mounts(tmpfs_over: str, setup: str, *command: str | Path,
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` in a private mount namespace with a new tmpfs over
    `tmpfs_over`; `setup` (shell, as root) runs there first. Mounts made in
    it vanish with it; the host's view is never changed."""
    mode = "1777" if tmpfs_over == "/tmp" else "0755"
    shell = f'mount -t tmpfs -o mode={mode},nosuid,nodev tmpfs {tmpfs_over} && {setup or "true"} && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", shell, "sh",
         *map(str, command)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False, cwd="/",
        stdin=subprocess.DEVNULL, env=env,
    )


# -- the whole first run --------------------------------------------------------


def test_first_run_on_a_fresh_machine() -> None:
    """tests/fresh_machine.py with this install: no /run/cachefs, a new HOME,
    the default cache dir; mount, status, prefetch, sha256 of every file,
    umount, remount. (CI runs the same against the installed wheel.)"""
    result = subprocess.run([sys.executable, FRESH_MACHINE, "--cachefs", CACHEFS],
                            capture_output=True, text=True, timeout=300, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fresh-machine: passed" in result.stdout, result.stdout


# -- the default cache dir ------------------------------------------------------


@pytest.mark.parametrize("xdg_cache_home", ["unset", "empty", "new dir"])
def test_default_cache_dir_of_a_new_user(
    mount: Mounter, small_store: NginxStore, small_tree, tmp_path: Path, xdg_cache_home: str
) -> None:
    """No --cache-dir, HOME new and empty: the default cache dir (README:
    $XDG_CACHE_HOME/cachefs, else ~/.cache/cachefs) is created, mode 0700,
    and every command that takes --cache-dir finds it by default too."""
    root, hashes = small_tree
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": PLAIN_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    if xdg_cache_home == "empty":
        env["XDG_CACHE_HOME"] = ""
    elif xdg_cache_home == "new dir":
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    expected = default_cache_dir_in(env)
    assert not expected.exists()

    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(small_store.url, mountpoint, None, env=env)
    assert result.returncode == 0, result.stderr + mount.log_tails()
    assert mount.is_mounted(mountpoint)
    assert expected.is_dir() and mode_of(expected) == 0o700, oct(mode_of(expected))
    assert sha256_of(mountpoint / SMALL) == hashes[SMALL]
    (folder,) = [p for p in expected.iterdir() if p.is_dir()]
    assert (folder / "state.db").is_file() and (folder / "daemon.log").is_file()
    status = subprocess.run([CACHEFS, "status", mountpoint, "--json"], capture_output=True,
                            text=True, env=env, timeout=TIMEOUT_S, check=False)
    assert status.returncode == 0 and json.loads(status.stdout)["cache_dir"] == str(folder), status
    mount.umount(mountpoint)

    # The offline tools look in the same place without being told.
    fsck = subprocess.run([CACHEFS, "fsck"], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, check=False)
    assert fsck.returncode == 0 and fsck.stdout.startswith(f"{folder}: clean"), fsck
    clear = subprocess.run([CACHEFS, "cache", "clear"], capture_output=True, text=True, env=env,
                           timeout=TIMEOUT_S, check=False)
    assert clear.returncode == 0 and not folder.exists(), clear
    if xdg_cache_home == "new dir":
        assert not (home / ".cache").exists(), "a cache dir was made in HOME although XDG_CACHE_HOME was set"


# -- /run/cachefs ---------------------------------------------------------------


# Runs in the namespace: mount, read, status and umount, reporting what it saw
# as one JSON line; whatever happens, it leaves nothing mounted.
_MOUNT_PROBE = r"""
import json, os, subprocess, sys
from cachefs.kernel.mounting import is_mounted
cachefs, url, mountpoint, cache_dir, rel = sys.argv[1:]
def mounted():
    return is_mounted(mountpoint)
def run(*args):
    return subprocess.run([cachefs, *args], capture_output=True, text=True, timeout=60)
report = {}
try:
    m = run("mount", url, mountpoint, "--cache-dir", cache_dir)
    report.update(mount_rc=m.returncode, mount_err=m.stderr, mounted=mounted())
    runtime = "/run/cachefs/mounts"
    if os.path.isdir(runtime):
        for name in os.listdir(runtime):
            if name.endswith(".json"):
                report["pid"] = json.load(open(os.path.join(runtime, name)))["pid"]
                print(json.dumps({"pid": report["pid"]}), flush=True)
    if report["mounted"] and m.returncode == 0:
        report["modes"] = {p: oct(os.stat(p).st_mode & 0o7777) for p in ("/run/cachefs", runtime)}
        report["read"] = open(os.path.join(mountpoint, rel), "rb").read().hex()
        s = run("status", "--json")
        report["status"] = [e["mountpoint"] for e in json.loads(s.stdout)] if s.returncode == 0 else s.stderr
        u = run("umount", mountpoint)
        report.update(umount_rc=u.returncode, umount_err=u.stderr)
finally:
    if mounted():
        subprocess.run(["umount", "-l", mountpoint])
    report["mounted_at_end"] = mounted()
    print(json.dumps(report), flush=True)
"""


def probe_mount(setup: str, store: NginxStore, tmp_path: Path) -> dict:
    """_MOUNT_PROBE's report, plus `daemon_left_running`: whether the daemon
    still ran once the probe had ended (it is then killed)."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = in_private_mounts("/run", setup, sys.executable, "-c", _MOUNT_PROBE, CACHEFS,
                               store.url, mountpoint, tmp_path / "cache", SMALL)
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # A daemon left running keeps its namespace, and the mount in it, alive.
    left = [pid for pid in {r["pid"] for r in reports if "pid" in r}
            if pid_alive(pid) and not wait_until(lambda p=pid: not pid_alive(p), DAEMON_EXIT_S)]
    for pid in left:
        with contextlib.suppress(OSError):
            if b"cachefs" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    assert result.returncode == 0 and reports, result.stdout + result.stderr
    return {**reports[-1], "daemon_left_running": bool(left)}


@pytest.mark.parametrize("setup", ["", "mkdir -m 0755 /run/cachefs"], ids=["absent", "empty"])
def test_daemon_makes_its_runtime_folder(
    small_store: NginxStore, small_tree, tmp_path: Path, setup: str
) -> None:
    """A new /run with no /run/cachefs, or an empty one (as another tool or
    an older cachefs might leave it): the daemon makes what is missing, 0700."""
    root, hashes = small_tree
    report = probe_mount(setup, small_store, tmp_path)
    assert report["mount_rc"] == 0 and report["mounted"], report
    assert report["modes"] == {"/run/cachefs": "0o700", "/run/cachefs/mounts": "0o700"}, report
    assert report["read"] == (root / SMALL).read_bytes().hex()
    assert report["status"] == [str(tmp_path / "mnt")], report
    assert report["umount_rc"] == 0 and not report["mounted_at_end"], report
    assert not report["daemon_left_running"], "the daemon outlived its mount"


@pytest.mark.parametrize("setup", [
    "mkdir -m 0700 /run/cachefs && chown 65534:65534 /run/cachefs",
    "touch /run/cachefs",
    "mkdir /run/elsewhere && ln -s /run/elsewhere /run/cachefs",
    "mkdir -p /run/cachefs && touch /run/cachefs/mounts",
], ids=["other-owner", "a-file", "a-symlink", "mounts-a-file"])
def test_unusable_runtime_folder_is_refused_before_mounting(
    small_store: NginxStore, tmp_path: Path, setup: str
) -> None:
    """A runtime folder the daemon cannot trust or use: `cachefs mount` fails
    with one line naming it, and nothing is left mounted (no dead mount)."""
    report = probe_mount(setup, small_store, tmp_path)
    err = report["mount_err"]
    assert report["mount_rc"] == 1 and "/run/cachefs" in err and len(err.strip().splitlines()) == 1, report
    assert "Traceback" not in err and "internal error" not in err, err
    assert not report["mounted"] and not report["mounted_at_end"], "a failed mount left a mount behind"
    assert not report["daemon_left_running"], report


# -- not root: the fallback runtime folder ---------------------------------------

# Prints what prepare_runtime_dir() answered, and lstat of each path given.
_RUNTIME_PROBE = r"""
import json, os, stat, sys
from cachefs.runtime import RuntimeDirError, prepare_runtime_dir
try:
    answer = {"path": str(prepare_runtime_dir())}
except RuntimeDirError as e:
    answer = {"error": str(e)}
answer["uid"] = os.geteuid()
answer["stat"] = {}
for p in sys.argv[1:]:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        continue
    answer["stat"][p] = [st.st_uid, oct(stat.S_IMODE(st.st_mode)), stat.S_ISDIR(st.st_mode)]
print(json.dumps(answer))
"""


def runtime_dir_as_nobody(setup: str, *paths: str, xdg_runtime_dir: str | None = None) -> dict:
    """prepare_runtime_dir() run by user nobody, HOME and XDG_* unset, in a
    namespace with a private /tmp that `setup` (as root) prepares."""
    env = {"PATH": PLAIN_PATH, "LANG": "C.UTF-8"}
    if xdg_runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = xdg_runtime_dir
    # setpriv runs Python itself: the interpreter may sit where only root
    # can look up its path (a pyenv under /root, say).
    result = in_private_mounts(
        "/tmp", setup, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        sys.executable, "-c", _RUNTIME_PROBE, *paths, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["uid"] == NOBODY
    return answer


def cachefs_package_dir() -> str:
    import cachefs

    return os.path.dirname(cachefs.__file__)


@pytest.fixture(scope="module")
def nobody_can_run_python() -> None:
    # These tests give the namespace a private /tmp, which would hide a
    # checkout or virtualenv kept under /tmp.
    for where in (Path(sys.prefix), Path(cachefs_package_dir())):
        if where.resolve().is_relative_to("/tmp"):
            pytest.skip(f"{where} is under /tmp, which these tests replace with a private tmpfs")
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            sys.executable, "-c", "import cachefs.daemon"],
                           capture_output=True, text=True, cwd="/", timeout=TIMEOUT_S, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {sys.executable} and import cachefs: {probe.stderr}")


FALLBACK = f"/tmp/cachefs-{NOBODY}"
FALLBACK_LEVELS = (FALLBACK, f"{FALLBACK}/cachefs", f"{FALLBACK}/cachefs/mounts")


def test_non_root_without_xdg_runtime_dir_uses_a_private_tmp_folder(nobody_can_run_python) -> None:
    answer = runtime_dir_as_nobody("true", *FALLBACK_LEVELS)
    assert answer.get("path") == FALLBACK_LEVELS[-1], answer
    assert answer["stat"] == {p: [NOBODY, "0o700", True] for p in FALLBACK_LEVELS}, answer


def test_non_root_tightens_its_own_loose_folder(nobody_can_run_python) -> None:
    answer = runtime_dir_as_nobody(f"mkdir -m 0777 {FALLBACK} && chown {NOBODY} {FALLBACK}",
                                   *FALLBACK_LEVELS)
    assert answer.get("path") == FALLBACK_LEVELS[-1], answer
    assert answer["stat"] == {p: [NOBODY, "0o700", True] for p in FALLBACK_LEVELS}, answer


@pytest.mark.parametrize("setup", [
    f"mkdir -m 0777 {FALLBACK}",  # made first by root, or anyone else
    f"mkdir -m 0700 /tmp/theirs && chown {NOBODY} /tmp/theirs && ln -s /tmp/theirs {FALLBACK}",
    f"mkdir -m 0700 {FALLBACK} && chown {NOBODY} {FALLBACK} && mkdir -m 0777 {FALLBACK}/cachefs",
], ids=["owned-by-root", "a-symlink", "inner-level-owned-by-root"])
def test_non_root_refuses_a_folder_someone_else_made(nobody_can_run_python, setup: str) -> None:
    """A shared /tmp: a folder at our name that we do not own (or a symlink)
    could be read or swapped by its owner, so it is refused, in one line."""
    answer = runtime_dir_as_nobody(setup, *FALLBACK_LEVELS)
    assert "error" in answer and f"uid {NOBODY}" in answer["error"], answer
    assert FALLBACK in answer["error"] and "\n" not in answer["error"], answer
    assert FALLBACK_LEVELS[-1] not in answer["stat"], "it created folders inside one it refused"


def test_non_root_with_xdg_runtime_dir(nobody_can_run_python) -> None:
    xdg = "/tmp/user-runtime"
    levels = (f"{xdg}/cachefs", f"{xdg}/cachefs/mounts")
    answer = runtime_dir_as_nobody(f"mkdir -m 0700 {xdg} && chown {NOBODY} {xdg}", *levels,
                                   FALLBACK, xdg_runtime_dir=xdg)
    assert answer.get("path") == levels[-1], answer
    assert answer["stat"] == {p: [NOBODY, "0o700", True] for p in levels}, answer


def test_non_root_with_a_missing_xdg_runtime_dir(nobody_can_run_python) -> None:
    """XDG_RUNTIME_DIR naming a folder that is gone (its session ended): a
    one-line refusal, not a traceback."""
    answer = runtime_dir_as_nobody("true", xdg_runtime_dir="/tmp/gone")
    assert "/tmp/gone/cachefs" in answer.get("error", ""), answer


# -- no /run at all ---------------------------------------------------------------


def test_root_without_run_uses_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A container without /run: root falls back like any user, to
    XDG_RUNTIME_DIR, else /tmp/cachefs-0."""
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: False if p == "/run" else real_isdir(p))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime.runtime_dir() == Path(f"/tmp/cachefs-{os.getuid()}/cachefs/mounts")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime.prepare_runtime_dir() == tmp_path / "cachefs" / "mounts"
    assert mode_of(tmp_path / "cachefs") == mode_of(tmp_path / "cachefs" / "mounts") == 0o700
    monkeypatch.undo()
    assert runtime.runtime_dir() == Path("/run/cachefs/mounts")


# -- the code that runs -------------------------------------------------------------


def test_daemon_runs_the_installed_package_not_the_working_directory(
    mount: Mounter, small_store: NginxStore, small_tree, tmp_path: Path
) -> None:
    """`cachefs mount` run from a folder holding a cachefs/ package (a
    checkout, next to a wheel installed from it): the daemon imports what
    the command imports, not that folder."""
    root, hashes = small_tree
    cwd = tmp_path / "checkout"
    (cwd / "cachefs").mkdir(parents=True)
    marker = tmp_path / "imported-from-cwd"
    (cwd / "cachefs" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('the cachefs in the working directory ran')\n")
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(small_store.url, mountpoint, tmp_path / "cache", cwd=cwd)
    assert not marker.exists(), "the daemon imported cachefs from the working directory"
    assert result.returncode == 0, result.stderr
    assert sha256_of(mountpoint / SMALL) == hashes[SMALL]
