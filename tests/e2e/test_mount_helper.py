"""Issue 18, part 1: `mount -t fuse.cachefs` and /etc/fstab lines.

mount(8) runs /sbin/mount.fuse.cachefs for these. Each test runs in a
private mount namespace (tests/namespace.py) where a read-only overlay over
/usr/sbin adds the venv's `mount.fuse.cachefs`, as the README's `ln -s`
would, and a tmpfs over /run holds mount(8)'s utab and the daemons' state:
the host's /usr/sbin, /run and /etc/fstab are never touched. A private fstab
file stands for /etc/fstab (`mount --fstab FILE`, util-linux's -T).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from namespace import PrivateNamespace
from mounter import CACHEFS, pid_alive, sha256_of, wait_until

from cachefs.cli import mount_helper
from cachefs.localstore import NginxStore, TreeSpec, make_tree
from cachefs.localstore.nginx import free_port

HELPER = Path(sys.executable).parent / "mount.fuse.cachefs"
SBIN_HELPER = Path("/usr/sbin/mount.fuse.cachefs")
DAEMON_EXIT_S = 15.0
SECRET = "hunter2-not-for-your-eyes"
CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("helper-tree")
    spec = TreeSpec(seed=18, small_count=12, small_dirs=2, nesting_depth=2,
                    special_names=("café.txt",), special_dirs=())
    return root, make_tree(root, spec)


@pytest.fixture(scope="module")
def small_store(small_tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    with NginxStore(small_tree[0], tmp_path_factory.mktemp("helper-nginx")) as store:
        yield store


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[PrivateNamespace]:
    """A namespace whose /sbin has mount.fuse.cachefs and whose /run is new."""
    assert HELPER.is_file(), f"{HELPER} is not installed: run ./dev setup"
    host_had_helper = SBIN_HELPER.exists()
    extra = tmp_path / "sbin-extra"
    extra.mkdir()
    (extra / SBIN_HELPER.name).symlink_to(HELPER)
    setup = ("mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && "
             f"mount -t overlay -o lowerdir={extra}:/usr/sbin overlay /usr/sbin")
    with PrivateNamespace(setup) as namespace:
        found = namespace.run("readlink", "-f", "/sbin/mount.fuse.cachefs").stdout.strip()
        assert found == str(HELPER.resolve()), found
        yield namespace
    assert SBIN_HELPER.exists() == host_had_helper, "the test changed the host's /usr/sbin"


def daemons(ns: PrivateNamespace) -> dict[str, int]:
    """mountpoint -> daemon pid, from the state files in the namespace's /run."""
    found = {}
    for state in ns.path("/run/cachefs/mounts").glob("*.json"):
        info = json.loads(state.read_text())
        found[info["mountpoint"]] = info["pid"]
    return found


def status(ns: PrivateNamespace) -> dict[str, dict]:
    result = ns.run(CACHEFS, "status", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["mountpoint"]: entry for entry in json.loads(result.stdout)}


def check_reads(ns: PrivateNamespace, mountpoint: Path, hashes: dict[str, str]) -> None:
    for rel, digest in hashes.items():
        assert sha256_of(ns.path(mountpoint) / rel) == digest, rel


def daemon_log(cache_dir: Path) -> str:
    (log,) = cache_dir.glob("*/daemon.log")
    return log.read_text("utf-8", "replace")


def umount_and_check_exit(ns: PrivateNamespace, mountpoint: Path, pid: int, cache_dir: Path) -> None:
    """umount(8) unmounts; the daemon then exits by itself, cleanly."""
    result = ns.run("umount", mountpoint)
    assert result.returncode == 0, result.stderr
    assert ns.mount_of(mountpoint) is None
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_S), f"daemon {pid} still runs after umount"
    log = daemon_log(cache_dir)
    assert f"daemon for {mountpoint} stopped" in log, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert str(mountpoint) not in daemons(ns), "the daemon left its state file"


# -- fstab --------------------------------------------------------------------


def test_fstab_lines(ns: PrivateNamespace, small_store: NginxStore, small_tree, tmp_path: Path) -> None:
    """Two fstab lines with the options users write: `mount -a` mounts the
    one without noauto, `mount MOUNTPOINT` the noauto one; both read right,
    with their own cache dirs and limits; `umount` ends both daemons."""
    _root, hashes = small_tree
    mnt_a, mnt_b = tmp_path / "mnt-a", tmp_path / "mnt-b"
    cache_a, cache_b = tmp_path / "cache-a", tmp_path / "cache-b"
    for d in (mnt_a, mnt_b):
        d.mkdir()
    url = small_store.url
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# cachefs lines as in /etc/fstab\n"
        f"{url}  {mnt_a}  fuse.cachefs  cache_dir={cache_a},cache_size=64M,min_free=1M,"
        "metadata_ttl=5,log_level=debug,allow_other,_netdev,nofail,noauto,"
        "x-systemd.automount,x-systemd.mount-timeout=30,comment=cachefs  0  0\n"
        f"{url}  {mnt_b}  fuse.cachefs  defaults,cache_dir={cache_b},no_passthrough,_netdev,nofail  0  0\n"
    )

    result = ns.run("mount", "-a", "--fstab", fstab)
    assert result.returncode == 0, result.stderr
    assert ns.mount_of(mnt_a) is None, "mount -a mounted a noauto line"
    b = ns.mount_of(mnt_b)
    assert b is not None and b.fstype == "fuse.cachefs" and b.source == url, b

    result = ns.run("mount", "--fstab", fstab, mnt_a)
    assert result.returncode == 0, result.stderr
    a = ns.mount_of(mnt_a)
    assert a is not None and a.fstype == "fuse.cachefs" and a.source == url, a
    assert "allow_other" in a.options, a
    assert "allow_other" not in b.options, b

    check_reads(ns, mnt_a, hashes)
    check_reads(ns, mnt_b, hashes)
    seen = status(ns)
    assert Path(seen[str(mnt_a)]["cache_dir"]).parent == cache_a, seen
    assert Path(seen[str(mnt_b)]["cache_dir"]).parent == cache_b, seen
    assert seen[str(mnt_a)]["cache"]["cap_bytes"] == 64 << 20, seen
    assert seen[str(mnt_a)]["cache"]["min_free_bytes"] == 1 << 20, seen
    assert seen[str(mnt_b)]["stats"]["passthrough"] is False, seen
    assert " DEBUG " in daemon_log(cache_a) and " DEBUG " not in daemon_log(cache_b)

    pids = daemons(ns)
    umount_and_check_exit(ns, mnt_a, pids[str(mnt_a)], cache_a)
    umount_and_check_exit(ns, mnt_b, pids[str(mnt_b)], cache_b)


# -- mount -t -------------------------------------------------------------------


def test_mount_t_with_s3_options(ns: PrivateNamespace, small_tree, tmp_path: Path) -> None:
    """The issue's command line, against an S3 endpoint: `mount -t
    fuse.cachefs s3://... MNT -o cache_dir=,cache_size=,metadata_ttl=,
    endpoint_url=,allow_other` (with region and force_path_style)."""
    from s3_fixtures import MotoS3

    root, hashes = small_tree
    moto = MotoS3(tmp_path / "moto-work")
    (tmp_path / "moto-work").mkdir()
    moto.start()
    try:
        moto.make_bucket("fstab-bucket")
        moto.upload_tree(root, "fstab-bucket", "data/")
        mnt, cache = tmp_path / "mnt", tmp_path / "cache"
        mnt.mkdir()
        options = (f"cache_dir={cache},cache_size=32M,metadata_ttl=30,endpoint_url={moto.url},"
                   "region=us-east-1,force_path_style,allow_other")
        env = {**moto.env(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        result = ns.run("mount", "-t", "fuse.cachefs", "s3://fstab-bucket/data", mnt, "-o", options,
                        env=env)
        assert result.returncode == 0, result.stderr
        info = ns.mount_of(mnt)
        assert info is not None and info.source.startswith("s3://fstab-bucket/data/"), info
        assert "allow_other" in info.options, info
        check_reads(ns, mnt, hashes)
        assert status(ns)[str(mnt)]["cache"]["cap_bytes"] == 32 << 20
        umount_and_check_exit(ns, mnt, daemons(ns)[str(mnt)], cache)
    finally:
        moto.stop()


# -- what the helper refuses -------------------------------------------------------


@pytest.mark.parametrize(("options", "culprit"), [
    ("bogus", "bogus"),
    (f"colour={SECRET}", "colour"),
    (f"proxy=http://user:{SECRET}@127.0.0.1:3128/,colour=blue", "colour"),
    ("cache_size=lots", "cache_size"),
    ("metadata_ttl=-1", "metadata_ttl"),
    ("log_level=chatty", "log_level"),
    ("allow_other=yes", "allow_other"),
    ("endpoint_url", "endpoint_url"),
    (f"endpoint_url=,proxy=http://{SECRET}@h/", "endpoint_url"),
], ids=["unknown-flag", "unknown-valued", "secret-elsewhere", "bad-size", "negative-ttl",
        "bad-level", "flag-with-value", "value-missing", "value-empty"])
def test_bad_options_are_refused_in_one_line(
    ns: PrivateNamespace, small_store: NginxStore, tmp_path: Path, options: str, culprit: str
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ns.run("mount", "-t", "fuse.cachefs", small_store.url, mnt,
                    "-o", f"cache_dir={tmp_path / 'cache'},{options}")
    assert result.returncode == 1, result
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mount.fuse.cachefs: "), lines
    assert culprit in lines[0], lines
    assert SECRET not in result.stdout + result.stderr
    assert ns.mount_of(mnt) is None
    assert not (tmp_path / "cache").exists(), "a refused line still made the cache dir"


def test_a_failed_mount_is_one_line_and_status_32(ns: PrivateNamespace, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    port = free_port()  # nothing listens there
    result = ns.run("mount", "-t", "fuse.cachefs", f"http://127.0.0.1:{port}/data/", mnt,
                    "-o", f"cache_dir={tmp_path / 'cache'},_netdev")
    assert result.returncode == 32, result
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and str(port) in lines[0], lines
    assert ns.mount_of(mnt) is None


# -- the translation itself ------------------------------------------------------


def test_every_option_translates() -> None:
    argv = ["http://h/d/", "/mnt/x", "-s", "-n", "-v", "-t", "fuse.cachefs", "-o",
            "cache_dir=/c,cache_size=20G,min_free=2G,metadata_ttl=7.5,"
            'proxy="http://u:p@h:3128/a,b",endpoint_url=http://127.0.0.1:9000,region=eu-west-1,'
            "profile=p,log_level=warning,allow_other,allow_non_empty,no_passthrough,"
            "no_sign_request,force_path_style,_netdev,nofail,noauto,auto,user,users,defaults,"
            "rw,ro,nosuid,nodev,x-systemd.requires=network-online.target,comment=x,weird_thing"]
    source, mountpoint, args, fake = mount_helper.parse_argv(argv)
    assert (source, mountpoint, fake) == ("http://h/d/", "/mnt/x", False)
    assert args == [
        "--cache-dir=/c", "--cache-size=20G", "--min-free=2G", "--metadata-ttl=7.5",
        "--proxy=http://u:p@h:3128/a,b", "--endpoint-url=http://127.0.0.1:9000",
        "--region=eu-west-1", "--profile=p", "--log-level=warning", "--allow-other",
        "--allow-non-empty", "--no-passthrough", "--no-sign-request", "--force-path-style",
    ]  # -s (sloppy): weird_thing is dropped, not refused
    # The arguments are ones `cachefs mount` takes.
    from cachefs.cli.app import build_parser

    parsed = build_parser().parse_args(["mount", source, mountpoint, *args])
    assert parsed.cache_size == 20 << 30 and parsed.proxy == "http://u:p@h:3128/a,b"
    assert parsed.allow_other and parsed.no_passthrough and parsed.force_path_style
    with pytest.raises(mount_helper.OptionError, match="weird_thing"):
        mount_helper.parse_argv(argv[:2] + ["-o", "weird_thing"])
    assert mount_helper.parse_argv(["s3://b", "/m", "-f", "-o", "region=x"])[3] is True
    # (mount(8) drops an unbalanced quote's rest itself; the helper refuses it too.)
    with pytest.raises(mount_helper.OptionError, match="quote") as refused:
        mount_helper.parse_argv(["s3://b", "/m", "-o", f'proxy="http://{SECRET}'])
    assert SECRET not in str(refused.value)


def test_the_shipped_mount_unit_has_options_the_helper_takes() -> None:
    """contrib/systemd/mnt-data.mount: a .mount unit runs mount(8) with its
    What=, Where=, Type= and Options=; the helper must accept all of them."""
    unit = (CONTRIB / "mnt-data.mount").read_text()
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert fields["Type"] == "fuse.cachefs"
    assert fields["Where"] == "/mnt/data", "a .mount unit's name must match its Where="
    source, mountpoint, args, _ = mount_helper.parse_argv([fields["What"], fields["Where"], "-o", fields["Options"]])
    assert "--allow-other" in args and any(a.startswith("--cache-dir=") for a in args)
