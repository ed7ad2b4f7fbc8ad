"""The estimator learns on a hand-driven clock: decay by age, quantiles of a known
distribution, censored observations, reversion to the prior, the decayed error rate."""

from __future__ import annotations

import random

import pytest

from router.routing.decayed import DecayedHistogram, DecayedMean
from router.routing.estimator import (
    Estimator,
    Prior,
    budget_level,
)

PRIOR = Prior(ttft_ms=500.0, ms_per_token=10.0, error_rate=0.01)


def test_an_observation_weighs_half_after_one_half_life() -> None:
    h = DecayedHistogram(half_life_s=10.0, now=0.0)
    h.add(100.0, now=0.0)
    assert h.weight(0.0) == pytest.approx(1.0)
    assert h.weight(10.0) == pytest.approx(0.5)
    assert h.weight(30.0) == pytest.approx(0.125)
    m = DecayedMean(half_life_s=10.0, now=0.0)
    m.add(100.0, 0.0)
    m.add(400.0, 10.0)  # the first now weighs half: (50 + 400) / 1.5
    assert m.mean() == pytest.approx(300.0)


def test_decay_survives_long_runs_without_overflow() -> None:
    h = DecayedHistogram(half_life_s=1.0, now=0.0)
    for t in range(0, 5000, 10):
        h.add(200.0, now=float(t))
    assert h.quantile(0.5) == pytest.approx(200.0)
    assert h.weight(4990.0) == pytest.approx(1 / (1 - 2 ** -10), rel=1e-6)


def test_the_weight_cap_makes_a_busy_estimate_follow_a_change() -> None:
    h = DecayedHistogram(half_life_s=1e9, now=0.0, max_weight=20.0)
    for _ in range(1000):
        h.add(100.0, 0.0)
    for _ in range(60):
        h.add(1000.0, 0.0)
    assert h.weight(0.0) == pytest.approx(20.0)
    assert h.quantile(0.5) == pytest.approx(1000.0)  # 1000 samples of 100 did not freeze it


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_quantiles_of_a_lognormal_within_the_bin_width(q: float) -> None:
    rng = random.Random(1)
    samples = sorted(rng.lognormvariate(5.0, 0.6) for _ in range(20000))
    h = DecayedHistogram(half_life_s=1e9, now=0.0)
    for x in samples:
        h.add(x, 0.0)
    exact = samples[int(q * len(samples))]
    got = h.quantile(q)
    assert got is not None
    assert got == pytest.approx(exact, rel=0.06)  # bins are 10% wide; each reports its mean


def test_one_sample_is_its_own_quantile() -> None:
    h = DecayedHistogram(half_life_s=10.0, now=0.0)
    h.add(80.0, 0.0)
    assert h.quantile(0.9) == 80.0 and h.mean() == 80.0


def test_a_censored_observation_moves_mass_above_its_bound() -> None:
    h = DecayedHistogram(half_life_s=1e9, now=0.0)
    for x in (100.0, 200.0, 1000.0, 2000.0):
        h.add(x, 0.0)
    # "At least 500 ms": its weight goes to 1000 and 2000 in proportion, none below.
    h.add_censored(500.0, 0.0)
    assert h.weight(0.0) == pytest.approx(5.0)
    assert h.quantile(0.4) == pytest.approx(200.0)
    assert h.quantile(0.41) == pytest.approx(1000.0)  # 2.5 of 5 at or below 1000
    assert h.quantile(0.7) == pytest.approx(1000.0)


def test_a_censored_observation_beyond_everything_counts_at_its_bound() -> None:
    h = DecayedHistogram(half_life_s=1e9, now=0.0)
    h.add(100.0, 0.0)
    h.add_censored(3000.0, 0.0)
    assert h.quantile(0.9) == pytest.approx(3000.0)


def test_hedge_losers_recorded_as_censored_raise_the_tail() -> None:
    fast_only, censored = (Estimator(PRIOR, 60.0, 0.0) for _ in range(2))
    for est in (fast_only, censored):
        for _ in range(18):
            est.observe_ttft(100.0, 0.0)
    censored.observe_censored(2000.0, 0.0)
    censored.observe_censored(2000.0, 0.0)
    assert fast_only.snapshot(0.0, 0.9).ttft_q_ms == pytest.approx(100.0)
    assert censored.snapshot(0.0, 0.95).ttft_q_ms >= 2000.0
    assert censored.snapshot(0.0, 0.9).samples == 20


def test_priors_before_any_observation() -> None:
    s = Estimator(PRIOR, 60.0, 0.0).snapshot(0.0, 0.9)
    assert (s.ttft_ms, s.ttft_q_ms, s.ms_per_token) == (500.0, 500.0, 10.0)
    assert s.error_rate == pytest.approx(0.01)
    assert (s.weight, s.samples, s.age_s) == (0.0, 0, None)


def test_a_stale_estimate_reverts_to_its_prior() -> None:
    est = Estimator(PRIOR, 10.0, 0.0)
    for _ in range(5):
        est.observe_ttft(2000.0, 0.0)
    assert est.snapshot(0.0, 0.9).ttft_ms == pytest.approx(2000.0)
    later = [est.snapshot(t, 0.9).ttft_ms for t in (10.0, 30.0, 60.0, 200.0)]
    assert later == sorted(later, reverse=True)  # drifts back, never freezes
    assert later[-1] == pytest.approx(500.0, abs=1.0)
    # The budget quantile keeps bad news far longer (the long horizon, 16 half-lives),
    # then reverts to the prior too.
    assert est.snapshot(200.0, 0.9).ttft_q_ms == pytest.approx(2000.0)
    budget_later = [est.snapshot(t, 0.9).ttft_q_ms for t in (200.0, 500.0, 700.0, 3000.0)]
    assert budget_later == sorted(budget_later, reverse=True)
    assert budget_later[-1] == pytest.approx(500.0, abs=1.0)


def test_a_stale_budget_quantile_reverts_to_what_was_last_seen_not_to_the_prior() -> None:
    # Fast for a long while (and its config prior says fast), then slow; then unchosen.
    est = Estimator(PRIOR, 10.0, 0.0, max_weight=20.0)
    for i in range(600):
        est.started(i / 10)
        est.observe_ttft(200.0, i / 10)
    for i in range(600, 640):
        est.started(i / 10)
        est.observe_ttft(2000.0, i / 10)
    assert est.snapshot(64.0, 0.9, 1.0).ttft_q_ms >= 2000.0
    # Twenty half-lives later the recent evidence weighs nothing; the budget quantile is
    # the long horizon's (the last ~max_weight samples), not the prior's 500.
    stale = est.snapshot(264.0, 0.9, 1.0)
    assert stale.weight < 1e-6
    assert stale.ttft_q_ms == pytest.approx(2000.0, rel=0.01)
    assert est.snapshot(3000.0, 0.9, 1.0).ttft_q_ms == pytest.approx(500.0, abs=1.0)


def test_ageing_alone_does_not_widen_the_budget_allowance() -> None:
    # 5 slow of 20 (25%): over a p90 budget on the evidence. Three half-lives later the
    # samples are older, not fewer: still excluded (a budget probe's news re-admits it).
    est = Estimator(PRIOR, 10.0, 0.0)
    for i in range(20):
        est.observe_ttft(3000.0 if i < 5 else 300.0, 0.0)
    assert est.snapshot(0.0, 0.9, 1.0).ttft_q_ms == pytest.approx(3000.0)
    aged = est.snapshot(30.0, 0.9, 1.0)
    assert aged.weight < 3.0 and aged.ttft_q_ms == pytest.approx(3000.0)
    assert aged.level == pytest.approx(budget_level(0.9, 20.0, 1.0))


def test_the_effective_sample_count_ignores_age_and_counts_unequal_weights() -> None:
    h = DecayedHistogram(10.0, 0.0)
    for _ in range(4):
        h.add(100.0, 0.0)
    assert h.effective_samples() == pytest.approx(4.0)
    h.add(100.0, 10.0)  # the four now weigh half a fresh sample each: (2 + 1)^2 / (1 + 1)
    assert h.effective_samples() == pytest.approx(4.5)
    h.weight(1000.0)  # reading later changes nothing
    assert h.effective_samples() == pytest.approx(4.5)


def test_the_error_rate_is_decayed_and_shapes_the_budget_quantile() -> None:
    est = Estimator(PRIOR, 10.0, 0.0)
    for i in range(20):
        est.observe_outcome(failed=i % 2 == 0, now=0.0, duration_ms=300.0)
        est.observe_ttft(200.0, 0.0)
    s = est.snapshot(0.0, 0.9)
    assert s.error_rate == pytest.approx((10 + 0.02) / 22)
    assert s.failure_ms == pytest.approx(300.0)
    # A quarter of requests leave after a failed retry: no success rate meets p90.
    assert s.ttft_q_ms > 200.0
    assert est.snapshot(100.0, 0.9).error_rate == pytest.approx(0.01, abs=0.01)


def test_decode_time_per_token() -> None:
    est = Estimator(PRIOR, 10.0, 0.0)
    est.observe_decode(2.0, 0.0)
    s = est.snapshot(0.0, 0.9)
    assert s.latency_ms(100) == pytest.approx(500.0 + 200.0)


# --- budgets read on evidence, drift, drain ------------------------------------------------


def test_the_budget_allowance_shrinks_with_evidence() -> None:
    assert budget_level(0.9, 50.0, 0.0) == 0.9  # no allowance asked
    assert budget_level(0.9, 0.0, 1.0) == 0.9  # no evidence: the prior at the level asked
    levels = [budget_level(0.9, w, 1.0) for w in (1.0, 4.0, 20.0, 100.0, 1e6)]
    assert levels == sorted(levels) and levels[0] == pytest.approx(0.6)
    assert levels[-1] == pytest.approx(0.9, abs=1e-3)  # well measured: the real quantile
    assert budget_level(0.9, 20.0, 2.0) < budget_level(0.9, 20.0, 1.0)


def _with_tail(slow: int, n: int = 20) -> Estimator:
    est = Estimator(PRIOR, 1e9, 0.0)
    for i in range(n):
        est.started(0.0)
        est.observe_ttft(3000.0 if i < slow else 300.0, 0.0)
    return est


def test_a_tail_within_the_noise_of_few_samples_does_not_exclude() -> None:
    # 3 slow of 20 (15%) is within one standard error (6.7%) of a true 10% tail: a p90
    # budget reads the body; at 5 of 20 (25%) the evidence says the tail is too big.
    assert _with_tail(3).snapshot(0.0, 0.9, 1.0).ttft_q_ms == pytest.approx(300.0)
    assert _with_tail(3).snapshot(0.0, 0.9, 0.0).ttft_q_ms == pytest.approx(3000.0)
    assert _with_tail(5).snapshot(0.0, 0.9, 1.0).ttft_q_ms == pytest.approx(3000.0)


def test_a_drift_moves_the_budget_quantile_within_max_weight_requests() -> None:
    est = Estimator(PRIOR, 1e9, 0.0, max_weight=20.0)
    for _ in range(500):  # a long steady histoy at 300 ms...
        est.started(0.0)
        est.observe_ttft(300.0, 0.0)
    steady = est.snapshot(0.0, 0.9, 1.0).ttft_q_ms
    for _ in range(20):  # ...then 20 requests at 900 ms: 4% of the histogram's evidence
        est.started(0.0)
        est.observe_ttft(900.0, 0.0)
    assert steady == pytest.approx(300.0)
    # The histogram alone still reads 300 ms; the recent mean (~670 ms) moved it.
    assert est.snapshot(0.0, 0.9, 1.0).ttft_q_ms > 1.8 * steady


def test_answers_arriving_after_traffic_stopped_do_not_displace_earlier_ones() -> None:
    # 20 requests sent; the fast answers came first, the slow ones after the last send.
    drained, capped_on_answer = Estimator(PRIOR, 1e9, 0.0, 4.0), DecayedMean(1e9, 0.0, 4.0)
    for _ in range(20):
        drained.started(0.0)
    for ms in [300.0] * 16 + [3000.0] * 4:
        drained.observe_ttft(ms, 0.0)
        capped_on_answer.add(ms, 0.0)
        capped_on_answer.trim(0.0)
    assert drained.snapshot(0.0, 0.9).ttft_ms == pytest.approx((16 * 300 + 4 * 3000) / 20)
    assert capped_on_answer.mean() > 1500.0  # capped as they answer: the slow ones dominate


def test_the_kept_mean_and_spread_equal_a_pass_over_the_bins() -> None:
    # The mean and spread are kept as observations land, not summed over the bins on each
    # read: after adds, censored adds, rescaling (50 half-lives quiet) and the weight cap
    # they must equal their definition, each bin taken at its mean.
    rng = random.Random(11)
    h = DecayedHistogram(half_life_s=1.0, now=0.0, max_weight=20.0)
    now = 0.0
    for _ in range(3000):
        now += rng.choice([0.01, 0.1, 1.0, 50.0])
        value = rng.lognormvariate(6.0, 0.8)
        (h.add if rng.random() < 0.8 else h.add_censored)(value, now)
        bins = [(w, t) for w, t in zip(h._weight, h._total, strict=True) if w > 0.0]
        total_weight = sum(w for w, _ in bins)
        mean = sum(t for _, t in bins) / total_weight
        second = sum(t * t / w for w, t in bins) / total_weight
        assert h.mean() == pytest.approx(mean, rel=1e-9)
        assert h.std() == pytest.approx(max(0.0, second - mean * mean) ** 0.5, rel=1e-6,
                                        abs=1e-6 * mean)
