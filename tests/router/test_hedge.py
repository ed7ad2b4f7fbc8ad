"""The hedge race on its own: who wins, what happens to the loser, and what is reported when
every contender failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from providers.base import Delta, ProviderError, TextDelta
from router.config import BreakerConfig, parse_config
from router.resilience.breaker import BreakerRegistry, Permit
from router.resilience.watchdog import Watchdog
from router.serving.attempt import Opened
from router.serving.hedge import Race
from router.serving.ledger import Attempt, Ledger
from router.serving.orchestrator import Emitter

LOADED = parse_config({
    "version": 1, "providers": {"sim": {"kind": "simulated"}},
    "deployments": [{"id": d, "provider": "sim", "model": d,
                     "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                     "context_window": 1000,
                     "latency_prior": {"ttft_ms": 100, "tokens_per_s": 10}}
                    for d in ("a", "b")],
}, "hedge.yaml", env={})


class Upstream:
    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Harness:
    def __init__(self) -> None:
        self.ledger = Ledger(Emitter("r"), None)
        self.breakers = BreakerRegistry(BreakerConfig())
        self.abandoned: list[str] = []
        self.race = Race(self.ledger, self.abandon)

    def abandon(self, attempt: Attempt, permit: Permit) -> None:
        self.abandoned.append(attempt.deployment.id)
        permit.release()

    def add(self, dep: str, delay_s: float, fail: ProviderError | None = None) -> Upstream:
        attempt = self.ledger.begin(LOADED.deployments[dep], 10)
        permit = self.breakers.admit(dep)
        assert permit is not None
        upstream = Upstream()

        async def opening() -> Opened:
            await asyncio.sleep(delay_s)
            if fail is not None:
                permit.failure(fail.code)
                raise fail
            watchdog = Watchdog(60.0, 60.0, 60.0, started=0.0)
            watchdog.disarm()  # as `open_upstream` hands it over
            return Opened(attempt.deployment, upstream, (TextDelta("x"),), attempt, permit, 0.0,
                          watchdog)

        self.race.add(attempt, opening(), permit)
        return upstream


async def test_no_first_token_in_time_lets_the_hedge_start() -> None:
    h = Harness()
    h.add("a", 5.0)
    assert await h.race.wait(0.02) is False
    h.add("b", 0.0)
    assert await h.race.wait(None) is True
    opened, error = h.race.result()
    assert opened is not None and error is None and opened.dep.id == "b"
    await h.race.close_losers()
    # The loser was cancelled: nothing left running, its slot and books released.
    assert h.abandoned == ["a"]
    assert [a.deployment.id for a in h.ledger.attempts][-1] == "b"  # `done` names b


async def test_the_primary_winning_is_moved_last_in_the_books() -> None:
    h = Harness()
    h.add("a", 0.05)
    h.add("b", 5.0)
    await h.race.wait(None)
    opened, _ = h.race.result()
    assert opened is not None and opened.dep.id == "a"
    assert [a.deployment.id for a in h.ledger.attempts] == ["b", "a"]
    await h.race.close_losers()
    assert h.abandoned == ["b"]


async def test_a_loser_that_also_got_a_token_is_closed_and_charged() -> None:
    h = Harness()
    first = h.add("a", 0.0)
    second = h.add("b", 0.0)
    await h.race.wait(None)
    opened, _ = h.race.result()
    assert opened is not None and opened.dep.id == "a"  # ties go to the primary
    await h.race.close_losers()
    assert second.closed and not first.closed
    assert h.abandoned == ["b"]


async def test_when_all_fail_the_primary_error_is_reported() -> None:
    h = Harness()
    primary_error = ProviderError("overloaded", "a is busy", status=529)
    h.add("a", 0.01, primary_error)
    h.add("b", 0.0, ProviderError("rate_limited", "b is limited", status=429))
    assert await h.race.wait(None) is True
    opened, error = h.race.result()
    assert opened is None and error is primary_error
    await h.race.close_losers()
    assert h.abandoned == []  # failures were reported by their own attempts


async def test_a_contender_cancelled_before_it_began_is_still_released() -> None:
    h = Harness()
    h.add("a", 0.0)
    await h.race.close_losers()  # e.g. the caller left at once
    assert h.abandoned == ["a"]
    assert h.breakers.admit("a") is not None


@pytest.fixture(autouse=True)
async def no_task_left() -> AsyncIterator[None]:
    yield
    me = asyncio.current_task()
    assert not [t for t in asyncio.all_tasks() if t is not me and not t.done()]


