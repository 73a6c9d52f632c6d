"""The daemon's control commands, asked over its real control socket, served
by a real filesystem and cache over an in-memory remote (no mount)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import trio

from cachefs.control import commands
from cachefs.control.client import ControlError, request
from cachefs.fs.filesystem import STATE_XATTR
from cachefs.kernel.wire import ROOT_ID
from memory_remote import MemoryRemote

CHUNK = 64 * 1024
FILES = {
    "data/a.bin": os.urandom(3 * CHUNK + 5),
    "data/b.txt": b"b" * 1000,
    "data/sub/c.txt": b"c" * 10,
    "top.txt": b"top",
}


@pytest.fixture
def stack(open_stack):
    """`open_stack` with the control socket and this file's chunk size."""
    return functools.partial(open_stack, control=True, chunk_size=CHUNK)


async def ask(socket_path: Path, message: dict) -> list[dict]:
    return await trio.to_thread.run_sync(lambda: list(request(socket_path, message, timeout=10)))


async def recorded(socket_path: Path, complete: int) -> dict:
    """The status once `complete` objects are recorded complete: the journal
    records what was fetched a moment later, and only what is recorded
    counts (or can be evicted)."""
    while True:
        [status] = await ask(socket_path, {"op": "status"})
        if status["cache"]["objects_complete"] >= complete:
            return status
        await trio.sleep(0.02)


def run(main) -> None:
    async def bounded() -> None:
        with trio.fail_after(20):
            await main()

    trio.run(bounded)


def test_prefetch_waits_reports_and_leaves_the_files_complete(stack) -> None:
    remote = MemoryRemote(FILES)

    async def main() -> None:
        async with stack(remote) as daemon:
            replies = await ask(daemon.control, {"op": "prefetch", "paths": ["data"], "jobs": 2})
            assert replies[0]["event"] == "started" and replies[0]["job"] == 1
            done = replies[-1]
            assert done["event"] == "done" and done["state"] == "done" and not done["scanning"]
            assert done["files_total"] == done["files_done"] == 3
            assert done["bytes_total"] == done["bytes_done"] == done["bytes_fetched"] == sum(
                len(v) for k, v in FILES.items() if k.startswith("data/"))
            assert done["failures"] == []
            assert remote.calls["read_range"] == 4 + 1 + 1  # each chunk once
            # Complete: a look-up and open need no fetch.
            fs = daemon.fs
            data = (await fs.lookup(ROOT_ID, b"data")).attr.ino
            a = (await fs.lookup(data, b"a.bin")).attr.ino
            assert fs.getxattr(a, STATE_XATTR) == b"complete"
            assert fs.open_now(a, os.O_RDONLY) is not None

            # Again: nothing left to fetch, everything counts as done.
            again = (await ask(daemon.control, {"op": "prefetch", "paths": ["data", "top.txt"]}))[-1]
            assert again["files_done"] == 4 and again["bytes_fetched"] == len(b"top")

    run(main)


def test_prefetch_without_waiting_and_its_failures(stack) -> None:
    remote = MemoryRemote(FILES)

    async def main() -> None:
        async with stack(remote) as daemon:
            [started] = await ask(daemon.control, {"op": "prefetch", "paths": ["top.txt"], "wait": False})
            assert started["event"] == "started"
            done = (await ask(daemon.control, {"op": "prefetch", "paths": ["nope", "data/sub/c.txt"]}))[-1]
            assert done["files_done"] == 1
            assert done["failures"] == [{"path": "nope", "error": "no such file or directory"}]

    run(main)


@pytest.mark.parametrize("message, error", [
    ({"op": "prefetch"}, "'paths' must be a non-empty list"),
    ({"op": "prefetch", "paths": []}, "'paths' must be a non-empty list"),
    ({"op": "prefetch", "paths": [1]}, "'paths' must be a non-empty list"),
    ({"op": "prefetch", "paths": ["a"], "jobs": 0}, "'jobs' must be a positive whole number"),
    ({"op": "prefetch", "paths": ["a"], "jobs": "4"}, "'jobs' must be a positive whole number"),
    ({"op": "unpin", "paths": "a"}, "'paths' must be a non-empty list"),
    ({"op": "evict"}, "'paths' must be a non-empty list"),
    ({"op": "mount"}, "unknown request"),
])
def test_bad_arguments_are_one_line_errors(stack, message: dict, error: str) -> None:
    async def main() -> None:
        async with stack(MemoryRemote(FILES)) as daemon:
            with pytest.raises(ControlError, match=error):
                await ask(daemon.control, message)

    run(main)


def test_cancel_stops_a_running_prefetch(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "PROGRESS_INTERVAL", 0.01)
    remote = MemoryRemote(FILES)

    async def main() -> None:
        async with stack(remote) as daemon:
            gate = remote.hold_reads()
            replies: list[dict] = []  # as the waiting client gets them

            def prefetch() -> None:
                for reply in request(daemon.control, {"op": "prefetch", "paths": [""]}, timeout=10):
                    replies.append(reply)

            daemon.nursery.start_soon(trio.to_thread.run_sync, prefetch)
            # Cancelled while its reads are held, and once its client has had progress.
            while remote.calls["read_range"] == 0 or not any(r["event"] == "progress" for r in replies):
                await trio.sleep(0.01)
            assert await ask(daemon.control, {"op": "cancel", "paths": ["elsewhere"]}) == [{"cancelled": []}]
            assert await ask(daemon.control, {"op": "cancel", "paths": ["data/sub"]}) == [{"cancelled": []}]
            assert await ask(daemon.control, {"op": "cancel", "all": True}) == [{"cancelled": [1]}]
            while replies[-1]["event"] != "done":
                await trio.sleep(0.01)
            assert replies[-1]["state"] == "cancelled" and replies[-1]["files_done"] < 4
            gate.set()

    run(main)


def test_pins_are_kept_until_unpinned(stack) -> None:
    async def main() -> None:
        async with stack(MemoryRemote(FILES)) as daemon:
            await ask(daemon.control, {"op": "prefetch", "paths": ["data"], "pin": True})
            status = await recorded(daemon.control, 3)
            assert status["cache"]["pinned"] == 3
            # A pinned file is not evicted.
            evicted = (await ask(daemon.control, {"op": "evict", "paths": ["data/b.txt"]}))[0]
            assert evicted["files"] == 0 and evicted["skipped"] == ["data/b.txt"]
            assert await ask(daemon.control, {"op": "unpin", "paths": ["data/sub", "data/b.txt"]}) == [{"unpinned": 2}]
            assert await ask(daemon.control, {"op": "unpin", "paths": ["data/sub"]}) == [{"unpinned": 0}]

    run(main)


def test_status_stats_and_evict(stack) -> None:
    remote = MemoryRemote(FILES)

    async def main() -> None:
        async with stack(remote, cap_bytes=64 * 1024 * 1024) as daemon:
            fs = daemon.fs
            top = (await fs.lookup(ROOT_ID, b"top.txt")).attr.ino
            fs.release(top, (await fs.open(top, os.O_RDONLY)).fh)
            [stats] = await ask(daemon.control, {"op": "stats"})
            assert stats["opens"]["page-cache"] == 1 and stats["misses"] == 1
            await ask(daemon.control, {"op": "prefetch", "paths": ["data/b.txt"]})
            status = await recorded(daemon.control, 1)
            assert status["source"] == remote.source
            assert Path(status["cache_dir"]).is_dir()
            assert status["stats"]["misses"] == 1
            assert status["stats"]["bytes_fetched"] == 3 + 1000
            assert status["cache"]["cap_bytes"] == 64 * 1024 * 1024 and status["cache"]["min_free_bytes"] == 0

            # Closed files are recorded a moment after their last read: evict what is.
            evicted = {"files": 0}
            while evicted["files"] < 2:
                [result] = await ask(daemon.control, {"op": "evict", "paths": [""]})
                evicted["files"] += result["files"]
                await trio.sleep(0.02)
            [status] = await ask(daemon.control, {"op": "status"})
            assert status["cache"]["bytes_cached"] == 0 and status["cache"]["objects_complete"] == 0

    run(main)
