"""Retries: backoff and jitter bounds, Retry-After capping, what is retried, the budget.
Nothing here sleeps for real: the policy's sleep advances a fake clock."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.base import ProviderError
from router.config import RetryConfig
from router.resilience.retry import RetryPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(ft: FakeTime, rng: float = 0.5, **cfg: float | bool) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**cfg), sleep=ft.sleep, rng=lambda: rng,
                       clock=ft.clock)


async def run(p: RetryPolicy, errors: list[ProviderError | None], *,
              has_alternative: bool = False, attempt_cost_s: float = 0.0,
              ft: FakeTime | None = None) -> tuple[list[tuple[int, float, str | None]], object]:
    """Drive a loop the way the orchestration does; `None` in `errors` is a success.
    Returns (number, delay_s, previous error code) per attempt, and the outcome."""
    seen: list[tuple[int, float, str | None]] = []
    outcome: object = "exhausted"
    try:
        async for attempt in p.loop(has_alternative=has_alternative):
            seen.append((attempt.number, attempt.delay_s,
                         attempt.error.code if attempt.error else None))
            if attempt.delay_s:
                await p.sleep(attempt.delay_s)
            if ft is not None:
                ft.now += attempt_cost_s
            err = errors[attempt.number - 1]
            if err is not None:
                attempt.failed(err)
                continue
            attempt.succeeded()
            outcome = "ok"
            break
    except ProviderError as exc:
        outcome = exc
    return seen, outcome


@given(attempt=st.integers(1, 30), u=st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int, u: float) -> None:
    p = RetryPolicy(RetryConfig(initial_backoff_ms=200, max_backoff_ms=5000), rng=lambda: u)
    delay = p.backoff_s(attempt, ProviderError("overloaded", "x"))
    ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
    assert 0.0 <= delay <= ceiling
    assert delay == pytest.approx(u * ceiling)


def test_backoff_ceiling_doubles_then_caps() -> None:
    p = RetryPolicy(RetryConfig(initial_backoff_ms=100, max_backoff_ms=1000), rng=lambda: 1.0)
    err = ProviderError("connection", "reset")
    assert [p.backoff_s(n, err) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_retry_after_is_honored_exactly_and_capped_at_max_backoff() -> None:
    p = RetryPolicy(RetryConfig(max_backoff_ms=5000), rng=lambda: 0.0)
    assert p.backoff_s(1, ProviderError("rate_limited", "x", retry_after=1.5)) == 1.5
    assert p.backoff_s(1, ProviderError("rate_limited", "x", retry_after=60)) == 5.0
    ignoring = RetryPolicy(RetryConfig(honor_retry_after=False), rng=lambda: 0.0)
    assert ignoring.backoff_s(1, ProviderError("rate_limited", "x", retry_after=1.5)) == 0.0


async def test_retries_up_to_attempts_then_raises_the_last_error() -> None:
    ft = FakeTime()
    p = policy(ft, rng=1.0, attempts=3, initial_backoff_ms=100)
    errors: list[ProviderError | None] = [
        ProviderError("overloaded", "529 first", status=529),
        ProviderError("provider_error", "500 second", status=500),
        ProviderError("connection", "reset third"),
    ]
    seen, outcome = await run(p, errors)
    assert seen == [(1, 0.0, None), (2, 0.1, "overloaded"), (3, 0.2, "provider_error")]
    assert outcome is errors[2]
    assert ft.slept == [0.1, 0.2]


async def test_success_on_a_retry_ends_the_loop() -> None:
    ft = FakeTime()
    p = policy(ft, attempts=5, initial_backoff_ms=100)
    seen, outcome = await run(p, [ProviderError("rate_limited", "429", retry_after=0.25), None])
    assert outcome == "ok"
    assert seen == [(1, 0.0, None), (2, 0.25, "rate_limited")]


async def test_a_loop_that_continues_after_success_stops_by_itself() -> None:
    p = policy(FakeTime())
    numbers = []
    async for attempt in p.loop(has_alternative=False):
        numbers.append(attempt.number)
        attempt.succeeded()
    assert numbers == [1]


@pytest.mark.parametrize("code", ["auth", "bad_request", "context_length", "content_filter"])
async def test_non_retryable_errors_are_raised_at_once(code: str) -> None:
    err = ProviderError(code, "no")  # type: ignore[arg-type]
    seen, outcome = await run(policy(FakeTime()), [err, None])
    assert len(seen) == 1 and outcome is err


async def test_retryable_flag_from_the_provider_wins() -> None:
    err = ProviderError("provider_error", "a 501", status=501, retryable=False)
    seen, outcome = await run(policy(FakeTime()), [err, None])
    assert len(seen) == 1 and outcome is err


async def test_timeout_is_not_retried_on_the_same_deployment_when_another_exists() -> None:
    err = ProviderError("timeout", "first token timeout after 10 s")
    seen, outcome = await run(policy(FakeTime()), [err, None], has_alternative=True)
    assert len(seen) == 1 and outcome is err
    seen, outcome = await run(policy(FakeTime()), [err, None], has_alternative=False)
    assert len(seen) == 2 and outcome == "ok"


async def test_retry_after_longer_than_max_fails_over_when_it_can() -> None:
    err = ProviderError("rate_limited", "429", retry_after=120)
    seen, outcome = await run(policy(FakeTime(), max_backoff_ms=2000), [err, None],
                              has_alternative=True)
    assert len(seen) == 1 and outcome is err
    # Alone, it waits as long as it may (max_backoff) and tries again.
    seen, outcome = await run(policy(FakeTime(), max_backoff_ms=2000), [err, None])
    assert seen[1] == (2, 2.0, "rate_limited") and outcome == "ok"


async def test_budget_stops_retries_whose_sleep_would_overrun_it() -> None:
    ft = FakeTime()
    # Each attempt takes 1 s; backoff 0.5 s flat (rng=1, initial=max=500 ms); budget 2.9 s.
    p = policy(ft, rng=1.0, attempts=10, initial_backoff_ms=500, max_backoff_ms=500,
               budget_ms=2900)
    err = ProviderError("overloaded", "busy")
    seen, outcome = await run(p, [err] * 10, ft=ft, attempt_cost_s=1.0)
    # after 1: 1 s + 0.5 fits; after 2: 2.5 s + 0.5 > 2.9: two attempts only.
    assert [s[0] for s in seen] == [1, 2]
    assert outcome is err


async def test_budget_spans_the_request_when_given_its_start() -> None:
    ft = FakeTime()
    p = policy(ft, rng=1.0, attempts=5, initial_backoff_ms=500, max_backoff_ms=500,
               budget_ms=1000)
    started = ft.now
    ft.now += 0.9  # time already spent on an earlier deployment
    loop = p.loop(has_alternative=False, started_at=started)
    numbers = []
    with pytest.raises(ProviderError):
        async for attempt in loop:
            numbers.append(attempt.number)
            attempt.failed(ProviderError("connection", "refused"))
    assert numbers == [1]


async def test_nothing_sleeps_for_real() -> None:
    ft = FakeTime()
    p = policy(ft, rng=1.0, attempts=6, initial_backoff_ms=1000, max_backoff_ms=5000,
               budget_ms=10**7)
    t = time.perf_counter()
    seen, _ = await run(p, [ProviderError("overloaded", "x")] * 6)
    assert len(seen) == 6 and sum(ft.slept) == pytest.approx(1 + 2 + 4 + 5 + 5)
    assert time.perf_counter() - t < 0.5
