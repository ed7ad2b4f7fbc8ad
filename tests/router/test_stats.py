"""Live statistics: estimates decayed by age (half-life from `routing:`), priors until
observed, quota waits, in-flight counts, and the estimator's TTFT p95 used for hedging.
A hand-driven clock: no assertion depends on real time."""

from __future__ import annotations

import pytest

from router.config import Deployment, LatencyPrior, Price
from router.routing.settings import RoutingConfig
from router.routing.stats import HEDGE_MIN_WEIGHT, StatsRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock | None = None, half_life_s: float = 60.0) -> StatsRegistry:
    return StatsRegistry(RoutingConfig(half_life_s=half_life_s), clock=clock or Clock())


def dep(id: str = "d", ttft: float = 500, rate: float = 100) -> Deployment:
    return Deployment(
        id=id, provider="p", provider_kind="simulated", model="m",
        price=Price(input_per_mtok=1, output_per_mtok=1), context_window=1000,
        max_output_tokens=None, default_max_tokens=100,
        latency_prior=LatencyPrior(ttft_ms=ttft, tokens_per_s=rate), quality=0.5,
        capabilities=frozenset(), options={})


def test_priors_until_observed() -> None:
    stats = registry()
    d = dep()
    assert stats.estimate_ttft_ms(d) == 500
    assert stats.estimate_tokens_per_s(d) == 100


def test_first_observation_replaces_the_prior() -> None:
    stats = registry()
    d = dep()
    stats.observe_ttft("d", 40)
    stats.observe_rate("d", 900)
    assert stats.estimate_ttft_ms(d) == 40
    assert stats.estimate_tokens_per_s(d) == 900


def test_an_observation_one_half_life_old_weighs_half() -> None:
    # Decay is by age, not by count (the old EWMA weighed the newest sample 0.2 however
    # old the previous ones were).
    clock = Clock()
    stats = registry(clock)
    d = dep()
    stats.observe_ttft("d", 100)
    clock.now = 60.0
    stats.observe_ttft("d", 400)
    assert stats.estimate_ttft_ms(d) == pytest.approx((0.5 * 100 + 400) / 1.5)
    stats.observe_rate("d", 50)
    stats.observe_rate("d", 150)  # same instant: equal weights of 20 and 6.67 ms per token
    assert stats.estimate_tokens_per_s(d) == pytest.approx(1000 / ((20 + 1000 / 150) / 2))


def test_average_converges_to_a_new_steady_level() -> None:
    clock = Clock()
    stats = registry(clock)
    d = dep()
    stats.observe_ttft("d", 1000)
    for _ in range(40):
        clock.now += 30
        stats.observe_ttft("d", 100)
    assert stats.estimate_ttft_ms(d) == pytest.approx(100, abs=1)


def test_ttft_and_rate_are_independent() -> None:
    stats = registry()
    d = dep()
    stats.observe_ttft("d", 10)
    assert stats.estimate_tokens_per_s(d) == 100  # still the prior


def test_deployments_are_tracked_separately() -> None:
    stats = registry()
    stats.observe_ttft("a", 10)
    assert stats.estimate_ttft_ms(dep("a")) == 10
    assert stats.estimate_ttft_ms(dep("b")) == 500


def test_outcomes_count_requests_and_failures() -> None:
    stats = registry()
    stats.observe_outcome("d", None)
    stats.observe_outcome("d", "timeout")
    stats.observe_outcome("d", None)
    s = stats.get("d")
    assert (s.requests, s.failures, s.last_error) == (3, 1, "timeout")


def test_p95_is_twice_the_estimate_before_enough_samples() -> None:
    stats = registry()
    d = dep()
    assert stats.p95_ttft_ms(d) == 1000
    for _ in range(int(HEDGE_MIN_WEIGHT) - 1):
        stats.observe_ttft("d", 100)
    assert stats.p95_ttft_ms(d) == pytest.approx(2 * stats.estimate_ttft_ms(d))


def test_p95_is_the_estimators_quantile() -> None:
    stats = StatsRegistry(RoutingConfig(half_life_s=60.0, max_weight=1000), clock=Clock())
    for ms in range(1, 101):  # 1..100 ms
        stats.observe_ttft("d", float(ms))
    assert stats.p95_ttft_ms(dep()) == pytest.approx(95, rel=0.1)  # bins are 10% wide


def test_p95_counts_hedge_losers_as_at_least_their_wait() -> None:
    stats = registry()
    for _ in range(20):
        stats.observe_ttft("d", 100)
    assert stats.p95_ttft_ms(dep()) == pytest.approx(100)
    for _ in range(3):  # three hedge losers gave up after 2 s without a first token
        stats.observe_censored("d", 2000)
    assert stats.p95_ttft_ms(dep()) >= 2000


def test_p95_forgets_old_samples_and_goes_back_to_the_prior() -> None:
    clock = Clock()
    stats = registry(clock, half_life_s=10.0)
    for _ in range(50):
        stats.observe_ttft("d", 5000)
    clock.now = 60.0  # six half-lives later the old 5 s weigh under 2% of the news
    for _ in range(50):
        stats.observe_ttft("d", 100)
    assert stats.p95_ttft_ms(dep()) == pytest.approx(100)
    clock.now = 660.0  # sixty half-lives without news: the prior's 2 x 500 ms again
    assert stats.p95_ttft_ms(dep()) == pytest.approx(1000)


def test_p95_is_scaled_to_the_load_a_request_meets_now() -> None:
    stats = registry()
    for _ in range(20):
        stats.observe_ttft("d", 100)
    idle = stats.p95_ttft_ms(dep())
    for _ in range(4):
        stats.attempt_started("d")
    assert stats.p95_ttft_ms(dep()) == pytest.approx(idle * stats.load_factor("d", 4))


def _growth_over(stats: StatsRegistry, clock: Clock, deployment_id: str, attempts: int
                 ) -> int:
    """Bytes the process kept after `attempts` more attempts (one a second) on one
    deployment, each started and ended as the serving pipeline does."""
    import tracemalloc

    def run(n: int) -> None:
        for _ in range(n):
            clock.now += 1.0
            stats.attempt_started(deployment_id, 500, 100)
            stats.observe_ttft(deployment_id, 100.0)
            stats.observe_outcome(deployment_id, None)
            stats.attempt_ended(deployment_id)

    run(200)  # warm: every structure has its steady size
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run(attempts)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


@pytest.mark.parametrize("limits", [{}, {"rpm": 100, "tpm": 100_000}])
def test_memory_does_not_grow_with_the_requests_served(limits: dict[str, int]) -> None:
    # Each attempt was appended to the `rpm` and `tpm` windows whether or not the
    # deployment had such a limit, and only a limit's check pruned them: a server kept a
    # float and a tuple per request for ever. Without a limit nothing is kept; with one,
    # the last minute (at one attempt a second: 60 entries), pruned as attempts start.
    import dataclasses

    clock = Clock()
    stats = registry(clock)
    stats.know(dataclasses.replace(dep(), **limits))
    # Bounded structures may fill in (a histogram's 160 bins get their own floats once
    # rescaled: ~40 KB in all); a leak of ~12 bytes a request or more fails.
    assert _growth_over(stats, clock, "d", 20_000) < 250_000  # the leak kept ~2.5 MB
