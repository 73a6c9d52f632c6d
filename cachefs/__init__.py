"""cachefs: a caching, read-only network filesystem with FUSE passthrough."""
