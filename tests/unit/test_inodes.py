"""The inode table: node ids for (path, version), and when an inode goes."""

from __future__ import annotations

import stat

from cachefs.fs.inodes import DIR_MODE, FILE_MODE, InodeTable, child_path, split_path
from cachefs.fs.openmode import HandleMode
from cachefs.kernel.wire import ROOT_ID
from cachefs.remote import RemoteEntry


def file(name: str, version: str = "v1", size: int = 10) -> RemoteEntry:
    return RemoteEntry(name, False, size, 1_700_000_000.0, version)


def directory(name: str, mtime: float = 5.0) -> RemoteEntry:
    return RemoteEntry(name, True, 0, mtime)


def test_the_root_is_always_there() -> None:
    table = InodeTable(root_mtime=123.0)
    root = table.get(ROOT_ID)
    assert root.path == "" and root.is_dir and root.nlookup == 1
    assert root.attr().mode == DIR_MODE and stat.S_ISDIR(root.attr().mode) and root.attr().mtime == 123.0
    assert table.find_dir("") is root
    table.forget(ROOT_ID, 100)
    table.drop_if_unused(root)
    assert table.get(ROOT_ID) is root and len(table) == 1


def test_one_inode_per_path_and_version() -> None:
    table = InodeTable(0.0)
    root = table.get(ROOT_ID)
    a = table.for_entry(root, file("a", "v1"))
    assert a.ino > ROOT_ID and a.path == "a" and not a.is_dir
    assert a.attr().mode == FILE_MODE and a.attr().size == 10 and a.attr().nlink == 1
    assert table.for_entry(root, file("a", "v1")) is a
    b = table.for_entry(root, file("a", "v2", size=20))
    assert b is not a and b.ino != a.ino and b.size == 20
    assert table.find_file("a", "v1") is a and table.find_file("a", "v2") is b
    # A directory is one inode whatever its mtime; the newest mtime shows.
    d = table.for_entry(root, directory("d", 5.0))
    assert table.for_entry(root, directory("d", 9.0)) is d and d.mtime == 9.0
    assert table.find_dir("d") is d
    inner = table.for_entry(d, file("x"))
    assert inner.path == "d/x"


def test_an_inode_goes_when_neither_the_kernel_nor_a_handle_holds_it() -> None:
    table = InodeTable(0.0)
    a = table.for_entry(table.get(ROOT_ID), file("a"))
    a.nlookup = 2
    table.forget(a.ino, 1)
    assert table.get(a.ino) is a
    a.handles[HandleMode.PAGE_CACHE] += 1
    table.forget(a.ino, 5)  # more than it had: clamps at zero
    assert a.nlookup == 0 and table.get(a.ino) is a  # the handle holds it
    a.handles[HandleMode.PAGE_CACHE] -= 1
    table.drop_if_unused(a)
    assert table.get(a.ino) is None and table.find_file("a", "v1") is None
    table.forget(a.ino, 1)  # a FORGET of an unknown inode is ignored
    again = table.for_entry(table.get(ROOT_ID), file("a"))
    assert again.ino != a.ino  # node ids are never reused


def test_a_retired_inode_serves_its_holders_while_lookups_get_a_new_one() -> None:
    table = InodeTable(0.0)
    root = table.get(ROOT_ID)
    old = table.for_entry(root, file("a"))
    old.nlookup = 1
    table.retire(old)
    assert old.retired and table.get(old.ino) is old and table.find_file("a", "v1") is None
    new = table.for_entry(root, file("a"))
    assert new is not old and table.find_file("a", "v1") is new
    # The old one going must not take the new one's place in the path index.
    table.forget(old.ino, 1)
    assert table.get(old.ino) is None and table.find_file("a", "v1") is new


def test_files_under_paths() -> None:
    table = InodeTable(0.0)
    root = table.get(ROOT_ID)
    d = table.for_entry(root, directory("d"))
    dd = table.for_entry(root, directory("dd"))
    inodes = {p: table.for_entry(parent, file(name)) for p, parent, name in
              (("top", root, "top"), ("d/x", d, "x"), ("dd/y", dd, "y"))}

    def under(*paths: str) -> set[str]:
        return {i.path for i in table.files_under(list(paths))}

    assert under("") == set(inodes)
    assert under("d") == {"d/x"}  # not dd/y
    assert under("d/") == {"d/x"}
    assert under("top", "dd") == {"top", "dd/y"}
    assert under("nope") == set()


def test_paths() -> None:
    assert child_path("", "a") == "a" and child_path("d/e", "a") == "d/e/a"
    assert split_path("a") == ("", "a") and split_path("d/e/a") == ("d/e", "a")
