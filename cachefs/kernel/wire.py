"""The FUSE kernel wire format: opcodes, flags and named structs.

Everything cachefs knows about the byte layout of /dev/fuse messages lives
here (from the kernel's include/uapi/linux/fuse.h, protocol 7.45). Structs are
little-endian, packed as the kernel lays them out on x86-64 and arm64.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 45
# The oldest minor version we accept: 7.31 brought max_pages/map_alignment
# fields that the 64-byte init reply layout assumes.
MIN_KERNEL_MINOR_VERSION = 31

ROOT_ID = 1


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53


#: Operations that would change the filesystem; a read-only mount answers EROFS.
MODIFYING_OPS = frozenset(
    {
        Opcode.SETATTR, Opcode.SYMLINK, Opcode.MKNOD, Opcode.MKDIR,
        Opcode.UNLINK, Opcode.RMDIR, Opcode.RENAME, Opcode.LINK,
        Opcode.WRITE, Opcode.SETXATTR, Opcode.REMOVEXATTR, Opcode.CREATE,
        Opcode.FALLOCATE, Opcode.RENAME2, Opcode.COPY_FILE_RANGE,
        Opcode.TMPFILE, Opcode.COPY_FILE_RANGE_64,
    }
)


class InitFlag(enum.IntFlag):
    """FUSE_INIT capability bits; bits 32+ travel in the flags2 field."""

    ASYNC_READ = 1 << 0
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    PARALLEL_DIROPS = 1 << 18
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    EXPLICIT_INVAL_DATA = 1 << 25
    INIT_EXT = 1 << 30
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    PASSTHROUGH = 1 << 37
    NO_EXPORT_SUPPORT = 1 << 38


class OpenFlag(enum.IntFlag):
    """FOPEN_* bits in an open reply."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    PASSTHROUGH = 1 << 7


class NotifyCode(enum.IntEnum):
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4


class DirentType(enum.IntEnum):
    """d_type values in directory entries (DT_* from dirent.h)."""

    DIR = 4
    REG = 8


# ioctls on /dev/fuse for passthrough backing files.
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502


# --- headers -----------------------------------------------------------------

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique


# Not frozen: 6x faster to make, and one is made per request or entry.
@dataclass(slots=True)
class InHeader:
    length: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> "InHeader":
        length, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = IN_HEADER.unpack_from(buf)
        return cls(length, opcode, unique, nodeid, uid, gid, pid)


# --- request bodies ----------------------------------------------------------

INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
INIT_IN_FLAGS2 = struct.Struct("<I")  # follows INIT_IN when the kernel sends INIT_EXT
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count dummy
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags dummy fh
OPEN_IN = struct.Struct("<II")  # flags open_flags
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
RELEASE_IN = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
GETXATTR_IN = struct.Struct("<II")  # size padding
ACCESS_IN = struct.Struct("<II")  # mask padding
INTERRUPT_IN = struct.Struct("<Q")  # unique of the interrupted request

# --- reply bodies ------------------------------------------------------------

# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink
# uid gid rdev blksize flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid (+nsec x2)
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
GETXATTR_OUT = struct.Struct("<II")  # size padding
KSTATFS = struct.Struct("<QQQQQIII4x24x")  # blocks bfree bavail files ffree bsize namelen frsize
DIRENT = struct.Struct("<QQII")  # ino off namelen type
# major minor max_readahead flags max_background congestion_threshold
# max_write time_gran max_pages map_alignment flags2 max_stack_depth
# request_timeout, then 11 unused u16
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino off len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")  # parent namelen flags
NOTIFY_STORE_OUT = struct.Struct("<QQII")  # nodeid offset size padding; the data follows
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding
BACKING_ID = struct.Struct("<I")

assert INIT_OUT.size == 64 and ATTR.size == 88 and KSTATFS.size == 80


NSEC_PER_SEC = 1_000_000_000
U64_MASK = (1 << 64) - 1


# Not frozen: 6x faster to make, and one is made per request or entry.
@dataclass(slots=True)
class Attr:
    """File attributes as the kernel wants them (fuse_attr)."""

    ino: int
    size: int
    mode: int
    nlink: int
    mtime: float
    uid: int = 0
    gid: int = 0
    blksize: int = 4096

    def pack(self) -> bytes:
        # fuse_attr holds times as u64 seconds the kernel reads as signed:
        # a time before 1970 (listings show them) goes as two's complement,
        # with nanoseconds counted forward from the second before it.
        whole = math.floor(self.mtime)
        nsec = min(int((self.mtime - whole) * 1e9), NSEC_PER_SEC - 1)
        secs = whole & U64_MASK
        blocks = (self.size + 511) // 512
        return ATTR.pack(
            self.ino, self.size, blocks, secs, secs, secs, nsec, nsec, nsec,
            self.mode, self.nlink, self.uid, self.gid, 0, self.blksize, 0,
        )


def split_seconds(seconds: float) -> tuple[int, int]:
    """A validity timeout as the (seconds, nanoseconds) pair the kernel takes."""
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def pack_entry(nodeid: int, attr: Attr, entry_ttl: float, attr_ttl: float) -> bytes:
    """fuse_entry_out: a LOOKUP reply, also the head of a READDIRPLUS entry."""
    es, ens = split_seconds(entry_ttl)
    as_, ans = split_seconds(attr_ttl)
    return ENTRY_OUT.pack(nodeid, 0, es, as_, ens, ans) + attr.pack()


def pack_attr_out(attr: Attr, attr_ttl: float) -> bytes:
    secs, nsec = split_seconds(attr_ttl)
    return ATTR_OUT.pack(secs, nsec, 0) + attr.pack()


def align8(n: int) -> int:
    return (n + 7) & ~7


def pack_dirent(ino: int, offset: int, dtype: int, name: bytes) -> bytes:
    """One fuse_dirent, padded to 8 bytes as the kernel requires."""
    raw = DIRENT.pack(ino, offset, len(name), dtype) + name
    return raw + b"\0" * (align8(len(raw)) - len(raw))


def pack_direntplus(entry: bytes, ino: int, offset: int, dtype: int, name: bytes) -> bytes:
    """One fuse_direntplus: an entry_out followed by a dirent."""
    return entry + pack_dirent(ino, offset, dtype, name)


def reply_header(unique: int, error: int, body_len: int) -> bytes:
    """fuse_out_header; `error` is a negative errno or 0."""
    return OUT_HEADER.pack(OUT_HEADER.size + body_len, error, unique)
