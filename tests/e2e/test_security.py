"""Issue 8, security defaults: private cache files, conservative mount
options, and credentials that never leak.

- The cache directory and everything in it are private: directories 0700,
  files 0600 (state.db and its WAL, data files, daemon.log, lock), and so are
  the daemon's runtime files (state JSON, control socket).
- The mount has default_permissions and no allow_other unless asked.
- Credentials given for the source or the proxy never show in the daemon
  log, the mount table, the runtime state file, the cache's SQLite file or
  folder names, the daemon's process title (/proc/PID/cmdline), or a mount
  error. (S3 credentials from the environment: tests/test_s3.py.)
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from reliability import checked_read, only_folder
from mounter import STATE_DIR, Mounter, Tree, mount_info
from faultproxy import DEFAULT_RATES, FaultConfig, FaultProxy

from cachefs.localstore import NginxStore
from cachefs.localstore.nginx import free_port
from cachefs.localstore.tree import CHUNK

SECRET = "s3cr3t-Pa55w0rd-8f1d"
USER = "alice-proxy-user"
READ = ["sizes/4097.bin", f"sizes/{CHUNK + 1}.bin", "names/café.txt", "sizes/0.bin"]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def loose_modes(root: Path) -> list[str]:
    """Everything under `root` (and itself) more open than 0700 / 0600."""
    loose = []
    for path in [root, *root.rglob("*")]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed by the daemon since the walk saw it (e.g. an empty object's file)
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) & ~want:
            loose.append(f"{path.relative_to(root.parent)}: {oct(stat.S_IMODE(st.st_mode))}")
    return loose


def super_options(mp: Path) -> list[str]:
    found = mount_info(mp)
    assert found is not None, f"{mp} not in mountinfo"
    return list(found.options)


def test_cache_files_are_private(tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mp = mount(store.url, cache)
    for rel in READ:
        assert checked_read(mp, tree, rel).ok == [rel]
    folder = only_folder(cache)
    for name in ("state.db", "lock", "daemon.log", "remote.json"):
        assert (folder / name).exists(), name
    assert any(p.is_file() for p in (folder / "data").rglob("*")), "no data files were written"
    # While mounted: the WAL files exist, and the runtime files.
    assert loose_modes(cache) == []
    pid = mount.daemon_pid(mp)
    runtime = []
    for state in STATE_DIR.glob("*.json"):  # other tests' daemons come and go
        try:
            if json.loads(state.read_text()).get("pid") == pid:
                runtime += [p for p in (state, state.with_suffix(".sock")) if p.exists()]
        except (OSError, ValueError):
            continue
    assert runtime, f"no runtime files of daemon {pid} in {STATE_DIR}"
    loose = [f"{p}: {oct(mode_of(p))}" for p in runtime if mode_of(p) & ~0o600]
    loose += [f"{STATE_DIR}: {oct(mode_of(STATE_DIR))}"] if mode_of(STATE_DIR) & ~0o700 else []
    assert loose == []
    mount.umount(mp)
    mount.cleanup(mp)
    assert loose_modes(cache) == []


def test_default_mount_options(store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url)
    options = super_options(mp)
    assert "default_permissions" in options, options
    assert "allow_other" not in options, options
    assert "ro" in options, options


def test_allow_other_only_when_asked(store: NginxStore, mount: Mounter) -> None:
    mp = mount(store.url, None, "--allow-other")
    options = super_options(mp)
    assert "allow_other" in options and "default_permissions" in options, options


def secret_leaks(secret: str, mp: Path | None, pid: int | None, cache: Path, extra: dict[str, str]) -> list[str]:
    """Where `secret` (or its base64 form in a header) shows up."""
    needles = [secret.encode(), base64.b64encode(f"{USER}:{secret}".encode())]
    leaks = []

    def look(where: str, data: bytes) -> None:
        if any(n in data for n in needles):
            leaks.append(where)

    for path in sorted(cache.rglob("*")):
        look(f"file name {path.relative_to(cache)}", os.fsencode(path.name))
        if path.is_file():
            look(f"file {path.relative_to(cache)}", path.read_bytes())
    if pid is not None:
        look(f"/proc/{pid}/cmdline", Path(f"/proc/{pid}/cmdline").read_bytes())
        look(f"/proc/{pid}/environ", Path(f"/proc/{pid}/environ").read_bytes())
    look("/proc/self/mountinfo", Path("/proc/self/mountinfo").read_bytes())
    for path in STATE_DIR.glob("*.json"):
        look(f"runtime state {path.name}", path.read_bytes())
    for where, text in extra.items():
        look(where, text.encode())
    return leaks


def test_proxy_credentials_do_not_leak(tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    no_stalls = FaultConfig(seed=6, rates={k: v for k, v in DEFAULT_RATES.items() if k != "stall"})
    with FaultProxy(no_stalls, enabled=False) as proxy:
        proxy_url = f"http://{USER}:{SECRET}@127.0.0.1:{proxy.port}"
        mp = mount(store.url, cache, "--proxy", proxy_url, "--log-level", "debug")
        pid = mount.daemon_pid(mp)
        for rel in READ:
            assert checked_read(mp, tree, rel).ok == [rel]
        # Failures get logged with their URLs: make some.
        proxy.enabled = True
        for rel in [r for r in tree.files if r.startswith("small/d02/")][:40]:
            checked_read(mp, tree, rel)
        proxy.enabled = False
        assert proxy.proxy_auth_seen, "the proxy credentials were not used"
        assert proxy.total > 0
        live = secret_leaks(SECRET, mp, pid, cache, {})
        mount.umount(mp)
        mount.cleanup(mp)
    after = secret_leaks(SECRET, None, None, cache, {})
    # A proxy that cannot be reached: the error must not quote the password.
    dead_proxy = f"http://{USER}:{SECRET}@127.0.0.1:{free_port()}"
    result = mount.run_mount(store.url, mount.new_dir("mnt"), tmp_path / "cache2", "--proxy", dead_proxy)
    assert result.returncode != 0
    error_leak = secret_leaks(SECRET, None, None, tmp_path / "cache2", {"mount error": result.stderr})
    assert sorted(set(live + after + error_leak)) == [], (
        f"the proxy password shows in: {sorted(set(live + after + error_leak))}")


def test_source_credentials_do_not_leak(tree: Tree, store: NginxStore, mount: Mounter, tmp_path: Path) -> None:
    """Credentials in an http(s) source URL: refused, or never shown anywhere."""
    cache = tmp_path / "cache"
    source = store.url.replace("http://", f"http://{USER}:{SECRET}@")
    mountpoint = mount.new_dir("mnt")
    result = mount.run_mount(source, mountpoint, cache, "--log-level", "debug")
    leaks = secret_leaks(SECRET, None, None, cache, {"mount output": result.stderr + result.stdout})
    if result.returncode == 0:
        pid = mount.daemon_pid(mountpoint)
        assert checked_read(mountpoint, tree, READ[0]).ok == [READ[0]]
        leaks += secret_leaks(SECRET, mountpoint, pid, cache, {})
        mount.umount(mountpoint)
        mount.cleanup(mountpoint)
        leaks += secret_leaks(SECRET, None, None, cache, {})
    assert sorted(set(leaks)) == [], (
        f"source password (mount exit {result.returncode}) shows in: {sorted(set(leaks))}")
