"""Per-attempt deadlines without per-chunk timers: time to first token, idle between content
chunks, and total. One timer handle is re-armed only when it fires; the hot path just
stores a timestamp. Time the consumer spends between events does not count as idle: the
watchdog only fires while the stream is waiting on the provider (`waiting_since`). SSE
keep-alive comments never reach the router as deltas, so they do not reset it."""

from __future__ import annotations

import asyncio
import contextvars

from providers.base import ProviderError

# `_check` reads no context variable: its timer runs in this one empty context instead of
# a copy of the caller's made per timer (one object less per live stream).
_TIMER_CONTEXT = contextvars.Context()


class Watchdog:
    """The read loop marks each wait on the provider with plain stores (no timer re-armed):
    `waiting_since = time()` and `task = current_task()` before it, `waiting_since = None`
    after it. The task is stored on every wait because the one waiting on the provider is
    the one to cancel, and a consumer may read the first events in one task and the rest in
    another (a server handing a stream over)."""

    __slots__ = ("_handle", "_loop", "_when", "fired", "got_content", "idle_s", "started",
                 "task", "time", "total_s", "ttft_s", "waiting_since")

    def __init__(self, ttft_s: float, idle_s: float, total_s: float, *,
                 started: float | None = None, got_content: bool = False) -> None:
        # `started`/`got_content`: take over an attempt whose first token was awaited
        # elsewhere (retry loop, hedge race), keeping its total deadline.
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(self._loop)
        self.ttft_s, self.idle_s, self.total_s = ttft_s, idle_s, total_s
        self.time = self._loop.time
        self.started = self.time() if started is None else started
        self.got_content = got_content
        self.waiting_since: float | None = None
        self.fired: str | None = None
        self._when = self._deadline()[0]  # when the timer fires
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._when, self._check, context=_TIMER_CONTEXT
        )

    def _deadline(self) -> tuple[float, str]:
        total = self.started + self.total_s
        if not self.got_content:
            first = self.started + self.ttft_s
            return (first, "ttft") if first <= total else (total, "total")
        since = self.waiting_since if self.waiting_since is not None else self.time()
        idle = since + self.idle_s
        return (idle, "idle") if idle < total else (total, "total")

    def _check(self) -> None:
        now = self.time()
        when, which = self._deadline()
        if now < when:
            self._when = when
            self._handle = self._loop.call_at(when, self._check, context=_TIMER_CONTEXT)
        elif self.waiting_since is None and which != "total":
            # The consumer holds the stream: the provider is not late. Look again later.
            self._when = now + self.idle_s
            self._handle = self._loop.call_at(self._when, self._check,
                                              context=_TIMER_CONTEXT)
        elif self.task is not None:
            self.fired = which
            self._handle = None
            self.task.cancel()

    def rearm(self) -> None:
        """Arm the timer again (after `disarm`) for the deadline that applies now."""
        self.disarm()
        self._when = self._deadline()[0]
        self._handle = self._loop.call_at(self._when, self._check, context=_TIMER_CONTEXT)

    def content_started(self) -> None:
        """From the first content on, the idle and total deadlines apply. The timer armed
        for the first token stays when it fires no later than an idle deadline can (it
        moves itself on when it fires early): a timer armed and cancelled less per attempt;
        otherwise, or if disarmed, it is armed again."""
        self.got_content = True
        if self._handle is None or self._when > self.time() + self.idle_s:
            self.rearm()

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def expired(self) -> ProviderError | None:
        """After a CancelledError: the timeout it stands for, or None for a real cancel."""
        if self.fired is None or self.task is None:
            return None
        if self.task.uncancel() > 0:
            return None  # cancelled from outside as well: let the cancellation through
        seconds = {"ttft": self.ttft_s, "idle": self.idle_s, "total": self.total_s}[self.fired]
        what = {"ttft": "first token", "idle": "idle (no content)", "total": "total"}[self.fired]
        return ProviderError("timeout", f"{what} timeout after {seconds:g} s")
