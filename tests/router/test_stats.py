"""Live statistics: decayed averages of TTFT and output rate, priors until observed, and
the recent-TTFT percentile used for hedging."""

from __future__ import annotations

import pytest

from router.config import Deployment, LatencyPrior, Price
from router.routing.stats import DECAY, WINDOW, StatsRegistry


def dep(id: str = "d", ttft: float = 500, rate: float = 100) -> Deployment:
    return Deployment(
        id=id, provider="p", provider_kind="simulated", model="m",
        price=Price(input_per_mtok=1, output_per_mtok=1), context_window=1000,
        max_output_tokens=None, default_max_tokens=100,
        latency_prior=LatencyPrior(ttft_ms=ttft, tokens_per_s=rate), quality=0.5,
        capabilities=frozenset(), options={})


def test_priors_until_observed() -> None:
    stats = StatsRegistry()
    d = dep()
    assert stats.estimate_ttft_ms(d) == 500
    assert stats.estimate_tokens_per_s(d) == 100


def test_first_observation_replaces_the_prior() -> None:
    stats = StatsRegistry()
    d = dep()
    stats.observe_ttft("d", 40)
    stats.observe_rate("d", 900)
    assert stats.estimate_ttft_ms(d) == 40
    assert stats.estimate_tokens_per_s(d) == 900


def test_later_observations_move_the_average_by_the_decay() -> None:
    stats = StatsRegistry()
    d = dep()
    stats.observe_ttft("d", 100)
    stats.observe_ttft("d", 200)
    assert stats.estimate_ttft_ms(d) == pytest.approx(100 + DECAY * 100)
    stats.observe_rate("d", 50)
    stats.observe_rate("d", 150)
    assert stats.estimate_tokens_per_s(d) == pytest.approx(50 + DECAY * 100)


def test_average_converges_to_a_new_steady_level() -> None:
    stats = StatsRegistry()
    d = dep()
    stats.observe_ttft("d", 1000)
    for _ in range(40):
        stats.observe_ttft("d", 100)
    assert stats.estimate_ttft_ms(d) == pytest.approx(100, abs=1)


def test_ttft_and_rate_are_independent() -> None:
    stats = StatsRegistry()
    d = dep()
    stats.observe_ttft("d", 10)
    assert stats.estimate_tokens_per_s(d) == 100  # still the prior


def test_deployments_are_tracked_separately() -> None:
    stats = StatsRegistry()
    stats.observe_ttft("a", 10)
    assert stats.estimate_ttft_ms(dep("a")) == 10
    assert stats.estimate_ttft_ms(dep("b")) == 500


def test_outcomes_count_requests_and_failures() -> None:
    stats = StatsRegistry()
    stats.observe_outcome("d", None)
    stats.observe_outcome("d", "timeout")
    stats.observe_outcome("d", None)
    s = stats.get("d")
    assert (s.requests, s.failures, s.last_error) == (3, 1, "timeout")


def test_p95_is_twice_the_estimate_before_enough_samples() -> None:
    stats = StatsRegistry()
    d = dep()
    assert stats.p95_ttft_ms(d) == 1000
    for _ in range(19):
        stats.observe_ttft("d", 100)
    assert stats.p95_ttft_ms(d) == pytest.approx(2 * stats.estimate_ttft_ms(d))


def test_p95_of_recent_samples() -> None:
    stats = StatsRegistry()
    for ms in range(1, 101):  # 1..100 ms
        stats.observe_ttft("d", float(ms))
    assert stats.p95_ttft_ms(dep()) == 96


def test_p95_forgets_samples_outside_the_window() -> None:
    stats = StatsRegistry()
    for _ in range(WINDOW):
        stats.observe_ttft("d", 5000)
    for _ in range(WINDOW):
        stats.observe_ttft("d", 100)
    assert stats.p95_ttft_ms(dep()) == 100
