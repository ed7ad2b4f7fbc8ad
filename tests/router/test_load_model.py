"""Load sensitivity learnt per deployment (router/routing/load_model.py), on a hand-driven
clock and seeded draws: it converges to the slope a simulated deployment really has, keeps
the config prior without evidence or without spread in the loads seen, falls below it only
as far as strong evidence of a flat deployment rules it out, decays back to it by age, and
is what the statistics and the policy scale by. No assertion depends on real time."""

from __future__ import annotations

import math
import random

import pytest

from router.config import Deployment, LatencyPrior, Price
from router.routing.constraints import RouteConstraints
from router.routing.load_model import MAX_SLOPE, LoadModel
from router.routing.policy import choose_route
from router.routing.settings import RoutingConfig
from router.routing.stats import StatsRegistry

PRIOR = 0.05
HALF_LIFE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sweep(model: LoadModel, slope: float, n: int, seed: int = 7, base: float = 200.0,
          loads: range = range(9), t0: float = 0.0, step: float = 0.1) -> float:
    """`n` first tokens of a deployment `slope` slower per request in flight (lognormal
    spread 0.25), sent beside a random walk of loads: returns the clock at the end."""
    rng = random.Random(seed)
    k, now = loads.start, t0
    for _ in range(n):
        k = min(loads.stop - 1, max(loads.start, k + rng.choice((-1, 0, 1))))
        now += step
        model.observe(base * (1 + slope * k) * math.exp(0.25 * rng.gauss(0, 1)), k, now)
    return now


@pytest.mark.parametrize("slope", [0.0, 0.15, 0.5, 1.0])
def test_the_slope_converges_to_the_simulated_one(slope: float) -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0)
    now = sweep(model, slope, 3000)
    assert model.slope(now) == pytest.approx(slope, rel=0.1, abs=0.02)


def test_a_flat_deployment_falls_below_the_prior_as_the_evidence_grows() -> None:
    # Load-insensitive TTFTs over loads 0-8: each batch of evidence may only lower the
    # slope read (the upper bound tightens), from the prior toward the truth, 0.
    model = LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0)
    now, read = 0.0, [PRIOR]
    for batch in range(6):
        now = sweep(model, 0.0, 100, seed=batch, t0=now)
        read.append(model.slope(now))
    assert all(0.0 <= r <= PRIOR for r in read)
    assert read[-1] < PRIOR / 2
    assert read[-1] <= read[1]


def test_a_flat_reading_needs_a_spread_of_loads() -> None:
    # As many flat TTFTs, but only at loads 4-5: the line's gradient is barely pinned, so
    # the upper bound stays above what the wide sweep allows.
    wide, narrow = (LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0) for _ in range(2))
    now = sweep(wide, 0.0, 600)
    sweep(narrow, 0.0, 600, loads=range(4, 6))
    assert wide.slope(now) < narrow.slope(now) <= PRIOR


def test_reading_below_the_prior_is_deterministic() -> None:
    a, b = (LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0) for _ in range(2))
    now = sweep(a, 0.0, 800, seed=4)
    assert sweep(b, 0.0, 800, seed=4) == now
    assert a.slope(now) == b.slope(now) < PRIOR


def test_without_evidence_the_prior_stands() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0)
    assert model.slope(0.0) == PRIOR
    model.observe(100.0, 0, 0.1)
    model.observe(400.0, 6, 0.2)  # two points on a steep line are not a fit yet
    assert model.slope(0.2) == PRIOR


def test_without_spread_in_the_loads_the_prior_stands() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0)
    rng = random.Random(3)
    for i in range(2000):  # always sent beside 4 others: nothing says what 3 or 5 would do
        model.observe(300.0 * math.exp(0.25 * rng.gauss(0, 1)), 4, i * 0.1)
    assert model.slope(200.0) == pytest.approx(PRIOR)


def test_the_evidence_decays_by_age_back_to_the_prior() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0)
    now = sweep(model, 0.5, 3000)
    learnt = model.slope(now)
    assert learnt == pytest.approx(0.5, rel=0.1)
    one_later = model.slope(now + HALF_LIFE)
    assert PRIOR < one_later < learnt  # halfway there in weight, not yet the prior
    assert model.slope(now + 20 * HALF_LIFE) == pytest.approx(PRIOR, abs=0.01)


def test_a_change_of_slope_is_followed() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0)
    now = sweep(model, 0.5, 3000)
    now = sweep(model, 0.1, 6000, seed=8, t0=now)  # ten half-lives of the new behaviour
    assert model.slope(now) == pytest.approx(0.1, rel=0.15)


def test_faster_under_load_is_noise_not_a_negative_slope() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0)
    rng = random.Random(5)
    for i in range(2000):
        k = i % 6
        model.observe(400.0 / (1 + 0.3 * k) * math.exp(0.1 * rng.gauss(0, 1)), k, i * 0.1)
    assert model.slope(200.0) == 0.0  # bounded below: never faster for being busy


def test_the_slope_is_bounded() -> None:
    model = LoadModel(PRIOR, HALF_LIFE, 0.0)
    for i in range(2000):  # 11x slower beside one other request
        model.observe(10.0 * (1 + 10 * (i % 4)), i % 4, i * 0.1)
    assert model.slope(200.0) == MAX_SLOPE


# --- in the statistics: learnt from the load each request was SENT under -----------------

def dep(id: str = "d") -> Deployment:
    return Deployment(
        id=id, provider="p", provider_kind="simulated", model="m",
        price=Price(input_per_mtok=1, output_per_mtok=1), context_window=100000,
        max_output_tokens=None, default_max_tokens=100,
        latency_prior=LatencyPrior(ttft_ms=300, tokens_per_s=100), quality=0.5,
        capabilities=frozenset(), options={})


def served_at_loads(stats: StatsRegistry, clock: Clock, dep_id: str, slope: float,
                    n: int = 3000) -> None:
    """Requests sent beside 0..7 others (as counted by `attempt_started`), each answered
    with a TTFT `slope` slower per other one, and ended before the next batch."""
    rng = random.Random(11)
    for _ in range(n // 8):
        sent = [stats.attempt_started(dep_id) for _ in range(8)]
        assert sent == list(range(8))
        for k in sent:
            clock.now += 0.1
            ttft = 200.0 * (1 + slope * k) * math.exp(0.25 * rng.gauss(0, 1))
            stats.observe_ttft(dep_id, ttft, k)
        for _ in sent:
            stats.attempt_ended(dep_id)


def test_the_registry_learns_each_deployments_own_slope() -> None:
    clock = Clock()
    stats = StatsRegistry(RoutingConfig(load_penalty=PRIOR), clock=clock)
    served_at_loads(stats, clock, "steep", 0.5)
    assert stats.load_slope("steep") == pytest.approx(0.5, rel=0.1)
    # The load-free TTFT is learnt with it: ~200 ms, not the loaded mean (~550 ms).
    assert stats.snapshot(dep("steep")).ttft_ms == pytest.approx(200 * math.exp(0.25 ** 2 / 2),
                                                                rel=0.15)
    served_at_loads(stats, clock, "flat", 0.0)
    assert 0.0 <= stats.load_slope("flat") < PRIOR / 2  # 8 loads, 3,000 TTFTs: flat
    assert stats.load_slope("never-seen") == PRIOR


def test_a_ttft_is_unloaded_by_the_count_it_was_sent_under_not_the_count_now() -> None:
    # Sent to an idle deployment; five more requests join before its first token. The
    # first token was served beside none of them: its load-free TTFT is itself.
    stats = StatsRegistry(RoutingConfig(load_penalty=0.2), clock=Clock())
    sent = stats.attempt_started("d")
    for _ in range(5):
        stats.attempt_started("d")
    stats.observe_ttft("d", 300.0, sent)
    assert stats.snapshot(dep()).ttft_ms == pytest.approx(300.0)


def test_a_timed_out_attempt_is_unloaded_by_the_count_it_was_sent_under() -> None:
    # Sent beside two others; it has already left the count when its timeout is recorded.
    stats = StatsRegistry(RoutingConfig(load_penalty=0.25), clock=Clock())
    stats.attempt_started("d")
    stats.attempt_started("d")
    sent = stats.attempt_started("d")
    stats.attempt_ended("d")
    stats.observe_censored("d", 3000.0, sent)
    assert stats.snapshot(dep()).ttft_ms == pytest.approx(3000.0 / 1.5)


def test_a_retried_ttft_does_not_teach_the_slope() -> None:
    clock = Clock()
    stats = StatsRegistry(RoutingConfig(load_penalty=PRIOR), clock=clock)
    for i in range(2000):  # retries' waits, long at high load: not what the load did
        clock.now += 0.1
        stats.observe_ttft("d", 200.0 + 2000.0 * (i % 8), i % 8, retried=True)
    assert stats.load_slope("d") == PRIOR


def test_the_policy_and_the_hedge_delay_scale_by_the_learnt_slope() -> None:
    clock = Clock()
    stats = StatsRegistry(RoutingConfig(load_penalty=PRIOR, explore=0.0), clock=clock)
    served_at_loads(stats, clock, "d", 0.5)
    slope = stats.load_slope("d")
    c = RouteConstraints(("d",), "latency", 100, 100)
    idle = choose_route(c, {"d": dep()}, stats, lambda d: None).candidates[0]
    for _ in range(4):
        stats.attempt_started("d")
    busy = choose_route(c, {"d": dep()}, stats, lambda d: None).candidates[0]
    assert busy.load_slope == slope
    assert busy.ttft_ms == pytest.approx(idle.ttft_ms * (1 + 4 * slope))
    # The budget's quantile is held one request further up once others are in flight.
    assert busy.ttft_q_ms == pytest.approx(idle.ttft_q_ms * (1 + 5 * slope))
    assert stats.describe(dep())["load_slope"] == slope
    idle_p95 = stats.know(dep()).estimator.ttft_quantile(0.95, clock.now, 10.0)
    assert idle_p95 is not None
    assert stats.p95_ttft_ms(dep()) == pytest.approx(idle_p95 * (1 + 4 * slope))


def test_a_level_that_falls_while_the_loads_vary_is_not_a_slope() -> None:
    # What `benchmarks.routing`'s `shift` did to its riser: a flat deployment measured
    # beside 0-1 others while still slow (~700 ms), then probed idle now and then while it
    # sped up to ~300 ms, then served idle. Against one level for all, the slow loaded
    # replies read as a steep slope (0.63), which kept it idle, so nothing refuted it;
    # against a level that moves with time they say nothing about load.
    model = LoadModel(PRIOR, 120.0, 0.0)
    rng = random.Random(2)
    now = 0.0
    for i in range(8):  # the slow spell: half of them sent beside another
        now += 0.5
        model.observe(700.0 * math.exp(0.25 * rng.gauss(0, 1)), i % 2, now)
    for level in (600.0, 450.0, 320.0):  # the ramp down, seen by a probe every 6 s
        now += 6.0
        model.observe(level * math.exp(0.25 * rng.gauss(0, 1)), 0, now)
    for _ in range(60):  # sped up, and from then on served idle
        now += 0.8
        model.observe(300.0 * math.exp(0.25 * rng.gauss(0, 1)), 0, now)
    assert model.slope(now) <= PRIOR + 0.05


def test_a_level_that_drifts_does_not_hide_a_real_slope() -> None:
    # A deployment 0.5 slower per request in flight whose level doubles over the sweep:
    # compared within windows, the drift is not load, and the slope stays what the loads show.
    model = LoadModel(PRIOR, HALF_LIFE, 0.0, max_weight=1000.0)
    rng = random.Random(9)
    k, now = 0, 0.0
    for i in range(3000):
        k = min(8, max(0, k + rng.choice((-1, 0, 1))))
        now += 0.1
        level = 200.0 * (1 + i / 3000)
        model.observe(level * (1 + 0.5 * k) * math.exp(0.25 * rng.gauss(0, 1)), k, now)
    assert model.slope(now) == pytest.approx(0.5, rel=0.1)
