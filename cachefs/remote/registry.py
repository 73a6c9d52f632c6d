"""The remote registry: which backend serves a source, and with what options.

A `Backend` is one remote type: the URL schemes it serves, how to open a
source, and its options. The options are a config object (a frozen
dataclass deriving from `RemoteOptions`) whose fields, declared with
`option()`, are at once the backend's `cachefs mount` option group, the
fstab options of the mount helper, and plain JSON for the detached daemon
and for `fsck --verify-remote` (see `record`). Each field's default means
"not given".

The command line, the daemon and the offline tools know remote types only
through a `Registry` (`REGISTRY`, filled by `cachefs.remote` with the
http(s):// and s3:// backends): a new remote type is a backend registered
there, and nothing outside `cachefs.remote` changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from .base import Remote
from .limits import RequestLimits

# Where a field's command-line description sits in its dataclass metadata.
_CLI = "cachefs.cli"
# A URL scheme (RFC 3986): what comes before the first ':'.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class CliOption:
    """How one options field shows on the command line."""

    flag: str  # "--endpoint-url"
    help: str
    metavar: str | None = None
    # Converts and checks a value (argparse `type`); None keeps the string.
    type: Callable[[str], Any] | None = None
    # Whether the value may be repeated in an error message (the mount
    # helper's): an endpoint or a token may be private.
    shown: bool = True
    # Filled in from the field by `RemoteOptions.cli_options`:
    name: str = ""  # the field's name: the argparse dest and the fstab option
    is_flag: bool = False  # a bool field: `--flag` without a value
    default: Any = None


def option(default: Any, flag: str, help: str, *, metavar: str | None = None,
           type: Callable[[str], Any] | None = None, shown: bool = True) -> Any:
    """A field of a backend's options that is also a command-line option.

    A bool field is a flag (`--flag`, fstab `name`); any other field takes
    a value (`--flag VALUE`, fstab `name=VALUE`).
    """
    return dataclasses.field(default=default,
                             metadata={_CLI: CliOption(flag, help, metavar, type, shown)})


def _is_flag(f: dataclasses.Field) -> bool:
    # Annotations are strings here (from __future__ import annotations).
    return f.type in (bool, "bool")


@dataclass(frozen=True)
class RemoteOptions:
    """Base of every backend's options; subclasses are frozen dataclasses
    whose fields all have defaults and JSON-able values (str, bool, numbers, None)."""

    def is_default(self) -> bool:
        return self == type(self)()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteOptions:
        """The options `to_dict` gave; ValueError for names it never gives."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} must be a mapping, not {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown remote options {sorted(unknown)} for {cls.__name__}")
        for name, value in data.items():
            if not (isinstance(value, bool) if _is_flag(fields[name]) else
                    value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool)):
                raise ValueError(f"remote option {name}: {value!r} is not a value it takes")
        return cls(**data)

    @classmethod
    def cli_options(cls) -> list[CliOption]:
        """The fields that are command-line options, in declaration order."""
        return [dataclasses.replace(f.metadata[_CLI], name=f.name, is_flag=_is_flag(f), default=f.default)
                for f in dataclasses.fields(cls) if _CLI in f.metadata]


@dataclass(frozen=True)
class NoOptions(RemoteOptions):
    """The options of a backend that has none."""


class Opener(Protocol):
    """Opens a source with its backend's options (an instance of `Backend.options`)."""

    def __call__(self, source: str, options: Any, *, proxy: str | None,
                 limits: RequestLimits | None) -> Remote: ...


def _unchanged(source: str) -> str:
    return source


@dataclass(frozen=True)
class Backend:
    """One remote type."""

    name: str
    # URL schemes it serves, lower case, without "://".
    schemes: tuple[str, ...]
    # The remote for a source of one of `schemes`; ValueError, with a one-line
    # message, for a source it cannot serve. `proxy` and `limits` are the
    # HTTP client's settings, which every backend on the network shares.
    open: Opener
    options: type[RemoteOptions] = NoOptions
    # How a source looks, for `cachefs mount --help`: "s3://BUCKET[/PREFIX]".
    source_help: str = ""
    # The title and description of its `cachefs mount` option group.
    group_title: str = ""
    group_description: str | None = None
    # Prefixes of environment variables that only a daemon of this backend
    # may see (credentials: "AWS_").
    environ_prefixes: tuple[str, ...] = ()
    # The source with any secret in it (a password in a URL) taken out, so
    # that it can be written down; it still opens the same store.
    public_source: Callable[[str], str] = _unchanged

    def flags(self) -> list[str]:
        return [cli.flag for cli in self.options.cli_options()]


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _both(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class Registry:
    """Backends by URL scheme."""

    def __init__(self) -> None:
        self._backends: list[Backend] = []

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(self._backends)

    def register(self, backend: Backend) -> None:
        """Add a backend; ValueError if a scheme, flag or field name is taken."""
        schemes = {s for b in self._backends for s in b.schemes}
        taken = {name for b in self._backends for cli in b.options.cli_options() for name in (cli.name, cli.flag)}
        mine = {name for cli in backend.options.cli_options() for name in (cli.name, cli.flag)}
        if clash := (schemes & set(backend.schemes)) | (taken & mine):
            raise ValueError(f"backend {backend.name!r}: {sorted(clash)} already registered")
        if any(s != s.lower() for s in backend.schemes):
            raise ValueError(f"backend {backend.name!r}: schemes must be lower case")
        self._backends.append(backend)

    def unregister(self, backend: Backend) -> None:
        self._backends.remove(backend)

    @contextmanager
    def registered(self, backend: Backend) -> Iterator[Backend]:
        """`backend` is registered inside the block (tests)."""
        self.register(backend)
        try:
            yield backend
        finally:
            self.unregister(backend)

    # --- sources -----------------------------------------------------------

    def backend_for(self, source: str) -> Backend:
        """The backend serving `source`'s scheme; ValueError if none does."""
        try:
            # As the http(s) backend will read it (urlsplit drops leading blanks).
            scheme = urlsplit(source).scheme.lower()
        except ValueError:  # a bad [IPv6] host; the backend will say so
            found = _SCHEME.match(source)
            scheme = found.group(1).lower() if found else ""
        for backend in self._backends:
            if scheme in backend.schemes:
                return backend
        known = [f"{s}://" for b in self._backends for s in b.schemes]
        raise ValueError(f"unsupported source scheme {scheme or 'none'!r} in {source!r}; use {_either(known)}")

    def source_help(self) -> str:
        """What a source may be, for the mount command's help."""
        shapes = [b.source_help for b in self._backends if b.source_help]
        return shapes[0] if len(shapes) == 1 else f"{', '.join(shapes[:-1])}, or {shapes[-1]}"

    def public_source(self, source: str) -> str:
        return self.backend_for(source).public_source(source)

    def open(self, source: str, options: RemoteOptions | None = None, *,
             proxy: str | None = None, limits: RequestLimits | None = None) -> Remote:
        """The remote for `source` ("http://host/data/", "s3://bucket/prefix"...).

        `options` must be those of the source's backend (None: its defaults).
        Raises ValueError with a one-line message for a source or options
        that cannot be served.
        """
        backend = self.backend_for(source)
        if options is None:
            options = backend.options()
        elif type(options) is not backend.options:
            raise self._misplaced(type(options), backend)
        return backend.open(source, options, proxy=proxy, limits=limits)

    def _misplaced(self, options_type: type[RemoteOptions], backend: Backend) -> ValueError:
        """The error for options of another type than `backend`'s."""
        owner = next((b for b in self._backends if b.options is options_type), None)
        if owner is None or not owner.flags():
            return ValueError(f"{backend.name} sources take {backend.options.__name__}, "
                              f"not {options_type.__name__}")
        flags = owner.flags()
        verb = "applies" if len(flags) == 1 else "apply"
        return ValueError(f"{_both(flags)} {verb} to {_either([f'{s}://' for s in owner.schemes])} sources only")

    # --- options -----------------------------------------------------------

    def options_from_dict(self, source: str, data: Mapping[str, Any] | None) -> RemoteOptions:
        """The options of `source`'s backend from their `to_dict()` (None: defaults)."""
        options = self.backend_for(source).options
        return options() if data is None else options.from_dict(data)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Every backend's option group (the fields' dests are their names)."""
        for backend in self._backends:
            options = backend.options.cli_options()
            if not options:
                continue
            group = parser.add_argument_group(backend.group_title or f"{backend.name} sources",
                                              backend.group_description)
            for cli in options:
                if cli.is_flag:
                    group.add_argument(cli.flag, dest=cli.name, action="store_true", help=cli.help)
                else:
                    group.add_argument(cli.flag, dest=cli.name, metavar=cli.metavar, type=cli.type,
                                       default=cli.default, help=cli.help)

    def options_from_args(self, source: str, args: argparse.Namespace) -> RemoteOptions:
        """The options of `source`'s backend from a parser `add_arguments`
        filled; ValueError if another backend's options were given."""
        backend = self.backend_for(source)
        for other in self._backends:
            if other is not backend and not self._from_args(other, args).is_default():
                raise self._misplaced(other.options, backend)
        return self._from_args(backend, args)

    @staticmethod
    def _from_args(backend: Backend, args: argparse.Namespace) -> RemoteOptions:
        given = {cli.name: getattr(args, cli.name) for cli in backend.options.cli_options()
                 if hasattr(args, cli.name)}
        return backend.options(**given)

    def cli_options(self) -> list[CliOption]:
        """The command-line options of every backend."""
        return [cli for b in self._backends for cli in b.options.cli_options()]

    # --- the daemon's environment -------------------------------------------

    def environ_for(self, source: str, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` without the variables other backends claim (their
        credentials): a daemon keeps its initial environment readable in
        /proc/PID/environ for as long as it runs."""
        try:
            mine = self.backend_for(source)
        except ValueError:
            mine = None
        kept = {p.upper() for p in mine.environ_prefixes} if mine else set()
        foreign = tuple({p.upper() for b in self._backends for p in b.environ_prefixes} - kept)
        return {k: v for k, v in environ.items() if not k.upper().startswith(foreign)}


REGISTRY = Registry()
