"""Retries before the first token, decided by tenacity, announced before sleeping.

One `RetryLoop` covers one deployment within one request: an explicit tenacity
`AsyncRetrying` loop around "open the stream and read up to its first content delta" (a
`@retry` decorator on an async generator retries nothing). Usage:

    async for attempt in policy.loop(has_alternative=True, started_at=t0):
        if attempt.delay_s:
            ...emit the `retry` event (attempt.error, attempt.delay_s)...
            await policy.sleep(attempt.delay_s)
        try:
            ...open the stream, read to the first content delta...
        except ProviderError as err:
            attempt.failed(err)
            continue
        attempt.succeeded()
        break

When no retry is left the loop raises the last `ProviderError`. Tenacity's loop sleeps
inside `__anext__`, where an async generator could not emit its `retry` event first; so
tenacity gets a sleep that returns at once, and the caller announces and then sleeps
through `policy.sleep` (injectable: tests never sleep for real).

Rules: exponential backoff with full jitter (uniform in [0, min(max, initial * 2^(n-1))]);
`Retry-After` honored up to `max_backoff_ms` (a longer one fails over at once when
another candidate exists); at most `attempts` attempts per deployment and a total retry
time `budget_ms` per request (a sleep that would overrun it is not taken). Not retried:
non-retryable errors (client errors; `context_length` goes to a larger-context candidate),
and a timeout when another candidate exists (a silent provider is not waited on twice).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from providers.base import ProviderError
from router.config.schema import RetryConfig

Sleep = Callable[[float], Awaitable[None]]


class RetryPolicy:
    """`resilience.retry` made executable. One per router; loops are per request."""

    def __init__(self, cfg: RetryConfig, *, sleep: Sleep = asyncio.sleep,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self._rng = rng
        self.clock = clock
        self._initial_s = cfg.initial_backoff_ms / 1000.0
        self._max_s = cfg.max_backoff_ms / 1000.0
        self._budget_s = cfg.budget_ms / 1000.0

    def backoff_s(self, attempt_number: int, error: ProviderError) -> float:
        """The wait after failed attempt `attempt_number` (1-based) ended with `error`."""
        if self.cfg.honor_retry_after and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self._max_s)
        ceiling = min(self._max_s, self._initial_s * 2.0 ** (attempt_number - 1))
        return self._rng() * ceiling

    def retries(self, error: BaseException, *, has_alternative: bool) -> bool:
        """Whether `error` is worth another attempt on the same deployment."""
        if not isinstance(error, ProviderError) or not error.retryable:
            return False
        if has_alternative:
            if error.code == "timeout":
                return False
            after = error.retry_after
            if self.cfg.honor_retry_after and after is not None and after > self._max_s:
                return False  # the provider asks for longer than we wait: go elsewhere now
        return True

    def loop(self, *, has_alternative: bool, started_at: float | None = None,
             failed_first: ProviderError | None = None) -> RetryLoop:
        """Attempts on one deployment. `started_at` (on `clock`) starts the retry budget;
        pass the request's start so the budget spans all its deployments. `failed_first`:
        the first attempt was made without a loop (most need none) and failed so; the loop
        begins with the decision on it."""
        loop = RetryLoop(self, has_alternative,
                         self.clock() if started_at is None else started_at)
        loop.last_error = failed_first
        return loop

    def over_budget(self, started_at: float, upcoming_s: float) -> bool:
        return self.clock() - started_at + upcoming_s > self._budget_s


class Attempt:
    """One attempt of a `RetryLoop`: what preceded it, and where to report its outcome."""

    __slots__ = ("_loop", "_state", "delay_s", "error", "number")

    def __init__(self, loop: RetryLoop, state: RetryCallState | None, delay_s: float) -> None:
        self._loop = loop
        self._state = state  # None for a first attempt that tenacity has not seen yet
        self.number: int = 1 if state is None else state.attempt_number  # on this deployment
        self.delay_s = delay_s  # to wait before this attempt (0.0 for the first)
        self.error = loop.last_error  # what ended the previous attempt, if any

    def failed(self, error: ProviderError) -> None:
        self._loop.last_error = error
        if self._state is not None:
            self._state.set_exception((type(error), error, error.__traceback__))

    def succeeded(self) -> None:
        self._loop.finished = True
        if self._state is not None:
            self._state.set_result(None)
        self._loop.drop_retrying()


class _OverBudget(stop_base):
    """Tenacity stop: the next sleep would overrun the request's total retry time."""

    def __init__(self, policy: RetryPolicy, started_at: float) -> None:
        self._policy = policy
        self._started_at = started_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._policy.over_budget(self._started_at, retry_state.upcoming_sleep)


class RetryLoop:
    """`async for attempt in loop`: see the module docstring.

    The first attempt needs no decision, and most requests need no other: tenacity's loop
    is only built when the first attempt fails (it is then told of that failure), so the
    common path pays nothing for it."""

    def __init__(self, policy: RetryPolicy, has_alternative: bool, started_at: float) -> None:
        self._policy = policy
        self._has_alternative = has_alternative
        self._started_at = started_at
        self._retrying: AsyncRetrying | None = None
        self._pending_s = 0.0
        self.last_error: ProviderError | None = None
        self.finished = False

    def _start_retrying(self) -> AsyncRetrying:
        # Module-level classes and bound methods only: a class made per request (tenacity's
        # are ABCs) costs more CPU and garbage-collector work than the rest of the loop.
        policy = self._policy
        retrying = AsyncRetrying(
            sleep=self._defer_sleep,
            stop=stop_after_attempt(policy.cfg.attempts) | _OverBudget(policy, self._started_at),
            wait=self._wait, retry=retry_if_exception(self._retries), reraise=True,
        )
        retrying.__aiter__()
        return retrying

    def drop_retrying(self) -> None:
        """Let go of tenacity's loop once done: it holds this loop's bound methods (a
        reference cycle only the cyclic garbage collector would free)."""
        self._retrying = None

    def _retries(self, error: BaseException) -> bool:
        return self._policy.retries(error, has_alternative=self._has_alternative)

    def _wait(self, rs: RetryCallState) -> float:
        error = rs.outcome.exception() if rs.outcome is not None else None
        assert isinstance(error, ProviderError)  # only these are retried
        return self._policy.backoff_s(rs.attempt_number, error)

    async def _defer_sleep(self, seconds: float) -> None:
        """Tenacity's sleep: only noted; the caller sleeps after announcing the retry."""
        self._pending_s = float(seconds)

    def __aiter__(self) -> RetryLoop:
        return self

    async def __anext__(self) -> Attempt:
        if self.finished:
            raise StopAsyncIteration
        retrying = self._retrying
        if retrying is None:
            first_error = self.last_error
            if first_error is None:
                return Attempt(self, None, 0.0)
            if not self._retries(first_error):  # what tenacity would decide, without it
                self.finished = True
                raise first_error
            # The first attempt failed: replay it into tenacity, which decides from here.
            retrying = self._retrying = self._start_retrying()
            first = await retrying.__anext__()
            first.retry_state.set_exception(
                (type(first_error), first_error, first_error.__traceback__))
        try:
            manager = await retrying.__anext__()
        except ProviderError as error:
            self.drop_retrying()  # no more attempts
            raise error from None  # the last error, not tenacity's frames around it
        delay, self._pending_s = self._pending_s, 0.0
        return Attempt(self, manager.retry_state, delay)
