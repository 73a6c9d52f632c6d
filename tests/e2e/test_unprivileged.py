"""Issue 18, part 3: a regular user mounts, through fusermount3.

Everything here runs as user nobody (setpriv: no capability left) against
the suite's nginx, in a private mount namespace (tests/namespace.py) with a
new tmpfs over /run holding the user's session folders, as logind would
make them: XDG_RUNTIME_DIR=/run/user/65534 and a HOME of their own, with
the default cache dir in it. If the venv's interpreter sits where only root
can look (a pyenv under /root, say), the namespace exposes that one path to
every user; the host's permissions are never changed.

What an unprivileged user gets: the mount, the same bytes, prefetch, status
and umount; not passthrough, which needs CAP_SYS_ADMIN (the daemon says so
in its log and in `status`). And how a root mount serves other users:
`--allow-other`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from namespace import NOBODY, PLAIN_PATH, PrivateNamespace, expose_to_others
from mounter import CACHEFS, Tree, pid_alive, wait_until

import cachefs
from cachefs.localstore import NginxStore

SESSION = "/run/cachefs-test"
HOME = f"{SESSION}/home"
MNT = f"{SESSION}/mnt"
RUNTIME = f"/run/user/{NOBODY}"
USER_ENV = {"PATH": PLAIN_PATH, "LANG": "C.UTF-8", "HOME": HOME, "XDG_RUNTIME_DIR": RUNTIME,
            "USER": "nobody", "LOGNAME": "nobody"}
DAEMON_EXIT_S = 15.0
# What is prefetched, then read back with no data request reaching nginx.
PREFETCHED = ("sizes", "small/d01")

# Run as a user in the namespace: sha256 of each file named on stdin (one
# per line, under argv[1]), as JSON {rel: hex or "ERRNO name"}.
_READER = r"""
import hashlib, json, os, sys
top = sys.argv[1]
out = {}
for rel in sys.stdin.read().splitlines():
    try:
        h = hashlib.sha256()
        with open(os.path.join(top, rel), "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[rel] = h.hexdigest()
    except OSError as e:
        out[rel] = f"ERRNO {os.strerror(e.errno)}"
print(json.dumps(out))
"""


def _code_paths() -> list[Path]:
    """What a user must reach to run this install's cachefs."""
    return [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent,
            Path(cachefs.__file__).resolve().parent.parent]


def dev_fuse_with_mode(mode: int) -> str:
    """Shell putting a /dev/fuse of `mode` over the namespace's /dev/fuse.

    Users open /dev/fuse through fusermount3, as themselves: Debian's fuse3
    package makes it 0666 (a udev rule), but a machine without udev (a
    container, this CI's VM) may have it 0600. The namespace gets the node
    each test wants; the host's stays as it is."""
    rdev = os.stat("/dev/fuse").st_rdev
    return (f"mkdir /run/.dev && mount -t tmpfs -o mode=0755,nosuid tmpfs /run/.dev && "
            f"mknod -m {mode:04o} /run/.dev/fuse c {os.major(rdev)} {os.minor(rdev)} && "
            "mount --bind /run/.dev/fuse /dev/fuse")


def namespace_for_user(dev_fuse_mode: int = 0o666) -> PrivateNamespace:
    setup = " && ".join([
        "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
        dev_fuse_with_mode(dev_fuse_mode),
        expose_to_others(_code_paths()),
        f"mkdir -p {HOME} {MNT} {RUNTIME}",
        f"chown {NOBODY}:{NOBODY} {HOME} {MNT} {RUNTIME}",
        f"chmod 0700 {HOME} {RUNTIME}",
    ])
    return PrivateNamespace(setup)


@pytest.fixture
def user_ns() -> Iterator[PrivateNamespace]:
    with namespace_for_user() as ns:
        probe = ns.run(sys.executable, "-c", "import os, cachefs.cli; print(os.geteuid())",
                       user=NOBODY, env=USER_ENV)
        assert probe.stdout.strip() == str(NOBODY), probe.stderr
        yield ns


def as_user(ns: PrivateNamespace, *cmd: str | Path, user: int | None = NOBODY,
            input: str | None = None):
    return ns.run(*cmd, user=user, env=USER_ENV if user is not None else None, input=input)


def read_all(ns: PrivateNamespace, mountpoint: str, rels: list[str], user: int | None = NOBODY) -> dict[str, str]:
    result = as_user(ns, sys.executable, "-c", _READER, mountpoint, user=user, input="\n".join(rels))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def user_daemon_pid(ns: PrivateNamespace) -> int:
    (state,) = ns.path(f"{RUNTIME}/cachefs/mounts").glob("*.json")
    return json.loads(state.read_text())["pid"]


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid line for {pid}")


def test_a_regular_user_mounts_reads_prefetches_and_unmounts(
    user_ns: PrivateNamespace, store: NginxStore, tree: Tree
) -> None:
    ns = user_ns
    result = as_user(ns, CACHEFS, "mount", store.url, MNT)
    assert result.returncode == 0, result.stderr
    info = ns.mount_of(MNT)
    assert info is not None and info.fstype == "fuse.cachefs" and info.source == store.url, info
    assert f"user_id={NOBODY}" in info.options, info
    pid = user_daemon_pid(ns)
    assert uid_of(pid) == NOBODY, "the daemon does not run as the user"

    # Their own cache dir: the default one, in their HOME.
    cache_root = ns.path(f"{HOME}/.cache/cachefs")
    (folder,) = [p for p in cache_root.iterdir() if p.is_dir()]
    assert folder.stat().st_uid == NOBODY

    # Passthrough is off, and both the log and status say why.
    status = as_user(ns, CACHEFS, "status", MNT, "--json")
    assert status.returncode == 0, status.stderr
    entry = json.loads(status.stdout)
    assert entry["stats"]["passthrough"] is False, entry
    assert "CAP_SYS_ADMIN" in entry["stats"]["passthrough_reason"], entry
    human = as_user(ns, CACHEFS, "status", MNT)
    assert human.returncode == 0, human.stderr
    (line,) = [x for x in human.stdout.splitlines() if x.strip().startswith("passthrough")]
    assert "off" in line and "CAP_SYS_ADMIN" in line, human.stdout
    log = (folder / "daemon.log").read_text()
    assert "passthrough off" in log and "CAP_SYS_ADMIN" in log, log

    # Prefetch, then the prefetched files read with no data request at all.
    prefetch = as_user(ns, CACHEFS, "prefetch", *[f"{MNT}/{d}" for d in PREFETCHED])
    assert prefetch.returncode == 0, prefetch.stderr
    prefetched = [rel for rel in tree.files if rel.startswith(tuple(f"{d}/" for d in PREFETCHED))]
    assert prefetched
    store.clear_access_log()
    assert read_all(ns, MNT, prefetched) == {rel: tree.hashes[rel] for rel in prefetched}
    fetched = [e.path for e in store.access_log() if not e.path.endswith("/")]
    assert not fetched, f"prefetched files were fetched again: {fetched[:5]}"

    # Every file, byte for byte (the big one too, served by the daemon).
    assert read_all(ns, MNT, tree.files) == tree.hashes

    # Root is another user: without allow_other it cannot look in.
    denied = read_all(ns, MNT, prefetched[:1], user=None)
    assert denied[prefetched[0]].startswith("ERRNO"), denied

    umount = as_user(ns, CACHEFS, "umount", MNT)
    assert umount.returncode == 0, umount.stderr
    assert ns.mount_of(MNT) is None
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), "the daemon outlived its mount"
    assert f"daemon for {MNT} stopped" in (folder / "daemon.log").read_text()


def test_allow_other_needs_user_allow_other(user_ns: PrivateNamespace, store: NginxStore) -> None:
    """A user's --allow-other is refused in one line unless /etc/fuse.conf
    has user_allow_other (fusermount3's rule)."""
    ns = user_ns
    conf = ns.path("/etc/fuse.conf")
    if "\nuser_allow_other" in "\n" + conf.read_text():
        pytest.skip("this machine's /etc/fuse.conf has user_allow_other")
    result = as_user(ns, CACHEFS, "mount", store.url, MNT, "--allow-other")
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "user_allow_other" in lines[0], result.stderr
    assert ns.mount_of(MNT) is None


def test_a_root_mount_with_allow_other_serves_other_users(
    user_ns: PrivateNamespace, store: NginxStore, tree: Tree
) -> None:
    ns = user_ns
    rels = [rel for rel in tree.files if rel.startswith("sizes/")]
    for extra, readable in (((), False), (("--allow-other",), True)):
        cache = f"{SESSION}/root-cache"
        result = ns.run(CACHEFS, "mount", store.url, MNT, "--cache-dir", cache, *extra)
        assert result.returncode == 0, result.stderr
        seen = read_all(ns, MNT, rels)
        if readable:
            assert seen == {rel: tree.hashes[rel] for rel in rels}
        else:
            assert all(v.startswith("ERRNO") for v in seen.values()), seen
        result = ns.run(CACHEFS, "umount", MNT)
        assert result.returncode == 0, result.stderr


def test_a_private_dev_fuse_is_explained(store: NginxStore) -> None:
    """/dev/fuse 0600 (no udev rule made it 0666): fusermount3 cannot open
    it for the user; the one-line error says what to change."""
    with namespace_for_user(dev_fuse_mode=0o600) as ns:
        result = as_user(ns, CACHEFS, "mount", store.url, MNT)
        assert result.returncode == 1
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "/dev/fuse" in lines[0] and "0666" in lines[0], result.stderr
        assert ns.mount_of(MNT) is None
