"""The filesystem layer: inodes, directory listings, open handles and read modes."""

from .filesystem import Filesystem

__all__ = ["Filesystem"]
