"""A local HTTP store for `cachefs bench`, the benchmarks and tests.

`NginxStore` serves a directory over loopback with nginx's autoindex (JSON under
/data/, HTML under /data's twin /html/), as a child process we own by pid;
`httpserver.BuiltinStore` is a small fallback for machines without nginx.
`make_tree` fills a directory with a deterministic tree of files to serve.
"""

from cachefs.localstore.nginx import AccessLogEntry, NginxError, NginxStore
from cachefs.localstore.tree import TreeSpec, demo_spec, make_tree, test_spec

__all__ = [
    "AccessLogEntry",
    "NginxError",
    "NginxStore",
    "TreeSpec",
    "demo_spec",
    "make_tree",
    "test_spec",
]
