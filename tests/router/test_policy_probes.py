"""Budget probes and stale estimates (issue 12): a probe backs off only when its answer
finds the deployment still over the budget, and a deployment whose estimate is old news
takes one request at a time until it answers. Injected clock, seeded draws."""

from __future__ import annotations

import pytest

from tests.router.test_policy import FLEET, TTFT, available, constraints, learning


def probe_share(answer_ms: float, n: int = 4000, explore: float = 0.2) -> float:
    """The share of n requests that probed `budget` (its prior, 2000 ms, is over
    max_ttft_ms 1000) when every probe's first token comes after `answer_ms`. The clock
    moves 1,000 s per request: what a probe found has faded back to the prior by the next
    draw, so only the probes' back-off decides how often it is probed (its recovery with
    time is set too slow to matter here)."""
    policy, clock = learning(explore=explore, seed=4, budget_probe_recovery=1e9)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    probes = 0
    for _ in range(n):
        decision = policy.choose(c, FLEET, available)
        assert decision.chosen is not None
        dep = decision.chosen.deployment.id
        probes += dep == "budget"
        policy.stats.observe_ttft(dep, answer_ms if dep == "budget" else TTFT[dep])
        clock.now += 1000.0
    return probes / n


def test_a_probe_answered_within_the_budget_does_not_back_off_the_next() -> None:
    # Each probe finds `budget` within 1000 ms: none of them halves the rate.
    assert probe_share(answer_ms=900.0) == pytest.approx(0.2, abs=0.02)


def test_a_probe_answered_over_the_budget_backs_off_the_next() -> None:
    # The same draws, every probe over: down to explore / 2**budget_probe_halvings.
    assert probe_share(answer_ms=2500.0) == pytest.approx(0.2 / 16, abs=0.004)


def test_a_deployment_heard_from_long_ago_takes_one_request_at_a_time() -> None:
    # `budget` is the cheapest and well measured, then silent for two half-lives: its
    # estimate still stands (more than one fresh sample's weight), but it is old news.
    # A first request goes there; while it is out, the others go to the next cheapest,
    # not all of them to a deployment that may have changed since.
    policy, clock = learning(explore=0.0, seed=1)
    c = constraints(prefer="cost", output_tokens=10, input_tokens=100)
    for _ in range(50):
        policy.stats.observe_ttft("budget", 300.0)
    clock.now += 2 * policy.cfg.half_life_s
    first = policy.choose(c, FLEET, available)
    assert first.chosen is not None and first.chosen.deployment.id == "budget"
    assert first.chosen.weight > 1.0
    policy.stats.attempt_started("budget")
    during = [policy.choose(c, FLEET, available).chosen for _ in range(5)]
    assert {e.deployment.id for e in during if e is not None} == {"fast"}
    clock.now += 0.3
    policy.stats.observe_ttft("budget", 300.0)  # its answer: news again
    policy.stats.attempt_ended("budget")
    policy.stats.attempt_started("budget")
    again = policy.choose(c, FLEET, available)
    assert again.chosen is not None and again.chosen.deployment.id == "budget"


def test_a_busy_deployment_is_not_held_to_one_request_at_a_time() -> None:
    policy, clock = learning(explore=0.0, seed=1)
    c = constraints(prefer="cost", output_tokens=10, input_tokens=100)
    for _ in range(50):
        policy.stats.observe_ttft("budget", 300.0)
    for _ in range(5):
        policy.stats.attempt_started("budget")
    clock.now += 1.0
    chosen = policy.choose(c, FLEET, available).chosen
    assert chosen is not None and chosen.deployment.id == "budget"


def test_a_backed_off_probe_rate_recovers_with_time() -> None:
    # `budget` is as slow as its prior: its probes back off. Then nothing is probed for
    # budget_probe_halvings * budget_probe_recovery half-lives: the rate is full again,
    # so a deployment that changes after its probes stopped is found within minutes.
    explore = 0.2
    policy, clock = learning(explore=explore, seed=4)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    for _ in range(400):
        dep = policy.choose(c, FLEET, available).chosen.deployment.id  # type: ignore[union-attr]
        policy.stats.observe_ttft(dep, 2500.0 if dep == "budget" else TTFT[dep])
        clock.now += 1.0
    clock.now += policy.cfg.half_life_s * 2  # its probes' evidence fades below 3 samples

    def rate_now(n: int = 2000) -> float:
        # The clock stands still and no probe answers: each draw meets the same rate.
        return sum(policy.choose(c, FLEET, available).chosen.deployment.id  # type: ignore[union-attr]
                   == "budget" for _ in range(n)) / n

    backed_off = rate_now()
    assert 0 < backed_off < explore / 4
    cfg = policy.cfg
    clock.now += cfg.half_life_s * cfg.budget_probe_recovery * cfg.budget_probe_halvings
    assert rate_now() == pytest.approx(explore, abs=0.025)
