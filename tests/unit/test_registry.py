"""remote/registry.py: a new remote type is a backend in the registry, and nothing else.

A `memory://STORE` backend over tests/support/memory_remote.py is registered
here, the way a real remote type would be in `cachefs.remote`, with options
of each kind (a value, a converted value, a flag). Without a line changed in
cli/, daemon/ or maint/, its source is parsed, its options come from `cachefs
mount`'s command line and from fstab options (the mount helper), travel as
JSON to the detached daemon, open the remote, and are recorded for `fsck
--verify-remote`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from cachefs.cli import mount_helper
from cachefs.cli.app import build_parser
from cachefs.cli.errors import UserError
from cachefs.cli.mount import daemon_environ, mount_config
from cachefs.daemon import MountConfig
from cachefs.remote import (
    REGISTRY,
    Backend,
    NoOptions,
    RemoteOptions,
    RequestLimits,
    S3Options,
    Unreachable,
    open_remote,
)
from cachefs.remote.record import read_record, write_record
from cachefs.remote.registry import Registry, option
from memory_remote import MemoryRemote

# The stores memory:// sources name: memory://shop is STORES["shop"].
STORES = {"shop": {"docs/a.txt": b"alpha", "docs/b/c.txt": b"gamma", "top.bin": b"\0" * 10}}


@dataclass(frozen=True)
class MemoryOptions(RemoteOptions):
    prefix: str | None = option(None, "--memory-prefix", metavar="KEY",
                                help="show only the keys under KEY/")
    latency: float | None = option(None, "--memory-latency", metavar="SECONDS", type=float,
                                   help="recorded on the remote (a converted value)")
    offline: bool = option(False, "--memory-offline", help="the first listing fails as unreachable")


def open_memory(source: str, options: MemoryOptions, *, proxy: str | None,
                limits: RequestLimits | None) -> MemoryRemote:
    name = source.partition("://")[2].strip("/")
    if name not in STORES:
        raise ValueError(f"no memory store {name!r} in {source!r}")
    objects = STORES[name]
    shown = f"memory://{name}/"
    if options.prefix:
        under = options.prefix.strip("/") + "/"
        objects = {k[len(under):]: v for k, v in objects.items() if k.startswith(under)}
        shown += under
    remote = MemoryRemote(objects, source=shown)
    remote.latency = options.latency  # type: ignore[attr-defined]
    if options.offline:
        remote.fail_next("list_dir", Unreachable("offline"))
    return remote


MEMORY = Backend(
    name="memory",
    schemes=("memory",),
    open=open_memory,
    options=MemoryOptions,
    source_help="memory://STORE",
    group_title="memory:// sources",
    group_description="stores held by the test",
    environ_prefixes=("MEMORY_",),
)


def mount_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--help"])
    return capsys.readouterr().out


@pytest.fixture
def memory() -> Iterator[Backend]:
    with REGISTRY.registered(MEMORY) as backend:
        yield backend


def test_a_new_remote_type_needs_only_a_backend(memory: Backend) -> None:
    # Parsing a source: the scheme picks the backend, in any case.
    assert REGISTRY.backend_for("MEMORY://shop") is memory
    # `cachefs mount`'s command line has the backend's group; the options come from it.
    args = build_parser().parse_args(["mount", "memory://shop", "/mnt/x", "--memory-prefix", "docs",
                                      "--memory-latency", "0.5", "--memory-offline"])
    config = mount_config(args, "/mnt/x", Path("/cache"))
    assert config.remote_options == MemoryOptions(prefix="docs", latency=0.5, offline=True)
    # The detached daemon gets it as JSON.
    again = MountConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    # And opens the remote with it.
    remote = again.open_remote()
    assert isinstance(remote, MemoryRemote) and remote.latency == 0.5

    async def main() -> list[str]:
        with pytest.raises(Unreachable):
            await remote.list_dir("")
        return [e.name for e in await remote.list_dir("")]

    assert trio.run(main) == ["a.txt", "b"]
    assert remote.source == "memory://shop/docs/"


def test_the_mount_helper_and_help_know_the_new_type(memory: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    source, _, args, _ = mount_helper.parse_argv(
        ["memory://shop", "/mnt/x", "-o", "prefix=docs,latency=2,offline,allow_other"])
    assert args == ["--memory-prefix=docs", "--memory-latency=2", "--memory-offline", "--allow-other"]
    parsed = build_parser().parse_args(["mount", source, "/mnt/x", *args])
    assert REGISTRY.options_from_args(source, parsed) == MemoryOptions("docs", 2.0, True)
    with pytest.raises(mount_helper.OptionError, match="latency"):
        mount_helper.parse_argv(["memory://shop", "/mnt/x", "-o", "latency=soon"])
    shown = mount_help(capsys)
    assert "memory:// sources" in shown and "--memory-prefix KEY" in shown
    assert "or memory://STORE" in shown


def test_options_of_another_type_are_refused(memory: Backend) -> None:
    parser = build_parser()
    args = parser.parse_args(["mount", "memory://shop", "/m", "--region", "eu-west-1"])
    with pytest.raises(UserError, match=r"--endpoint-url, --region, --profile, --no-sign-request "
                                        r"and --force-path-style apply to s3:// sources only"):
        mount_config(args, "/m", Path("/c"))
    args = parser.parse_args(["mount", "s3://bkt", "/m", "--memory-offline"])
    with pytest.raises(UserError, match="--memory-prefix, --memory-latency and --memory-offline "
                                        "apply to memory:// sources only"):
        mount_config(args, "/m", Path("/c"))
    with pytest.raises(ValueError, match="memory:// sources only"):
        open_remote("http://127.0.0.1:1/", MemoryOptions(offline=True))
    with pytest.raises(ValueError, match="s3:// sources only"):
        open_remote("memory://shop", S3Options(region="eu-west-1"))
    with pytest.raises(ValueError, match="memory sources take MemoryOptions, not NoOptions"):
        open_remote("memory://shop", NoOptions())


def test_unknown_schemes_name_the_registered_ones(memory: Backend) -> None:
    with pytest.raises(ValueError, match=r"'ftp' in 'ftp://x'; use http://, https://, s3:// or memory://$"):
        open_remote("ftp://x")
    with pytest.raises(ValueError, match="no memory store 'attic'"):
        open_remote("memory://attic")


def test_a_daemon_keeps_only_its_own_types_variables(memory: Backend) -> None:
    environ = {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "s", "aws_profile": "p", "MEMORY_TOKEN": "t"}
    assert daemon_environ("memory://shop", environ) == {"PATH": "/bin", "MEMORY_TOKEN": "t"}
    assert daemon_environ("s3://bkt", environ) == {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "s",
                                                  "aws_profile": "p"}
    assert daemon_environ("http://h/", environ) == {"PATH": "/bin"}
    assert daemon_environ("nonsense", environ) == {"PATH": "/bin"}


def test_the_record_reopens_the_remote_as_mounted(memory: Backend, tmp_path: Path) -> None:
    write_record(tmp_path, "memory://shop", MemoryOptions(prefix="docs"))
    record = read_record(tmp_path)
    assert record is not None and record.options == MemoryOptions(prefix="docs")
    assert record.open().source == "memory://shop/docs/"


def test_unregistered_types_are_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with REGISTRY.registered(MEMORY):
        write_record(tmp_path, "memory://shop", None)
    with pytest.raises(ValueError, match="unsupported source scheme 'memory'"):
        read_record(tmp_path)
    with pytest.raises(ValueError, match="unsupported source scheme 'memory'"):
        open_remote("memory://shop")
    assert "--memory-prefix" not in mount_help(capsys) and "--region" in mount_help(capsys)
    assert "prefix" not in mount_helper.valued()


def test_clashes_are_refused() -> None:
    registry = Registry()
    registry.register(MEMORY)
    for clash in (Backend("again", ("memory",), open_memory),
                  Backend("other", ("other",), open_memory, options=MemoryOptions),
                  Backend("upper", ("UP",), open_memory)):
        with pytest.raises(ValueError):
            registry.register(clash)
    registry.register(Backend("plain", ("plain",), open_memory, options=NoOptions))
    assert [b.name for b in registry.backends] == ["memory", "plain"]
