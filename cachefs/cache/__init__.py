"""The local cache: data files of object versions, SQLite state, chunk fetching.

This is the cache's front door: what the filesystem, the control commands,
the daemon, the CLI and the offline tools may use. The modules of this
package are its parts, private to it:

    front     open_cache and Cache: the door itself
    table     the objects open in this process, and the uses that keep them open
    objects   one cached object version and its data file
    fetcher   brings missing chunks from the remote; slots: its priorities
    journal   makes fetched chunks durable, then records them
    evictor   keeps the cache under its cap and the disk above its floor
    discard   drops versions that changed on the remote
    folder    the source folder a cache holds; makes its files anew when lost
    layout    where a cache keeps its files; fanout: the data folder
    db        the SQLite state: all the SQL
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachefs import lazy

if TYPE_CHECKING:
    from .db import CorruptDatabase, ListingRow, ListingUnreadable, OfflineDB, StateLost, Usage
    from .evictor import EvictResult
    from .folder import CacheBusy
    from .front import Cache, CacheConfig, CacheStats, ListingStore, open_cache
    from .layout import (
        CHUNK_SIZE, CacheDirError, DATA_NAME, DB_NAME, DEFAULT_MIN_FREE, FolderBusy, data_file,
        default_cache_dir, folder_lock, prepare_dir, remove_folder, source_digest, source_folders,
    )
    from .objects import CacheState, CachedObject, ChunkFetch
    from .slots import Priority

__all__ = [
    # The cache of a running mount.
    "open_cache", "Cache", "CacheConfig", "CacheStats", "CachedObject", "CacheState", "ChunkFetch",
    "Priority", "EvictResult", "Usage", "ListingStore", "ListingRow", "ListingUnreadable", "StateLost",
    "CacheBusy", "CacheDirError", "CorruptDatabase",
    "CHUNK_SIZE", "DEFAULT_MIN_FREE", "default_cache_dir", "prepare_dir",
    # Cache folders seen from outside a daemon (fsck, cache clear).
    "source_folders", "source_digest", "folder_lock", "FolderBusy", "remove_folder", "data_file",
    "OfflineDB", "DATA_NAME", "DB_NAME",
]

# Parts load on first use: the command line needs the folder helpers and the
# constants, not SQLite or trio.
_HOMES = {
    "CorruptDatabase": "db", "OfflineDB": "db", "Usage": "db",
    "ListingRow": "db", "ListingUnreadable": "db", "StateLost": "db",
    "EvictResult": "evictor",
    "CacheBusy": "folder",
    "Cache": "front", "CacheConfig": "front", "CacheStats": "front", "ListingStore": "front",
    "open_cache": "front",
    "CHUNK_SIZE": "layout", "CacheDirError": "layout", "DATA_NAME": "layout", "DB_NAME": "layout",
    "DEFAULT_MIN_FREE": "layout", "FolderBusy": "layout", "data_file": "layout",
    "default_cache_dir": "layout", "folder_lock": "layout", "prepare_dir": "layout",
    "remove_folder": "layout", "source_digest": "layout", "source_folders": "layout",
    "CacheState": "objects", "CachedObject": "objects", "ChunkFetch": "objects",
    "Priority": "slots",
}
__getattr__ = lazy.exports(__name__, _HOMES)
