"""The hedge race: attempts run in tasks up to their first content delta; the first to get
one wins, every other one is closed at once (its connection with it) and its cost counted.
Nothing here reaches the caller: the winner's stream is continued by the orchestration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from providers.base import ProviderError
from router.resilience.breaker import Permit
from router.serving.attempt import Opened, close_quietly
from router.serving.ledger import Attempt, Ledger

Abandon = Callable[[Attempt, Permit], None]
Censor = Callable[[Attempt], None]


class Race:
    __slots__ = ("_abandon", "_censor", "_entries", "_ledger", "_winner")

    def __init__(self, ledger: Ledger, abandon: Abandon, censor: Censor | None = None) -> None:
        self._ledger = ledger
        self._abandon = abandon
        # A loser cut before its first token took at least this long: told to the
        # statistics as a censored observation, so a slow deployment does not look fast.
        self._censor = censor
        self._entries: list[tuple[Attempt, asyncio.Task[Opened], Permit]] = []
        self._winner: asyncio.Task[Opened] | None = None

    def add(self, attempt: Attempt, opening: Coroutine[Any, Any, Opened], permit: Permit) -> None:
        self._entries.append((attempt, asyncio.create_task(opening), permit))

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait until a contender has its first token or every one has failed (True), or
        until `timeout_s` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._winner is None:
            pending = {task for _, task, _ in self._entries if not task.done()}
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(pending, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            for _, task, _ in self._entries:  # entry order breaks ties: primary first
                if task in done and not task.cancelled() and task.exception() is None:
                    self._winner = task
                    break
        return True

    def result(self) -> tuple[Opened | None, ProviderError | None]:
        """The winner, or the primary's failure when every contender failed."""
        if self._winner is not None:
            opened = self._winner.result()
            # Its watchdog was armed in the race's task: disarmed until `stream_opened`
            # arms it in the task that reads the answer.
            opened.watchdog.disarm()
            # The answer's attempt is the last one in the books (`done` names it).
            attempts = self._ledger.attempts
            attempts.remove(opened.attempt)
            attempts.append(opened.attempt)
            return opened, None
        error = self._entries[0][1].exception()
        assert isinstance(error, ProviderError)
        return None, error

    async def close_losers(self) -> None:
        """Cancel and close every contender but the winner; count what they cost."""
        for attempt, task, permit in self._entries:
            if task is self._winner:
                continue
            if not task.done():
                if self._censor is not None:
                    self._censor(attempt)
                task.cancel()  # its `open` closes the upstream and counts the input
                await asyncio.wait({task})
                if not permit.resolved:  # cancelled before it even began
                    self._abandon(attempt, permit)
                continue
            if task.cancelled() or task.exception() is not None:
                continue  # a failure: already accounted and reported to its breaker
            opened = task.result()  # got its first token just after the winner
            opened.watchdog.disarm()
            await close_quietly(opened.upstream)
            self._abandon(attempt, permit)
