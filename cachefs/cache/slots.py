"""Slots for ranged GETs in flight, granted by priority.

Three kinds of fetch share the slots: those a reader is waiting for, a
reader's read-ahead, and background work (directory read-ahead, prefetch).
Higher priority is granted first, and each lower priority may hold only part
of the slots, so a reader always finds a slot soon and a prefetch never
starves an application. A queued fetch that a reader starts waiting for is
promoted (`promote`).
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


class Priority(enum.IntEnum):
    """Lower value, more urgent."""

    DEMAND = 0  # a reader is waiting for these bytes
    READAHEAD = 1  # a sequential reader will want them soon
    BACKGROUND = 2  # directory read-ahead and prefetch


@dataclass(eq=False)
class Ticket:
    """One fetch's claim on a slot, made before it waits so it can be promoted."""

    seq: int
    priority: Priority
    granted: trio.Event = field(default_factory=trio.Event)
    held_as: Priority | None = None  # the priority its slot was counted under


class FetchSlots:
    """A priority-aware capacity limiter for fetches; see the module docstring."""

    def __init__(self, total: int, caps: dict[Priority, int]) -> None:
        """`caps[p]`: at most this many slots held at priority p or below it."""
        self._total = total
        self._caps = {p: caps.get(p, total) for p in Priority}
        self._held: Counter[Priority] = Counter()
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return sum(self._held.values())

    def _fits(self, priority: Priority) -> bool:
        if self.in_use >= self._total:
            return False
        # Every cap from DEMAND down to `priority` must have room.
        for level in Priority:
            if level > priority:
                break
            if sum(n for p, n in self._held.items() if p >= level) >= self._caps[level]:
                return False
        return True

    def _grant(self) -> None:
        for ticket in sorted(self._waiting, key=lambda t: (t.priority, t.seq)):
            if self._fits(ticket.priority):
                self._waiting.remove(ticket)
                ticket.held_as = ticket.priority
                self._held[ticket.priority] += 1
                ticket.granted.set()

    def ticket(self, priority: Priority) -> Ticket:
        return Ticket(next(self._seq), priority)

    @asynccontextmanager
    async def hold(self, ticket: Ticket) -> AsyncIterator[None]:
        """Wait for a slot for `ticket` and hold it for the body."""
        self._waiting.append(ticket)
        self._grant()
        try:
            await ticket.granted.wait()
            yield
        finally:
            if ticket.held_as is not None:
                self._held[ticket.held_as] -= 1
            else:
                self._waiting.remove(ticket)
            self._grant()

    def promote(self, ticket: Ticket, priority: Priority) -> None:
        """Raise a queued or running fetch to `priority` if that is more urgent."""
        if priority >= ticket.priority:
            return
        ticket.priority = priority
        if not ticket.granted.is_set():
            self._grant()
