"""remote/health.py: a watched remote passes calls through and notices outages once."""

from __future__ import annotations

import logging

import pytest
import trio

from cachefs.remote import NotFound, Unreachable
from cachefs.remote.health import WatchedRemote
from memory_remote import MemoryRemote


def test_outage_and_return_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    inner = MemoryRemote({"d/f": b"data"})
    remote = WatchedRemote(inner)
    assert remote.source == inner.source and remote.reachable

    async def main() -> None:
        for operation in ("list_dir", "stat", "read_range"):
            inner.fail_next(operation, Unreachable("down"))
        with pytest.raises(Unreachable):
            await remote.list_dir("")
        with pytest.raises(Unreachable):
            await remote.stat("d/f")
        with pytest.raises(Unreachable):
            async with remote.read_range("d/f", 0, 4, ""):
                pass
        assert not remote.reachable
        async with remote.read_range("d/f", 0, 4, "") as pieces:
            assert b"".join([p async for p in pieces]) == b"data"
        assert remote.reachable
        # Other errors say nothing about reachability.
        with pytest.raises(NotFound):
            await remote.stat("nope")
        assert remote.reachable
        await remote.aclose()

    with caplog.at_level(logging.WARNING, logger="cachefs.remote.health"):
        trio.run(main)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "remote memory://test is unreachable", "remote memory://test is reachable again"]
    assert inner.closed
