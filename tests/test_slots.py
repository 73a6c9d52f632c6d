"""FetchSlots: demanded fetches go first; read-ahead never takes every slot."""

from __future__ import annotations

import trio
import trio.testing

from cachefs.cache.slots import FetchSlots


async def _hold(slots: FetchSlots, demanded: bool, name: str, order: list[str], release: trio.Event) -> None:
    async with slots.hold(slots.ticket(demanded)):
        order.append(name)
        await release.wait()


def test_speculative_fetches_leave_slots_for_readers() -> None:
    async def main() -> None:
        slots = FetchSlots(total=3, speculative=2)
        order: list[str] = []
        release = trio.Event()
        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(_hold, slots, False, f"ahead{i}", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # Two read-aheads run (trio starts tasks in no fixed order); the
            # third slot stays free for a reader.
            assert len(order) == 2 and all(name.startswith("ahead") for name in order)
            n.start_soon(_hold, slots, True, "reader", order, release)
            await trio.testing.wait_all_tasks_blocked()
            assert order[2:] == ["reader"]
            assert slots.in_use == 3
            release.set()
        assert sorted(order) == ["ahead0", "ahead1", "ahead2", "ahead3", "reader"]
        assert slots.in_use == 0

    trio.run(main)


def test_waiting_reader_is_granted_before_older_read_ahead() -> None:
    async def main() -> None:
        slots = FetchSlots(total=1, speculative=1)
        order: list[str] = []
        first, rest = trio.Event(), trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(_hold, slots, True, "busy", order, first)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(_hold, slots, False, "ahead", order, rest)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(_hold, slots, True, "reader", order, rest)
            await trio.testing.wait_all_tasks_blocked()
            first.set()
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["busy", "reader"]
            rest.set()
        assert order == ["busy", "reader", "ahead"]

    trio.run(main)


def test_promoted_read_ahead_jumps_the_queue() -> None:
    async def main() -> None:
        slots = FetchSlots(total=2, speculative=1)
        order: list[str] = []
        release = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(_hold, slots, False, "a0", order, release)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(_hold, slots, False, "a1", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # The one speculative slot is taken: a1 waits although a slot is free.
            assert order == ["a0"]
            (queued,) = slots._waiting
            slots.promote(queued)  # what the fetcher does when a reader waits for it
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["a0", "a1"]
            release.set()

    trio.run(main)
