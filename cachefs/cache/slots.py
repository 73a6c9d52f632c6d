"""Slots for ranged GETs in flight, granted by priority.

Three kinds of fetch share the slots: those a reader is waiting for, a
reader's read-ahead, and background work (directory read-ahead, prefetch).
Higher priority is granted first, and each lower priority may hold only part
of the slots, so a reader always finds a slot soon and a prefetch never
starves an application. A queued fetch that a reader starts waiting for is
promoted (`promote`).
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


class Priority(enum.IntEnum):
    """Lower value, more urgent."""

    DEMAND = 0  # a reader is waiting for these bytes
    READAHEAD = 1  # a sequential reader will want them soon
    BACKGROUND = 2  # directory read-ahead and prefetch


# Iterating over an Enum class is slow; fits() does it twice per fetch.
_LEVELS = tuple(Priority)


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
        self._held = {p: 0 for p in Priority}
        self._in_use = 0
        # Queued tickets by priority, each queue in ticket order. A fetch
        # asks twice (to start, to end) and each grant looks at the queues:
        # sorting every queued ticket each time cost a cold small file more
        # than the rest of its bookkeeping.
        self._waiting: dict[Priority, list[Ticket]] = {p: [] for p in Priority}
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return self._in_use

    def _fits(self, priority: Priority) -> bool:
        if self._in_use >= self._total:
            return False
        # Every cap from DEMAND down to `priority` must have room; held at
        # `level` or below is what is held minus what is held above it.
        held = self._in_use
        for level in _LEVELS:
            if level > priority:
                break
            if held >= self._caps[level]:
                return False
            held -= self._held[level]
        return True

    def _grant(self) -> None:
        # In priority order; a ticket that does not fit means no ticket of
        # its priority or below does (each checks the caps of those above).
        for priority, queue in self._waiting.items():
            while queue and self._fits(priority):
                ticket = queue.pop(0)
                ticket.held_as = priority
                self._held[priority] += 1
                self._in_use += 1
                ticket.granted.set()
            if queue:
                return

    def ticket(self, priority: Priority) -> Ticket:
        return Ticket(next(self._seq), priority)

    @asynccontextmanager
    async def hold(self, ticket: Ticket) -> AsyncIterator[None]:
        """Wait for a slot for `ticket` and hold it for the body."""
        bisect.insort(self._waiting[ticket.priority], ticket, key=_seq_of)
        self._grant()
        try:
            await ticket.granted.wait()
            yield
        finally:
            if ticket.held_as is not None:
                self._held[ticket.held_as] -= 1
                self._in_use -= 1
            else:
                self._waiting[ticket.priority].remove(ticket)
            self._grant()

    def promote(self, ticket: Ticket, priority: Priority) -> None:
        """Raise a queued or running fetch to `priority` if that is more urgent."""
        if priority >= ticket.priority:
            return
        queue = self._waiting[ticket.priority]
        queued = not ticket.granted.is_set() and ticket in queue
        if queued:
            queue.remove(ticket)
        ticket.priority = priority
        if queued:
            bisect.insort(self._waiting[priority], ticket, key=_seq_of)
            self._grant()


def _seq_of(ticket: Ticket) -> int:
    return ticket.seq
