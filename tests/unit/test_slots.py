"""FetchSlots: demanded fetches go first; read-ahead never takes every slot."""

from __future__ import annotations

import trio
import trio.testing

from cachefs.cache.slots import FetchSlots, Priority, Ticket


async def _hold(slots: FetchSlots, priority: Priority | Ticket, name: str, order: list[str],
                release: trio.Event) -> None:
    ticket = priority if isinstance(priority, Ticket) else slots.ticket(priority)
    async with slots.hold(ticket):
        order.append(name)
        await release.wait()


def test_speculative_fetches_leave_slots_for_readers() -> None:
    async def main() -> None:
        slots = FetchSlots(total=3, caps={Priority.READAHEAD: 2})
        order: list[str] = []
        release = trio.Event()
        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(_hold, slots, Priority.READAHEAD, f"ahead{i}", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # Two read-aheads run (trio starts tasks in no fixed order); the
            # third slot stays free for a reader.
            assert len(order) == 2 and all(name.startswith("ahead") for name in order)
            n.start_soon(_hold, slots, Priority.DEMAND, "reader", order, release)
            await trio.testing.wait_all_tasks_blocked()
            assert order[2:] == ["reader"]
            assert slots.in_use == 3
            release.set()
        assert sorted(order) == ["ahead0", "ahead1", "ahead2", "ahead3", "reader"]
        assert slots.in_use == 0

    trio.run(main)


def test_waiting_reader_is_granted_before_older_read_ahead() -> None:
    async def main() -> None:
        slots = FetchSlots(total=1, caps={Priority.READAHEAD: 1})
        order: list[str] = []
        first, rest = trio.Event(), trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(_hold, slots, Priority.DEMAND, "busy", order, first)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(_hold, slots, Priority.READAHEAD, "ahead", order, rest)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(_hold, slots, Priority.DEMAND, "reader", order, rest)
            await trio.testing.wait_all_tasks_blocked()
            first.set()
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["busy", "reader"]
            rest.set()
        assert order == ["busy", "reader", "ahead"]

    trio.run(main)


def test_promoted_read_ahead_jumps_the_queue() -> None:
    async def main() -> None:
        slots = FetchSlots(total=2, caps={Priority.READAHEAD: 1})
        order: list[str] = []
        release = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(_hold, slots, Priority.READAHEAD, "a0", order, release)
            await trio.testing.wait_all_tasks_blocked()
            queued = slots.ticket(Priority.READAHEAD)
            n.start_soon(_hold, slots, queued, "a1", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # The one speculative slot is taken: a1 waits although a slot is free.
            assert order == ["a0"]
            slots.promote(queued, Priority.DEMAND)  # what the fetcher does when a reader waits for it
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["a0", "a1"]
            release.set()

    trio.run(main)


def test_background_work_yields_to_read_ahead() -> None:
    async def main() -> None:
        slots = FetchSlots(total=4, caps={Priority.READAHEAD: 3, Priority.BACKGROUND: 2})
        order: list[str] = []
        release = trio.Event()
        async with trio.open_nursery() as n:
            for i in range(3):
                n.start_soon(_hold, slots, Priority.BACKGROUND, f"bg{i}", order, release)
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == 2  # background holds at most 2
            n.start_soon(_hold, slots, Priority.READAHEAD, "ra0", order, release)
            n.start_soon(_hold, slots, Priority.READAHEAD, "ra1", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # One read-ahead takes the third slot; the cap of 3 stops the
            # other, and the fourth slot stays free for a reader.
            assert len(order) == 3 and order[2] in ("ra0", "ra1")
            n.start_soon(_hold, slots, Priority.DEMAND, "reader", order, release)
            await trio.testing.wait_all_tasks_blocked()
            assert order[3:] == ["reader"]
            release.set()

    trio.run(main)
