"""Which HTTP proxy, if any, a request goes through.

An explicit proxy (`--proxy`) carries every request, loopback included, as
httpx does with a proxy given to its client. Otherwise the usual variables
apply: HTTP_PROXY and HTTPS_PROXY by the URL's scheme, ALL_PROXY for
either, and NO_PROXY (comma-separated host names, domain suffixes, `*`)
for hosts to reach directly; lower-case names win, as in curl and Python.
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    """One proxy: where to connect, and the credentials it asks for."""

    url: httpx.URL

    @property
    def host(self) -> str:
        return self.url.host

    @property
    def port(self) -> int:
        return self.url.port or DEFAULT_PORTS.get(self.url.scheme, 80)

    @property
    def authorization(self) -> bytes | None:
        """The Proxy-Authorization value for credentials in the URL, else None."""
        if not self.url.username:
            return None
        pair = f"{unquote(self.url.username)}:{unquote(self.url.password or '')}"
        return b"Basic " + base64.b64encode(pair.encode())


class ProxyChoice:
    """The proxy for each URL: the explicit one, or the environment's."""

    def __init__(self, explicit: str | None) -> None:
        """`explicit` None: the environment's proxies, read now."""
        self._explicit = Proxy(httpx.URL(explicit)) if explicit else None
        self._env = urllib.request.getproxies_environment()
        self._cache: dict[tuple[str, str, int], Proxy | None] = {}

    @property
    def any(self) -> bool:
        """Whether some URL might go through a proxy."""
        return self._explicit is not None or bool(set(self._env) & {"http", "https", "all"})

    def for_url(self, url: httpx.URL) -> Proxy | None:
        if self._explicit is not None:
            return self._explicit
        key = (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme, 80))
        if key not in self._cache:
            self._cache[key] = self._from_environment(*key)
        return self._cache[key]

    def _from_environment(self, scheme: str, host: str, port: int) -> Proxy | None:
        chosen = self._env.get(scheme) or self._env.get("all")
        if not chosen or urllib.request.proxy_bypass_environment(f"{host}:{port}", self._env):
            return None
        if "://" not in chosen:
            chosen = "http://" + chosen  # HTTP_PROXY=host:3128, as curl accepts
        return Proxy(httpx.URL(chosen))
