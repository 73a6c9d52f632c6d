"""`mount.fuse.cachefs`: the helper mount(8) runs for `-t fuse.cachefs`.

mount(8), and systemd's .mount units and /etc/fstab through it, mounts a
filesystem type it does not know by running /sbin/mount.TYPE (util-linux
tries `mount.fuse.cachefs` before the generic `mount.fuse`):

    mount.fuse.cachefs SOURCE MOUNTPOINT [-sfnvr] [-o OPTIONS] [-t TYPE]

OPTIONS is the comma-separated fstab field. The cachefs ones become `cachefs
mount` options (`cache_size=20G` is `--cache-size 20G`, `allow_other` is
`--allow-other`); those mount(8), fstab and systemd use for themselves
(`_netdev`, `nofail`, `noauto`, `x-systemd.*`...) are ignored; anything else
is refused in one line, before anything is mounted. `cachefs mount` then
starts the daemon and returns once the mount answers; the daemon exits by
itself when the filesystem is unmounted (`umount MOUNTPOINT`).

A value may hold commas between double quotes, as fstab allows:
`proxy="http://u:p@host:3128"`. Values never appear in the helper's errors:
a proxy's password or any other secret given in OPTIONS is not printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachefs.remote import REGISTRY

from . import argtypes, early

PROG = "mount.fuse.cachefs"

# mount(8)'s exit statuses (see its man page, "RETURN CODES").
EX_USAGE = 1
EX_FAIL = 32

LOG_LEVELS = ("debug", "info", "warning", "error")


def _level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


@dataclass(frozen=True)
class _Valued:
    flag: str
    check: Callable[[str], object] = _nonempty
    # Whether the value may be shown in an error (a proxy URL may hold a password).
    shown: bool = True


# fstab option -> `cachefs mount` option taking a value (`valued()` adds those
# of the remote types).
VALUED: dict[str, _Valued] = {
    "cache_dir": _Valued("--cache-dir"),
    "cache_size": _Valued("--cache-size", argtypes.size),
    "min_free": _Valued("--min-free", argtypes.size),
    "metadata_ttl": _Valued("--metadata-ttl", argtypes.seconds),
    "proxy": _Valued("--proxy", shown=False),
    "log_level": _Valued("--log-level", _level),
}

# fstab flag -> `cachefs mount` flag (`flags()` adds those of the remote types).
FLAGS: dict[str, str] = {
    "allow_other": "--allow-other",
    "allow_non_empty": "--allow-non-empty",
    "no_passthrough": "--no-passthrough",
}


def valued() -> dict[str, _Valued]:
    """VALUED and each remote type's options that take a value
    (`endpoint_url=` is `--endpoint-url`): the fstab name is the field's."""
    return {**VALUED, **{cli.name: _Valued(cli.flag, cli.type or _nonempty, cli.shown)
                         for cli in REGISTRY.cli_options() if not cli.is_flag}}


def flags() -> dict[str, str]:
    """FLAGS and each remote type's flags (`no_sign_request` is `--no-sign-request`)."""
    return {**FLAGS, **{cli.name: cli.flag for cli in REGISTRY.cli_options() if cli.is_flag}}


# Options mount(8), fstab and systemd use for themselves, and the generic
# VFS flags (cachefs always mounts read-only, nosuid, nodev): accepted and
# ignored. `x-*` and `comment=*` are matched by prefix below.
IGNORED = frozenset({
    "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner", "group",
    "defaults", "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
    "async", "sync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "lazytime", "nolazytime", "silent", "loud",
})


class OptionError(Exception):
    """An option the helper cannot pass on; one line, no value that may be secret."""


def split_options(text: str) -> list[str]:
    """Split an fstab options field at the commas outside double quotes."""
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise OptionError("unbalanced double quote in the options")
    parts.append("".join(current))
    return [p for p in parts if p]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _ignored(key: str) -> bool:
    return key in IGNORED or key.startswith("x-") or key == "comment"


def translate(options: list[str], *, sloppy: bool = False) -> list[str]:
    """`cachefs mount` arguments for fstab options; OptionError when one is wrong.

    `sloppy` (mount -s) ignores unknown options instead of refusing them."""
    args: list[str] = []
    valued_options, flag_options = valued(), flags()
    for option in options:
        key, has_value, raw = option.partition("=")
        value = _unquote(raw)
        if _ignored(key):
            continue
        if key in flag_options:
            if has_value:
                raise OptionError(f"option {key} takes no value")
            args.append(flag_options[key])
        elif key in valued_options:
            spec = valued_options[key]
            if not has_value:
                raise OptionError(f"option {key} needs a value ({key}=...)")
            try:
                spec.check(value)
            except argparse.ArgumentTypeError as e:
                raise OptionError(f"option {key}: {e}" if spec.shown else f"option {key}: bad value") from None
            except (TypeError, ValueError):  # as argparse: a type's own error says too little
                raise OptionError(f"option {key}: bad value") from None
            # --flag=VALUE: a value starting with '-' stays a value.
            args.append(f"{spec.flag}={value}")
        elif not sloppy:
            raise OptionError(f"unknown option {key!r} (cachefs options: "
                              f"{', '.join([*valued_options, *flag_options])})")
    return args


def parse_argv(argv: list[str]) -> tuple[str, str, list[str], bool]:
    """SOURCE, MOUNTPOINT, options and fake (-f) from mount(8)'s arguments."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "-t"):
            if i + 1 >= len(argv):
                raise OptionError(f"{arg} needs a value")
            if arg == "-o":
                options += split_options(argv[i + 1])
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += split_options(arg[2:])
        elif arg.startswith("-t") and len(arg) > 2:
            pass
        elif arg.startswith("-") and len(arg) > 1:
            # -s sloppy, -f fake, -n no mtab, -v verbose, -r read-only, -w:
            # mount(8)'s own flags, possibly combined (-sn).
            for flag in arg[1:]:
                if flag not in "sfnvrw":
                    raise OptionError(f"unknown flag -{flag}")
                sloppy |= flag == "s"
                fake |= flag == "f"
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise OptionError("usage: mount.fuse.cachefs SOURCE MOUNTPOINT [-o OPTIONS]")
    return positional[0], positional[1], translate(options, sloppy=sloppy), fake


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else argv
    try:
        source, mountpoint, args, fake = parse_argv(argv)
    except OptionError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EX_USAGE
    if fake:
        return 0
    mount_argv = ["mount", source, mountpoint, *args]
    try:
        # The daemon loads while `cachefs mount` does (see early).
        early.begin(mount_argv, started)
        from .app import main as cachefs_main

        rc = cachefs_main(mount_argv)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # argparse refused an argument (it said why)
        return EX_USAGE if e.code else 0
    finally:
        early.abandon()
    return 0 if rc == 0 else EX_FAIL


if __name__ == "__main__":
    sys.exit(main())
