"""Routing decisions, table-driven: budgets and `prefer` against a fleet whose estimates are
worked out by hand below; every exclusion carries its reason; live statistics override
the priors once observed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from providers.base import QuotaDelta
from router.config import Deployment, LatencyPrior, Price
from router.routing.policy import RouteConstraints, choose_route
from router.routing.stats import StatsRegistry


def dep(id: str, price: tuple[float, float], prior: tuple[float, float], quality: float,
        context: int, caps: tuple[str, ...]) -> Deployment:
    return Deployment(
        id=id, provider="p", provider_kind="simulated", model=f"{id}-model",
        price=Price(input_per_mtok=price[0], output_per_mtok=price[1]),
        context_window=context, max_output_tokens=None, default_max_tokens=1024,
        latency_prior=LatencyPrior(ttft_ms=prior[0], tokens_per_s=prior[1]),
        quality=quality, capabilities=frozenset(caps), options={})


# For 1,000 input and 500 output tokens (latency = ttft + 500 / tokens_per_s):
#   id       cost $     ttft ms  latency ms   quality  context  capabilities
#   fast     0.0003       120      1370        0.55     32768   tools
#   mid      0.0024       350      4516.7      0.75    128000   tools, prefill
#   strong   0.0105       900     10900        0.92    200000   tools, reasoning
#   budget   0.0001      2000     18666.7      0.40      8192   -
FLEET = {d.id: d for d in (
    dep("fast", (0.10, 0.40), (120, 400), 0.55, 32768, ("tools",)),
    dep("mid", (0.80, 3.20), (350, 120), 0.75, 128000, ("tools", "prefill")),
    dep("strong", (3.00, 15.00), (900, 50), 0.92, 200000, ("tools", "reasoning")),
    dep("budget", (0.05, 0.10), (2000, 30), 0.40, 8192, ()),
)}
ALL = ("fast", "mid", "strong", "budget")


def constraints(**kw: Any) -> RouteConstraints:
    base: dict[str, Any] = {"candidates": ALL, "prefer": "balanced", "input_tokens": 1000,
                            "output_tokens": 500}
    return RouteConstraints(**{**base, **kw})


def FROZEN() -> float:
    return 0.0


def available(d: Deployment) -> str | None:
    return None


def route(c: RouteConstraints, stats: StatsRegistry | None = None,
          unavailable: Any = available) -> Any:
    return choose_route(c, FLEET, stats or StatsRegistry(clock=FROZEN), unavailable)


def ranked_ids(decision: Any) -> list[str]:
    return [e.deployment.id for e in decision.ranked]


def reasons(decision: Any) -> dict[str, str | None]:
    return {e.deployment.id: e.reason for e in decision.candidates}


# (constraints, expected ranking, expected exclusions {id: reason})
TABLE: list[tuple[str, dict[str, Any], list[str], dict[str, str]]] = [
    ("cost", {"prefer": "cost"}, ["budget", "fast", "mid", "strong"], {}),
    ("latency", {"prefer": "latency"}, ["fast", "mid", "strong", "budget"], {}),
    ("quality", {"prefer": "quality"}, ["strong", "mid", "fast", "budget"], {}),
    # balanced = 0.5 quality + 0.25 relative cheapness + 0.25 relative speed:
    # mid .757 > fast .750 > strong .564 > budget .448
    ("balanced", {"prefer": "balanced"}, ["mid", "fast", "strong", "budget"], {}),
    ("max_ttft_ms", {"prefer": "cost", "max_ttft_ms": 500}, ["fast", "mid"], {
        "strong": "max_ttft_ms: estimated 900 ms > 500 ms",
        "budget": "max_ttft_ms: estimated 2000 ms > 500 ms"}),
    ("max_ttft_ms is inclusive", {"prefer": "quality", "max_ttft_ms": 900},
     ["strong", "mid", "fast"], {"budget": "max_ttft_ms: estimated 2000 ms > 900 ms"}),
    ("max_latency_ms", {"prefer": "quality", "max_latency_ms": 5000}, ["mid", "fast"], {
        "strong": "max_latency_ms: estimated 10900 ms > 5000 ms",
        "budget": "max_latency_ms: estimated 18667 ms > 5000 ms"}),
    ("max_latency_ms counts the output", {"prefer": "cost", "max_latency_ms": 1200,
                                          "output_tokens": 100},
     ["fast", "mid"], {"strong": "max_latency_ms: estimated 2900 ms > 1200 ms",
                       "budget": "max_latency_ms: estimated 5333 ms > 1200 ms"}),
    ("max_cost_usd", {"prefer": "quality", "max_cost_usd": 0.001}, ["fast", "budget"], {
        "mid": "max_cost_usd: estimated $0.0024 > $0.001",
        "strong": "max_cost_usd: estimated $0.0105 > $0.001"}),
    ("max_cost_usd and prefer latency", {"prefer": "latency", "max_cost_usd": 0.003},
     ["fast", "mid", "budget"], {"strong": "max_cost_usd: estimated $0.0105 > $0.003"}),
    ("all budgets at once", {"prefer": "balanced", "max_ttft_ms": 1000,
                             "max_latency_ms": 5000, "max_cost_usd": 0.002},
     ["fast"], {"mid": "max_cost_usd: estimated $0.0024 > $0.002",
                "strong": "max_latency_ms: estimated 10900 ms > 5000 ms",
                "budget": "max_ttft_ms: estimated 2000 ms > 1000 ms"}),
    ("context window", {"prefer": "cost", "input_tokens": 10000},
     ["fast", "mid", "strong"],
     {"budget": "context_window: ~10000 input + 500 output tokens > 8192"}),
    ("context window counts the output", {"prefer": "cost", "input_tokens": 32000,
                                          "output_tokens": 1000},
     ["mid", "strong"],
     {"fast": "context_window: ~32000 input + 1000 output tokens > 32768",
      "budget": "context_window: ~32000 input + 1000 output tokens > 8192"}),
    ("requires tools", {"prefer": "cost", "requires": frozenset({"tools"})},
     ["fast", "mid", "strong"], {"budget": "capability: lacks tools"}),
    ("requires tools and reasoning", {"prefer": "cost",
                                      "requires": frozenset({"tools", "reasoning"})},
     ["strong"], {"fast": "capability: lacks reasoning", "mid": "capability: lacks reasoning",
                  "budget": "capability: lacks reasoning, tools"}),
    ("capability is checked before budgets", {"prefer": "cost", "max_ttft_ms": 500,
                                              "requires": frozenset({"tools"})},
     ["fast", "mid"], {"strong": "max_ttft_ms: estimated 900 ms > 500 ms",
                       "budget": "capability: lacks tools"}),
    ("task candidates only", {"prefer": "cost", "candidates": ("strong", "mid")},
     ["mid", "strong"], {}),
]


@pytest.mark.parametrize(("overrides", "ranking", "excluded"),
                         [pytest.param(*row[1:], id=row[0]) for row in TABLE])
def test_routing_table(overrides: dict[str, Any], ranking: list[str],
                       excluded: dict[str, str]) -> None:
    c = constraints(**overrides)
    decision = route(c)
    assert ranked_ids(decision) == ranking
    assert [e.deployment.id for e in decision.candidates] == list(c.candidates)
    expected_reasons = {d: excluded.get(d) for d in c.candidates}
    assert reasons(decision) == expected_reasons
    assert all(e.eligible == (e.reason is None) for e in decision.candidates)
    assert decision.chosen is decision.ranked[0]


@pytest.mark.parametrize(("prefer", "why"), [
    ("cost", "lowest estimated cost (prefer=cost) of 4 eligible"),
    ("latency", "lowest estimated latency (prefer=latency) of 4 eligible"),
    ("quality", "highest quality (prefer=quality) of 4 eligible"),
    ("balanced", "best balance of quality, cost and latency (prefer=balanced) of 4 eligible"),
])
def test_the_decision_says_why(prefer: str, why: str) -> None:
    assert route(constraints(prefer=prefer)).reason == why


def test_estimates_are_the_priors_and_prices() -> None:
    estimates = {e.deployment.id: e for e in route(constraints()).candidates}
    mid = estimates["mid"]
    assert mid.ttft_ms == 350
    assert mid.latency_ms == pytest.approx(350 + 500 / 120 * 1000)
    assert mid.cost_usd == pytest.approx((1000 * 0.80 + 500 * 3.20) / 1e6)
    assert estimates["budget"].cost_usd == pytest.approx(0.0001)


def test_an_excluded_candidate_still_carries_its_estimates() -> None:
    strong = next(e for e in route(constraints(max_ttft_ms=100)).candidates
                  if e.deployment.id == "strong")
    assert not strong.eligible
    assert (strong.ttft_ms, strong.latency_ms) == (900, 10900)
    assert strong.cost_usd == pytest.approx(0.0105)


def test_unavailable_deployments_are_excluded_first_with_their_reason() -> None:
    def breaker(d: Deployment) -> str | None:
        return "circuit_open" if d.id in ("fast", "budget") else None

    # budget also lacks tools, but unavailability is what the user needs to see.
    decision = route(constraints(prefer="latency", requires=frozenset({"tools"})),
                     unavailable=breaker)
    assert ranked_ids(decision) == ["mid", "strong"]
    assert reasons(decision)["fast"] == "circuit_open"
    assert reasons(decision)["budget"] == "circuit_open"


def test_no_eligible_candidate_explains_each_exclusion() -> None:
    decision = route(constraints(max_cost_usd=0.00005, max_ttft_ms=1000,
                                 requires=frozenset({"tools"})))
    assert decision.chosen is None and decision.ranked == [] and decision.backups == []
    assert decision.reason == "no eligible candidate"
    assert decision.explain_exclusions() == (
        "fast: max_cost_usd: estimated $0.0003 > $5e-05; "
        "mid: max_cost_usd: estimated $0.0024 > $5e-05; "
        "strong: max_cost_usd: estimated $0.0105 > $5e-05; "
        "budget: capability: lacks tools")


def test_when_every_candidate_is_over_a_latency_budget_the_fastest_serves() -> None:
    # A latency budget chooses, it does not refuse: `budget` is over max_ttft_ms alone
    # (the others are over the cost cap), so it serves, a late answer rather than none;
    # with the cap lifted, every candidate is over the budget and the fastest serves.
    decision = route(constraints(max_cost_usd=0.0002, max_ttft_ms=1000))
    assert ranked_ids(decision) == ["budget"]
    assert decision.reason == "none within the latency budget: fastest expected of 1 over it"
    assert reasons(decision)["budget"] == "max_ttft_ms: estimated 2000 ms > 1000 ms"
    decision = route(constraints(prefer="cost", max_ttft_ms=50))
    assert ranked_ids(decision) == ["fast", "mid", "strong", "budget"]


def test_pinned_model_is_the_only_candidate() -> None:
    decision = route(constraints(candidates=("strong",), pinned=True, prefer="cost"))
    assert ranked_ids(decision) == ["strong"]
    assert decision.reason == "pinned model strong"


def test_pinned_model_is_still_held_to_budgets() -> None:
    decision = route(constraints(candidates=("strong",), pinned=True, max_cost_usd=0.001))
    assert decision.chosen is None
    assert reasons(decision) == {"strong": "max_cost_usd: estimated $0.0105 > $0.001"}


def test_cost_ties_are_broken_by_latency_and_latency_ties_by_cost() -> None:
    twin = {
        "slow": dep("slow", (1, 1), (900, 50), 0.5, 10000, ()),
        "quick": dep("quick", (1, 1), (100, 50), 0.5, 10000, ()),
        "pricey": dep("pricey", (2, 2), (100, 50), 0.5, 10000, ()),
    }
    c = RouteConstraints(candidates=("slow", "quick", "pricey"), prefer="cost",
                         input_tokens=100, output_tokens=100)
    stats = StatsRegistry(clock=FROZEN)
    ranked = choose_route(c, twin, stats, available).ranked
    assert [e.deployment.id for e in ranked] == ["quick", "slow", "pricey"]
    c = RouteConstraints(candidates=("pricey", "quick", "slow"), prefer="latency",
                         input_tokens=100, output_tokens=100)
    stats = StatsRegistry(clock=FROZEN)
    ranked = choose_route(c, twin, stats, available).ranked
    assert [e.deployment.id for e in ranked] == ["quick", "pricey", "slow"]


# --- live statistics ---------------------------------------------------------------------


def test_observed_latency_overrides_the_priors() -> None:
    stats = StatsRegistry(clock=FROZEN)
    assert ranked_ids(route(constraints(prefer="latency"), stats))[0] == "fast"
    # strong turns out to be quick; fast turns out to be slow.
    stats.observe_ttft("strong", 80)
    stats.observe_rate("strong", 1000)
    stats.observe_ttft("fast", 3000)
    decision = route(constraints(prefer="latency", max_ttft_ms=500), stats)
    assert ranked_ids(decision) == ["strong", "mid"]
    assert reasons(decision)["fast"] == "max_ttft_ms: estimated 3000 ms > 500 ms"
    strong = decision.chosen
    assert strong is not None
    assert (strong.ttft_ms, strong.latency_ms) == (80, pytest.approx(80 + 500))


def test_observations_are_decayed_averages_not_the_last_sample() -> None:
    stats = StatsRegistry(clock=FROZEN)
    stats.observe_ttft("mid", 1000)
    stats.observe_ttft("mid", 2000)
    estimate = {e.deployment.id: e for e in route(constraints(), stats).candidates}["mid"]
    assert 1000 < estimate.ttft_ms < 2000
    # The output rate keeps its prior until a rate is observed.
    assert estimate.latency_ms == pytest.approx(estimate.ttft_ms + 500 / 120 * 1000)


def test_latency_budget_admits_a_deployment_once_it_proves_fast() -> None:
    stats = StatsRegistry(clock=FROZEN)
    c = constraints(prefer="quality", max_latency_ms=2000)
    assert ranked_ids(route(c, stats)) == ["fast"]
    for _ in range(3):
        stats.observe_ttft("strong", 200)
        stats.observe_rate("strong", 800)
    assert ranked_ids(route(c, stats)) == ["strong", "fast"]


# --- learning policy: exploration, hard constraints, load, failures, quota -----------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from router.routing.policy import RoutingPolicy  # noqa: E402
from router.routing.settings import RoutingConfig  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def learning(explore: float = 0.2, seed: int = 1, **cfg: Any) -> tuple[RoutingPolicy, Clock]:
    clock = Clock()
    stats = StatsRegistry(RoutingConfig(explore=explore, seed=seed, **cfg), clock=clock)
    return RoutingPolicy(stats), clock


def serve(policy: RoutingPolicy, clock: Clock, c: RouteConstraints, n: int,
          ttft: dict[str, float]) -> list[str]:
    """n requests one after another, each observed with its deployment's TTFT."""
    chosen = []
    for _ in range(n):
        decision = policy.choose(c, FLEET, available)
        assert decision.chosen is not None
        dep = decision.chosen.deployment.id
        chosen.append(dep)
        clock.now += 0.1
        policy.stats.observe_ttft(dep, ttft[dep])
        policy.stats.observe_outcome(dep, None)
    return chosen


TTFT = {"fast": 120.0, "mid": 350.0, "strong": 900.0, "budget": 2000.0}


@settings(max_examples=60, deadline=None)
@given(
    explore=st.floats(0, 0.5), seed=st.integers(0, 10**6),
    max_cost=st.none() | st.floats(0.0002, 0.02),
    max_ttft=st.none() | st.floats(100, 3000),
    requires=st.sets(st.sampled_from(["tools", "reasoning", "prefill"]), max_size=2),
    pinned=st.none() | st.sampled_from(ALL),
    prefer=st.sampled_from(["cost", "latency", "quality", "balanced"]),
)
def test_exploration_never_routes_outside_hard_constraints(
        explore: float, seed: int, max_cost: float | None, max_ttft: float | None,
        requires: set[str], pinned: str | None, prefer: str) -> None:
    policy, clock = learning(explore, seed)
    c = constraints(prefer=prefer, max_cost_usd=max_cost, max_ttft_ms=max_ttft,
                    requires=frozenset(requires), candidates=(pinned,) if pinned else ALL,
                    pinned=pinned is not None)
    for _ in range(30):
        decision = policy.choose(c, FLEET, available)
        for e in decision.ranked:
            d = e.deployment
            assert c.requires <= d.capabilities
            assert max_cost is None or e.cost_usd <= max_cost
            assert pinned is None or d.id == pinned
            # A latency budget is held against an estimate: only a probe on little fresh
            # evidence may be over it, never dearer than the best within it; when none is
            # within it, every one is over it, fastest first, a probe never dearer than
            # the fastest.
            if max_ttft is None or e.ttft_q_ms <= max_ttft or e is not decision.chosen:
                assert max_ttft is None or e.ttft_q_ms <= max_ttft or not any(
                    r.eligible for r in decision.ranked)
                continue
            if e.explore:
                assert not pinned and e.weight < policy.cfg.explore_below_weight
                within = [r for r in decision.ranked[1:] if r.eligible]
                assert e.cost_usd <= min(r.cost_usd for r in within or decision.ranked[1:2])
            else:
                assert decision.reason.startswith("none within the latency budget")
        if decision.chosen is not None:
            dep = decision.chosen.deployment.id
            clock.now += 1.0
            policy.stats.observe_ttft(dep, TTFT[dep])


def test_exploration_share_is_the_configured_one_within_tolerance() -> None:
    # Re-measuring is due all the time here: every candidate but the best stays stale.
    policy, _clock = learning(explore=0.1, seed=3, explore_below_weight=1e9)
    c = constraints(prefer="latency")
    n = 4000
    explored = sum(policy.choose(c, FLEET, available).chosen.explore  # type: ignore[union-attr]
                   for _ in range(n))
    assert explored / n == pytest.approx(0.1, abs=0.015)


def test_exploration_only_touches_under_measured_candidates() -> None:
    policy, clock = learning(explore=0.5, seed=3, explore_below_weight=3.0)
    c = constraints(prefer="latency")
    serve(policy, clock, c, 60, TTFT)
    for dep in ("mid", "strong", "budget"):
        for _ in range(5):
            policy.stats.observe_ttft(dep, TTFT[dep])
    # Everyone is measured now: no more exploring, the fastest serves every request.
    assert set(serve(policy, clock, c, 50, TTFT)) == {"fast"}


def test_a_seed_determines_every_choice() -> None:
    runs = []
    for _ in range(2):
        policy, clock = learning(explore=0.3, seed=42)
        runs.append(serve(policy, clock, constraints(prefer="latency"), 200, TTFT))
    assert runs[0] == runs[1]
    other, clock = learning(explore=0.3, seed=43)
    assert serve(other, clock, constraints(prefer="latency"), 200, TTFT) != runs[0]


def test_the_default_config_does_not_look_random_to_one_user() -> None:
    policy, clock = learning(explore=RoutingConfig().explore, seed=0)
    chosen = serve(policy, clock, constraints(prefer="latency"), 100, TTFT)
    assert chosen.count("fast") >= 95


def test_a_recovered_deployment_is_found_again() -> None:
    policy, clock = learning(explore=0.05, seed=5)
    c = constraints(prefer="latency", output_tokens=10)  # TTFT decides
    slow_fast = {**TTFT, "fast": 3000.0}
    assert serve(policy, clock, c, 100, slow_fast)[-20:].count("fast") <= 1
    clock.now += 60.0  # fast recovered while nobody asked it
    assert serve(policy, clock, c, 200, TTFT)[-50:].count("fast") >= 45


def test_a_browning_out_deployment_loses_traffic_before_any_breaker() -> None:
    policy, _clock = learning(explore=0.0)
    c = constraints(prefer="latency", output_tokens=10)  # TTFT decides
    for _ in range(10):
        policy.stats.observe_ttft("fast", 120.0)
        policy.stats.observe_outcome("fast", None)
        policy.stats.observe_ttft("mid", 350.0)
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]
    for _ in range(10):  # half its calls fail now, each after 900 ms
        policy.stats.observe_outcome("fast", "overloaded", 900.0)
    decision = policy.choose(c, FLEET, available)
    assert decision.chosen is not None and decision.chosen.deployment.id != "fast"
    fast = next(e for e in decision.candidates if e.deployment.id == "fast")
    assert fast.error_rate > 0.4


def test_requests_in_flight_spread_a_burst() -> None:
    policy, _clock = learning(explore=0.0, load_penalty=0.5)
    twin = {"a": dep("a", (1, 1), (200, 100), 0.5, 10000, ()),
            "b": dep("b", (1, 1), (220, 100), 0.5, 10000, ())}
    c = RouteConstraints(candidates=("a", "b"), prefer="latency", input_tokens=10,
                         output_tokens=10)
    for d in twin:
        for _ in range(5):
            policy.stats.observe_ttft(d, twin[d].latency_prior.ttft_ms)
    picks = []
    for _ in range(6):  # none finishes: a burst
        chosen = policy.choose(c, twin, available).chosen
        assert chosen is not None
        picks.append(chosen.deployment.id)
        policy.stats.attempt_started(chosen.deployment.id)
    assert picks.count("a") == 3 and picks.count("b") == 3


def test_an_injected_in_flight_count_is_used() -> None:
    clock = Clock()
    stats = StatsRegistry(RoutingConfig(explore=0.0, load_penalty=1.0), clock=clock)
    policy = RoutingPolicy(stats, inflight=lambda d: 10 if d == "fast" else 0)
    decision = policy.choose(constraints(prefer="latency"), FLEET, available)
    assert decision.chosen is not None and decision.chosen.deployment.id == "mid"


def test_a_429_cools_the_deployment_for_its_retry_after_without_a_failure() -> None:
    policy, clock = learning(explore=0.0)
    stats = policy.stats
    c = constraints(prefer="latency", max_ttft_ms=1000)
    stats.observe_outcome("fast", "rate_limited", 5.0, retry_after_s=2.0)
    decision = policy.choose(c, FLEET, available)
    assert decision.chosen is not None and decision.chosen.deployment.id == "mid"
    fast = next(e for e in decision.candidates if e.deployment.id == "fast")
    assert fast.wait_ms == pytest.approx(2000.0)
    assert fast.reason == "max_ttft_ms: estimated 2120 ms > 1000 ms"
    assert fast.error_rate == pytest.approx(0.01)  # a quota answer is not an outage
    clock.now += 2.5
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]


def test_announced_quota_moves_traffic_before_the_429() -> None:
    policy, clock = learning(explore=0.0)
    stats = policy.stats
    stats.observe_quota("fast", QuotaDelta(remaining_requests=1, reset_requests_s=30.0))
    c = constraints(prefer="latency")
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]
    stats.attempt_started("fast")  # spends the last request of the window
    stats.attempt_ended("fast")
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "mid"  # type: ignore[union-attr]
    clock.now += 31.0
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]


def test_announced_tokens_short_of_the_request_move_traffic_before_the_429() -> None:
    policy, clock = learning(explore=0.0)
    stats = policy.stats
    c = constraints(prefer="latency")  # 1000 input + 500 output tokens expected
    stats.observe_quota("fast", QuotaDelta(remaining_tokens=1400, reset_tokens_s=6.0))
    decision = policy.choose(c, FLEET, available)
    assert decision.chosen is not None and decision.chosen.deployment.id == "mid"
    fast = next(e for e in decision.candidates if e.deployment.id == "fast")
    assert fast.wait_ms == pytest.approx(6000.0)
    # A smaller request still fits in what is left.
    small = constraints(prefer="latency", input_tokens=100, output_tokens=100)
    assert policy.choose(small, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]
    clock.now += 6.5  # the window reset
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]


def test_sent_requests_spend_the_announced_tokens() -> None:
    policy, _ = learning(explore=0.0)
    stats = policy.stats
    c = constraints(prefer="latency")
    stats.observe_quota("fast", QuotaDelta(remaining_tokens=3500, reset_tokens_s=30.0))
    for _ in range(2):  # two requests of 1500 expected tokens fit; the third would not
        assert policy.choose(c, FLEET, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]
        stats.attempt_started("fast", 1000, 500)
        stats.attempt_ended("fast")
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "mid"  # type: ignore[union-attr]


def test_anthropic_output_tokens_alone_can_be_short() -> None:
    policy, _ = learning(explore=0.0)
    c = constraints(prefer="latency")
    policy.stats.observe_quota("fast", QuotaDelta(remaining_input_tokens=100_000,
                                                  remaining_output_tokens=200,
                                                  reset_tokens_s=10.0))
    assert policy.choose(c, FLEET, available).chosen.deployment.id == "mid"  # type: ignore[union-attr]


def test_config_tpm_moves_traffic_when_the_minute_is_spent() -> None:
    policy, clock = learning(explore=0.0)
    stats = policy.stats
    fleet = {**FLEET, "fast": dataclasses.replace(FLEET["fast"], tpm=4000)}
    c = constraints(prefer="latency")
    for _ in range(2):
        assert policy.choose(c, fleet, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]
        stats.attempt_started("fast", 1000, 500)
        stats.attempt_ended("fast")
        clock.now += 10.0
    decision = policy.choose(c, fleet, available)  # 3000 used, 1500 more would pass 4000
    assert decision.chosen is not None and decision.chosen.deployment.id == "mid"
    fast = next(e for e in decision.candidates if e.deployment.id == "fast")
    assert fast.wait_ms == pytest.approx(40_000.0)  # the first request leaves the minute
    clock.now += 41.0
    assert policy.choose(c, fleet, available).chosen.deployment.id == "fast"  # type: ignore[union-attr]


def test_under_prefer_cost_exploration_never_pays_for_a_pricier_candidate() -> None:
    policy, _ = learning(explore=0.5, seed=5, explore_below_weight=1e9)
    c = constraints(prefer="cost")
    for _ in range(400):
        decision = policy.choose(c, FLEET, available)
        assert decision.chosen is not None
        cheapest = min(e.cost_usd for e in decision.ranked)
        assert decision.chosen.cost_usd == cheapest  # explored or not


def test_estimates_are_load_free_and_scaled_to_the_load_now() -> None:
    policy, _ = learning(explore=0.0)
    stats = policy.stats
    for _ in range(5):  # 4 others in flight when the first token came: 1.2x an idle one
        stats.attempt_started("fast")
    stats.observe_ttft("fast", 240.0)
    for _ in range(5):
        stats.attempt_ended("fast")
    assert stats.snapshot(FLEET["fast"]).ttft_ms == pytest.approx(200.0)
    c = constraints(prefer="latency")
    idle = next(e for e in policy.choose(c, FLEET, available).candidates
                if e.deployment.id == "fast")
    assert idle.ttft_ms == pytest.approx(200.0)  # drained: no longer held to the burst
    for _ in range(10):
        stats.attempt_started("fast")
    busy = next(e for e in policy.choose(c, FLEET, available).candidates
                if e.deployment.id == "fast")
    assert busy.ttft_ms == pytest.approx(200.0 * stats.load_factor("fast", 10))


# --- budget probes: a latency budget's estimate on little fresh evidence is re-measured ----

def test_a_deployment_whose_prior_is_over_budget_is_found_when_it_is_fast() -> None:
    # `budget` (the cheapest) says 2000 ms, over max_ttft_ms 1000: never eligible on its
    # prior. It actually answers in 300 ms: a probe finds it, then it serves.
    policy, clock = learning(explore=0.05, seed=2)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    first = policy.choose(c, FLEET, available)
    assert first.chosen is not None and first.chosen.deployment.id == "fast"
    assert "budget" not in ranked_ids(first)
    chosen = serve(policy, clock, c, 300, {**TTFT, "budget": 300.0})
    probe = chosen.index("budget")
    assert 0 < probe < 100
    assert chosen[-50:].count("budget") == 50


def test_with_every_candidate_over_the_budget_an_unmeasured_one_is_still_probed() -> None:
    # Every prior is over max_ttft_ms 100, so `fast` (120 ms) serves as the fastest;
    # `budget`, the cheapest, says 2000 ms but answers in 60. With nothing within the
    # budget, only a probe would ever measure it: one finds it, and then it serves.
    policy, clock = learning(explore=0.05, seed=2)
    c = constraints(prefer="cost", max_ttft_ms=100, output_tokens=10, input_tokens=100)
    chosen = serve(policy, clock, c, 300, {**TTFT, "budget": 60.0})
    assert chosen[0] == "fast"
    assert 0 < chosen.index("budget") < 150
    assert chosen[-50:].count("budget") == 50


def test_a_budget_probe_says_so() -> None:
    policy, _ = learning(explore=0.5, seed=2)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    decision = next(d for d in (policy.choose(c, FLEET, available) for _ in range(20))
                    if d.chosen is not None and d.chosen.explore)
    chosen = decision.chosen
    assert chosen is not None and chosen.deployment.id == "budget" and chosen.eligible
    assert chosen.ttft_q_ms > 1000  # the estimate it was over on, shown as it is
    assert decision.reason.startswith("exploring budget (its estimate over the latency "
                                      "budget rests on weight 0.0 < 3)")
    assert ranked_ids(decision) == ["budget", "fast", "mid", "strong"]


def test_probes_of_a_deployment_that_really_is_slow_back_off() -> None:
    # `budget` is as slow as its prior says: each probe finds it over the budget and halves
    # the rate of the next, down to explore / 2**budget_probe_halvings; the rate recovers
    # one doubling per budget_probe_recovery half-lives without a probe (60 s), so it
    # settles a little above that floor, far below the exploration share.
    n, explore = 4000, 0.2
    policy, clock = learning(explore=explore, seed=4)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    chosen = []
    for _ in range(n):
        decision = policy.choose(c, FLEET, available)
        dep = decision.chosen.deployment.id  # type: ignore[union-attr]
        chosen.append(dep)
        clock.now += 1.0  # the evidence of each probe has aged away by the next draws
        policy.stats.observe_ttft(dep, TTFT[dep])
    probes = chosen.count("budget")
    floor = explore / 2 ** policy.cfg.budget_probe_halvings
    assert floor <= probes / n <= 2 * floor  # not the 20% exploration share


def test_budget_probes_share_the_exploration_draws() -> None:
    # Over many requests, exploring (of any kind) stays within the configured share.
    policy, clock = learning(explore=0.1, seed=8, budget_probe_halvings=0)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    n = 4000
    explored = 0
    for _ in range(n):
        decision = policy.choose(c, FLEET, available)
        chosen = decision.chosen
        assert chosen is not None
        explored += chosen.explore
        clock.now += 100.0  # nothing stays measured: every draw below the share explores
        policy.stats.observe_ttft(chosen.deployment.id, TTFT[chosen.deployment.id])
    assert explored / n == pytest.approx(0.1, abs=0.015)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6), max_cost=st.none() | st.floats(0.00005, 0.0003),
    requires=st.sets(st.sampled_from(["tools", "reasoning"]), max_size=1),
    pinned=st.none() | st.sampled_from(ALL), unavailable=st.sets(st.sampled_from(ALL)),
    prefer=st.sampled_from(["cost", "latency", "quality", "balanced"]),
)
def test_budget_probes_never_break_a_cap_a_pin_a_capability_or_a_spend_budget(
        seed: int, max_cost: float | None, requires: set[str], pinned: str | None,
        unavailable: set[str], prefer: str) -> None:
    policy, clock = learning(explore=0.5, seed=seed, budget_probe_halvings=0)
    c = constraints(prefer=prefer, max_cost_usd=max_cost, max_ttft_ms=150, output_tokens=10,
                    input_tokens=100, requires=frozenset(requires),
                    candidates=(pinned,) if pinned else ALL, pinned=pinned is not None)

    def down(d: Deployment) -> str | None:
        return "circuit_open" if d.id in unavailable else None

    for _ in range(40):
        decision = policy.choose(c, FLEET, down)
        if decision.chosen is None:
            continue
        chosen, within = decision.chosen, decision.ranked[1:]
        d = chosen.deployment
        assert c.requires <= d.capabilities and d.id not in unavailable
        assert max_cost is None or chosen.cost_usd <= max_cost
        assert pinned is None or (d.id == pinned and not chosen.explore)
        # A spend budget reserves the chosen's cost: a probe is never dearer than the best
        # candidate within every budget (or, none within, than the fastest over it, which
        # serves otherwise), so a budget that admits that one admits it.
        if chosen.explore and chosen.ttft_q_ms > 150:
            displaced = [e for e in within if e.eligible] or within[:1]
            assert chosen.cost_usd <= min(e.cost_usd for e in displaced)
        clock.now += 30.0
        policy.stats.observe_ttft(d.id, TTFT[d.id])


def test_budget_probes_can_be_switched_off() -> None:
    policy, clock = learning(explore=0.5, seed=2, budget_probes=False)
    c = constraints(prefer="cost", max_ttft_ms=1000, output_tokens=10, input_tokens=100)
    assert "budget" not in serve(policy, clock, c, 200, {**TTFT, "budget": 300.0})
