"""A site cache: an nginx caching proxy between many cachefs mounts and one origin.

Many clients mounting one store each fetch every byte they read. A caching
proxy on the local network fetches each byte from the origin once and
serves the rest from its own disk; the mounts use the proxy's URL as their
source. Files are cached in slices (nginx's slice module), so a cachefs
chunk read is served from the slices it covers and the first reader of a
big file does not make the proxy fetch all of it. Requests for the same
slice that arrive together wait for one fetch (proxy_cache_lock).
Directory listings pass through uncached: cachefs keeps them itself for
--metadata-ttl, and a second TTL in the proxy would only delay changes.

README.md ("A site cache for many clients") shows the same configuration
for a real installation.
"""

from __future__ import annotations

from pathlib import Path

from .nginx import DATA_PREFIX, LOOPBACK, NginxProcess, conf_quote

# Slice size: one read of a cachefs chunk (8 MiB) covers whole slices.
DEFAULT_SLICE = 1 << 20
# How long the proxy trusts a cached slice without asking the origin.
DEFAULT_VALID = "10m"


class SiteCache(NginxProcess):
    """nginx on a loopback port, caching `origin` (http://HOST:PORT) in `workdir`.

    Its `url` serves the same paths as the origin's /data/ prefix. The cache
    folder outlives stop(), so a restarted proxy (same `port`) still has
    what it fetched.
    """

    def __init__(self, origin: str, workdir: Path, *, port: int = 0, slice_size: int = DEFAULT_SLICE,
                 valid: str = DEFAULT_VALID) -> None:
        super().__init__(workdir, port=port)
        self.origin = origin.rstrip("/")
        self.slice_size = slice_size
        self.valid = valid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{DATA_PREFIX}"

    @property
    def cache_path(self) -> Path:
        return self.workdir / "proxy-cache"

    def server_text(self) -> str:
        return f"""\
    proxy_cache_path {conf_quote(self.cache_path)} levels=1:2 keys_zone=site:16m
                     max_size=10g inactive=7d use_temp_path=off;

    server {{
        listen {LOOPBACK}:{self.port};
        server_name localhost;
        proxy_http_version 1.1;
        proxy_set_header Connection "";

        # Listings: straight through.
        location ~ /$ {{
            proxy_pass {self.origin};
        }}

        location / {{
            proxy_pass {self.origin};
            slice {self.slice_size};
            proxy_set_header Range $slice_range;
            proxy_cache site;
            proxy_cache_key $uri$slice_range;
            proxy_cache_valid 200 206 {self.valid};
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
"""
