"""The local cache: data files of object versions, SQLite state, chunk fetching."""

from .objects import CachedObject, CacheState
from .store import Cache, CacheBusy, CacheDirError, default_cache_dir

__all__ = ["Cache", "CacheBusy", "CacheDirError", "CachedObject", "CacheState", "default_cache_dir"]
