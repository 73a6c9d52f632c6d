"""Slots for ranged GETs in flight, with readers ahead of read-ahead.

Two kinds of fetch share the slots: demanded ones, which a reader is waiting
for, and speculative ones (read-ahead, directory read-ahead, prefetch).
Demanded fetches are granted first, and speculative ones may hold at most
`speculative` of the `total` slots, so a reader always finds a slot soon
even while read-ahead keeps the pipe full. A speculative fetch that a reader
starts waiting for is promoted (`promote`).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


@dataclass(eq=False)
class Ticket:
    """One fetch's claim on a slot, made before it waits so it can be promoted."""

    seq: int
    demanded: bool
    granted: trio.Event = field(default_factory=trio.Event)
    holds_speculative: bool = False


class FetchSlots:
    """A priority-aware capacity limiter for fetches; see the module docstring."""

    def __init__(self, total: int, speculative: int) -> None:
        assert 0 < speculative <= total
        self._total = total
        self._speculative_max = speculative
        self._busy = 0
        self._busy_speculative = 0
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return self._busy

    def _fits(self, demanded: bool) -> bool:
        return self._busy < self._total and (demanded or self._busy_speculative < self._speculative_max)

    def _take(self, waiter: Ticket) -> None:
        self._busy += 1
        waiter.holds_speculative = not waiter.demanded
        self._busy_speculative += waiter.holds_speculative
        waiter.granted.set()

    def _grant(self) -> None:
        # Demanded first, then oldest first.
        for waiter in sorted(self._waiting, key=lambda w: (not w.demanded, w.seq)):
            if self._fits(waiter.demanded):
                self._waiting.remove(waiter)
                self._take(waiter)

    def ticket(self, demanded: bool) -> Ticket:
        return Ticket(next(self._seq), demanded)

    @asynccontextmanager
    async def hold(self, waiter: Ticket) -> AsyncIterator[None]:
        """Wait for a slot for `waiter` and hold it for the body."""
        self._waiting.append(waiter)
        self._grant()
        try:
            await waiter.granted.wait()
            yield
        finally:
            if waiter.granted.is_set():
                self._busy -= 1
                self._busy_speculative -= waiter.holds_speculative
            else:
                self._waiting.remove(waiter)
            self._grant()

    def promote(self, waiter: Ticket) -> None:
        """A reader now waits for this fetch: treat it as demanded."""
        if waiter.demanded:
            return
        waiter.demanded = True
        if not waiter.granted.is_set():
            self._grant()
