"""Budget probes (issue 12): a probe backs off only when its answer finds the deployment
still over the budget, and a backed-off rate recovers with time. Injected clock, seeded
draws."""

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
