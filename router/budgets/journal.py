"""Spend that could not reach the state store, kept in process until it can (fail_open).

A settle (or an incremental booking) that finds the store unavailable is appended here, in
order, and a background task replays the entries once the store answers again. Each entry
carries its idempotency key (`once`: the lease id and booking number), so an entry whose
first attempt did reach Redis before the reply was lost books nothing twice. The journal
is bounded: when full, the budget manager refuses new requests (`state_unavailable`)
rather than let spend go unrecorded. Warnings (`warn_at`) of replayed entries are not
re-evaluated; the next settle that crosses a threshold reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from router.background import stop_task
from router.state.store import Booking, StateBackend, StateUnavailable

log = logging.getLogger("router.budgets")

RETRY_S = 1.0  # between attempts to reach the store again


@dataclass(frozen=True, slots=True)
class Settlement:
    """One settle call, as `StateBackend.settle` takes it (without watches)."""

    held_keys: tuple[str, ...]
    amount: int
    bookings: tuple[Booking, ...]
    lease: str
    once: str  # "": none (a settle that is never replayed)
    final: bool

    async def apply(self, state: StateBackend) -> None:
        await state.settle(self.held_keys, self.amount, self.bookings, (), lease=self.lease,
                           once=self.once or None, final=self.final)


class Journal:
    """Settlements waiting for the store; replayed in order by one background task."""

    def __init__(self, state: StateBackend, max_entries: int) -> None:
        self.state = state
        self.max_entries = max_entries
        self._pending: deque[Settlement] = deque()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()  # one replayer at a time: pops what it applied

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_entries

    def pending(self) -> Sequence[Settlement]:
        return tuple(self._pending)

    def add(self, entry: Settlement) -> None:
        if not self._pending:
            log.warning("state store %s unavailable: journaling spend until it returns",
                        self.state.name)
        self._pending.append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._replay())

    async def flush(self) -> bool:
        """Replay what is pending; True when nothing is left."""
        async with self._flushing:
            while self._pending:
                entry = self._pending[0]
                try:
                    await entry.apply(self.state)
                except StateUnavailable:
                    return False
                self._pending.popleft()
            return True

    async def _replay(self) -> None:
        while True:
            ping = getattr(self.state, "ping", None)
            if (ping is None or await ping()) and await self.flush():
                log.warning("state store %s is back: journaled spend booked", self.state.name)
                return
            await asyncio.sleep(RETRY_S)

    async def aclose(self) -> None:
        """Stop replaying; one last bounded attempt to book what is pending."""
        task, self._task = self._task, None
        await stop_task(task)
        if self._pending and not await self.flush():
            log.error("state store %s unavailable at shutdown: %d spend entries not booked",
                      self.state.name, len(self._pending))
