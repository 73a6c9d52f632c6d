"""The table of open objects: the one place their uses are counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachefs.cache.objects import CachedObject
from cachefs.cache.table import ObjectTable


def make_object(tmp_path: Path, key: str = "k", version: str = "v1") -> CachedObject:
    path = tmp_path / f"{key}-{version}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return CachedObject(key=key, version=version, size=10, mtime=0.0, chunk_size=4, file=str(path), fd=fd)


def test_the_last_release_closes_the_object_and_takes_it_out(tmp_path: Path) -> None:
    closed: list[CachedObject] = []
    table = ObjectTable(on_closed=closed.append)
    obj = table.add(make_object(tmp_path))
    assert table.find("k", "v1") is obj and table.is_open("k", "v1")
    assert table.retain(obj) is obj
    assert table.uses(obj) == 2
    table.release(obj)
    assert obj.fd >= 0 and closed == []
    table.release(obj)
    assert obj.fd == -1 and closed == [obj]
    assert table.find("k", "v1") is None and table.uses(obj) == 0
    with pytest.raises(AssertionError, match="needs a holder"):
        table.retain(obj)


def test_an_object_taken_out_stays_open_for_its_holders(tmp_path: Path) -> None:
    closed: list[CachedObject] = []
    table = ObjectTable(on_closed=closed.append)
    old = table.add(make_object(tmp_path))
    table.take_out(old)
    assert table.find("k", "v1") is None and not table.is_open("k", "v1")
    # The next open of the same version is a new object...
    new = table.add(make_object(tmp_path, version="v1"))
    assert new is not old and list(table) == [new]
    # ...and the old one's last release does not take the new one out.
    table.release(old)
    assert closed == [old] and table.find("k", "v1") is new
    table.close_all()
    assert new.fd == -1 and list(table) == []
