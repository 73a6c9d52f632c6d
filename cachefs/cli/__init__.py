"""The `cachefs` command line and the `mount.fuse.cachefs` helper.

`entry.main` is the console script; `app` builds the parser, and each
command group (mount, prefetch, cache, bench) is a module that adds its own
subcommands. Kept free of imports so that the entry point can catch a
Ctrl-C during start-up.
"""
