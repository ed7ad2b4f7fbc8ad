"""Routing policy: which deployments may serve a request, and in which order.

A candidate is excluded, with a stated reason, when it is unavailable (open breaker, missing
credentials), its context window is too small, it lacks a required capability
(`structured_output` for a JSON `response_format`), it cannot honour a sampling parameter the
request sets (`seed`, `top_p`, ...), or its estimate exceeds the request's budget:
`max_ttft_ms` and `max_latency_ms` are held against the `routing.quantile` (p90 by default)
of the decayed TTFT distribution, read one standard error lower for the evidence behind it
(`routing.budget_confidence`: excluded on evidence, not on noise) and scaled to the load
now, one request further up when others are in flight (the estimates are load-free), plus
the decode time of the expected output, plus any quota wait (requests, tokens, `rpm`,
`tpm`, a 429's retry-after); `max_cost_usd` against the price.

Eligible candidates are ranked by `prefer`. The latency objective, in one line: the
expected time to a successful answer,

    E = TTFT * L + decode + wait + p/(1-p) * (failure time * L + retry backoff),
    L = 1 + slope * in-flight

with p the decayed error rate (a deployment failing half its calls costs one failed
attempt per success) and slope the deployment's learnt load sensitivity
(`router.routing.load_model`), then shrunk by up to `routing.optimism` for candidates with
little evidence. `prefer: cost` ranks by price, ties by E. With probability
`routing.explore` the most promising under-measured eligible candidate that could win the
ranking is moved to the front instead (exploration; under `cost` none dearer than the
best). A latency budget is held against an estimate, so a candidate excluded by it alone on
little fresh evidence (a prior, or aged samples) may be that candidate too — a budget probe,
at a rate halved per probe that finds it still over; never one dearer than the best.
When no candidate is within a latency budget, those over it alone serve, fastest expected
first (the budget chooses, it does not refuse), with the same budget probes among them.
Exploration never breaks a `max_cost_usd` cap, a spend budget, a pin, a capability or an
open breaker.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from router.config.schema import Deployment, Prefer
from router.records import fast_init
from router.routing.constraints import RouteConstraints
from router.routing.cost import estimate_cost
from router.routing.estimator import Snapshot
from router.routing.load_model import load_factor
from router.routing.settings import RoutingConfig
from router.routing.stats import StatsRegistry

Unavailable = Callable[[Deployment], str | None]
InFlight = Callable[[str], int]

_MAX_ERROR_RATE = 0.95  # beyond this the expected retries are effectively unbounded


@fast_init
@dataclass(frozen=True, slots=True)
class Estimate:
    deployment: Deployment
    eligible: bool
    reason: str | None
    cost_usd: float
    ttft_ms: float  # expected (mean) time to first token
    latency_ms: float  # expected total latency for the expected output
    ttft_q_ms: float = 0.0  # the quantile the budgets are held against
    latency_q_ms: float = 0.0
    quantile: float = 0.9
    level: float = 0.9  # the level read for the budgets: `quantile` less its allowance
    expected_ms: float = 0.0  # the latency objective E (see the module docstring)
    samples: int = 0
    weight: float = 0.0
    age_s: float | None = None
    error_rate: float = 0.0
    inflight: int = 0
    wait_ms: float = 0.0
    explore: bool = False
    load_slope: float = 0.0  # the learnt slowdown per other request in flight
    # Excluded by max_ttft_ms / max_latency_ms alone: every hard constraint is met.
    over_latency_budget: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class RouteDecision:
    ranked: list[Estimate]  # eligible candidates, best first
    candidates: list[Estimate]  # every candidate, in config order
    reason: str
    # Excluded by a latency budget and nothing else, fastest first. A latency budget
    # chooses, it does not refuse: these serve once every candidate within it has failed
    # (a late answer rather than an error). A cost cap, a capability, a pin never yield.
    backups: list[Estimate] = field(default_factory=list)

    @property
    def chosen(self) -> Estimate | None:
        return self.ranked[0] if self.ranked else None

    def explain_exclusions(self) -> str:
        return "; ".join(f"{e.deployment.id}: {e.reason}" for e in self.candidates)


def expected_ms(s: Snapshot, output_tokens: int, wait_ms: float, loaded: float,
                backoff_ms: float) -> float:
    p = min(s.error_rate, _MAX_ERROR_RATE)
    failures_per_success = p / (1.0 - p)
    # The load slows what it was learnt from (time to a first token, or to a failure), not
    # the decode of the answer.
    return (s.ttft_ms * loaded + output_tokens * s.ms_per_token + wait_ms
            + failures_per_success * (s.failure_ms * loaded + backoff_ms))


def _exclusion(dep: Deployment, c: RouteConstraints, ttft_q: float, latency_q: float,
               cost: float, unavailable: Unavailable) -> str | None:
    reason = unavailable(dep)
    if reason is not None:
        return reason
    if c.input_tokens + c.output_tokens > dep.context_window:
        return (f"context_window: ~{c.input_tokens} input + {c.output_tokens} output tokens "
                f"> {dep.context_window}")
    if c.requires and (missing := c.requires - dep.capabilities):
        return f"capability: lacks {', '.join(sorted(missing))}"
    if c.params and (unhonoured := c.params - dep.params):
        return f"parameter: cannot honour {', '.join(sorted(unhonoured))}"
    if c.max_ttft_ms is not None and ttft_q > c.max_ttft_ms:
        return f"max_ttft_ms: estimated {ttft_q:.0f} ms > {c.max_ttft_ms:g} ms"
    if c.max_latency_ms is not None and latency_q > c.max_latency_ms:
        return f"max_latency_ms: estimated {latency_q:.0f} ms > {c.max_latency_ms:g} ms"
    if c.max_cost_usd is not None and cost > c.max_cost_usd:
        return f"max_cost_usd: estimated ${cost:.6g} > ${c.max_cost_usd:.6g}"
    return None


def estimate(dep: Deployment, c: RouteConstraints, stats: StatsRegistry,
             unavailable: Unavailable, inflight: InFlight | None = None,
             backoff_ms: float = 0.0) -> Estimate:
    s = stats.snapshot(dep)
    wait = stats.wait_ms(dep, c.input_tokens, c.output_tokens)
    load = (inflight or stats.inflight)(dep.id)
    slope = stats.load_slope(dep.id)
    loaded = load_factor(slope, load)  # the estimates are load-free: scale to the load now
    decode_ms = c.output_tokens * s.ms_per_token
    # A budget is held one request further up than the others in flight beside which it
    # would be sent (as `benchmarks.routing`'s oracle holds it): a margin of one request's
    # slowdown, which a deployment steep under load needs at a budget's edge (its p90 moves
    # by its slope per request, more than the quantile's noise) and a flat one does not
    # pay. An idle deployment is held at its estimate itself.
    ttft_q = s.ttft_q_ms * load_factor(slope, load + 1 if load else 0) + wait
    latency_q = ttft_q + decode_ms
    cost = estimate_cost(dep.price, c.input_tokens, c.output_tokens)
    reason = _exclusion(dep, c, ttft_q, latency_q, cost, unavailable)
    over_latency_budget = reason is not None and _exclusion(
        dep, replace(c, max_ttft_ms=None, max_latency_ms=None), ttft_q, latency_q, cost,
        unavailable) is None
    return Estimate(
        dep, reason is None, reason, cost, s.ttft_ms * loaded, s.ttft_ms * loaded + decode_ms,
        ttft_q, latency_q, s.quantile, s.level,
        expected_ms(s, c.output_tokens, wait, loaded, backoff_ms), s.samples, s.weight,
        s.age_s, s.error_rate, load, wait, load_slope=slope,
        over_latency_budget=over_latency_budget)


def _optimistic(e: Estimate, cfg: RoutingConfig) -> float:
    """E shrunk by up to `optimism` when there is little evidence behind it."""
    return e.expected_ms * (1.0 - cfg.optimism / math.sqrt(1.0 + e.weight))


def _probing(e: Estimate) -> bool:
    """Its figures are mostly prior and a request is already finding out: one probe at a
    time, so a burst does not herd onto a deployment nobody has measured lately."""
    return e.weight < 1.0 and e.inflight > 0


def _rank_key(prefer: Prefer, pool: Sequence[Estimate],
              cfg: RoutingConfig) -> Callable[[Estimate], tuple[float, ...]]:
    if prefer == "cost":
        return lambda e: (_probing(e), e.cost_usd, _optimistic(e, cfg))
    if prefer == "latency":
        return lambda e: (_probing(e), _optimistic(e, cfg), e.cost_usd)
    if prefer == "quality":
        return lambda e: (-e.deployment.quality, e.cost_usd)
    max_cost = max((e.cost_usd for e in pool), default=0.0) or 1.0
    max_latency = max((e.expected_ms for e in pool), default=0.0) or 1.0

    def balanced(e: Estimate) -> tuple[float, ...]:
        score = (
            0.5 * e.deployment.quality
            + 0.25 * (1 - e.cost_usd / max_cost)
            + 0.25 * (1 - _optimistic(e, cfg) / max_latency)
        )
        return (_probing(e), -score, e.cost_usd)

    return balanced


_WHY = {
    "cost": "lowest estimated cost",
    "latency": "lowest estimated latency",
    "quality": "highest quality",
    "balanced": "best balance of quality, cost and latency",
}


def _backups(ranked: list[Estimate], candidates: list[Estimate]) -> list[Estimate]:
    """The candidates over a latency budget alone, not ranked already, fastest first."""
    over = [e for e in candidates if e.over_latency_budget]
    if not over:
        return over
    taken = {e.deployment.id for e in ranked}
    return sorted((e for e in over if e.deployment.id not in taken),
                  key=lambda e: e.expected_ms)


class RoutingPolicy:
    """The decision of one router: estimates, hard constraints, ranking, exploration.

    `inflight` says how many requests a deployment is serving (an admission limiter may
    supply it; the stats registry's own count by default). The exploration draws come from
    a generator seeded by `routing.seed`, so a run repeats itself.
    """

    def __init__(self, stats: StatsRegistry, *, inflight: InFlight | None = None,
                 backoff_ms: float = 0.0, rng: random.Random | None = None) -> None:
        self.stats = stats
        self.cfg = stats.routing
        self.inflight = inflight or stats.inflight
        self.backoff_ms = backoff_ms
        self.rng = rng or random.Random(self.cfg.seed)
        # Per candidate over a latency budget since it was last within its budgets (one
        # entry per deployment at most): its probes that found it still over, and the last.
        self._budget_probes: dict[str, _Probes] = {}

    def choose(self, c: RouteConstraints, deployments: Mapping[str, Deployment],
               unavailable: Unavailable) -> RouteDecision:
        all_estimates = [estimate(deployments[d], c, self.stats, unavailable, self.inflight,
                                  self.backoff_ms) for d in c.candidates]
        eligible = [e for e in all_estimates if e.eligible]
        if self._budget_probes:  # none unless a deployment was over a latency budget
            for e in eligible:
                if e.weight >= 1.0:  # measured within its budgets: later probes at full rate
                    self._budget_probes.pop(e.deployment.id, None)
            for e in all_estimates:
                self._judge_probe(e, c)
        if not eligible:
            return self._none_within(all_estimates)
        if c.pinned:  # a pin's one candidate (the usual case) has nothing to rank
            ranked = eligible if len(eligible) == 1 else sorted(
                eligible, key=_rank_key(c.prefer, eligible, self.cfg))
            return RouteDecision(ranked, all_estimates, f"pinned model {ranked[0].deployment.id}",
                                 _backups(ranked, all_estimates))
        key = _rank_key(c.prefer, eligible, self.cfg)
        ranked = sorted(eligible, key=key) if len(eligible) > 1 else eligible
        reason = f"{_WHY[c.prefer]} (prefer={c.prefer}) of {len(ranked)} eligible"
        explored = self._explore(ranked, all_estimates, c.prefer, key)
        if explored is not None:
            chosen = replace(explored, eligible=True, reason=None, explore=True)
            ranked, all_estimates = _to_front(chosen, ranked), _in_place(chosen, all_estimates)
            reason = (f"exploring {chosen.deployment.id} ({self._why_explored(explored)}) "
                      f"instead of the {_WHY[c.prefer]} of {len(eligible)} eligible")
        return RouteDecision(ranked, all_estimates, reason, _backups(ranked, all_estimates))

    def _none_within(self, candidates: list[Estimate]) -> RouteDecision:
        """No candidate is eligible. If some are excluded by a latency budget alone, the
        budget chooses without refusing: the fastest expected of them serves (a late answer
        rather than an error), or, at the exploration rate, a budget probe of one whose
        estimate rests on little fresh evidence (a wrong prior, or aged samples) — with
        every candidate over the budget, nothing else would ever measure it again."""
        backups = _backups([], candidates)
        if not backups:
            return RouteDecision([], candidates, "no eligible candidate")
        reason = f"none within the latency budget: fastest expected of {len(backups)} over it"
        if self.cfg.explore <= 0:
            return RouteDecision(backups, candidates, reason)
        draw = self.rng.random()
        if draw < self.cfg.explore:
            # Never dearer than the fastest, which serves otherwise (a spend budget that
            # admits it admits the probe).
            probes = [e for e in backups[1:] if self._may_probe(e, backups[0].cost_usd, draw)]
            if probes:
                chosen = replace(probes[0], explore=True)  # the fastest expected of them
                self._record_probe(chosen)
                backups, candidates = _to_front(chosen, backups), _in_place(chosen, candidates)
                reason = (f"exploring {chosen.deployment.id} ({self._why_explored(chosen)}): "
                          f"none within the budget")
        return RouteDecision(backups, candidates, reason)

    def _why_explored(self, e: Estimate) -> str:
        weight = f"weight {e.weight:.1f} < {self.cfg.explore_below_weight:g}"
        return f"its estimate over the latency budget rests on {weight}" if (
            e.over_latency_budget) else weight

    def _explore(self, ranked: list[Estimate], candidates: list[Estimate], prefer: Prefer,
                 key: Callable[[Estimate], tuple[float, ...]]) -> Estimate | None:
        """The candidate to re-measure now, or None (serve the best). Only a candidate that
        good news could rank first is worth a request: under `cost` (and `quality`) the
        ranking rests on known prices (and quality), so one that costs more than the best
        (or is of lower quality) is never explored."""
        if self.cfg.explore <= 0:
            return None
        draw = self.rng.random()  # drawn every time: the sequence depends on the seed only
        if draw >= self.cfg.explore:
            return None
        best = ranked[0]
        under = [e for e in ranked[1:]
                 if e.weight < self.cfg.explore_below_weight and _could_win(e, best, prefer)]
        probes = [e for e in candidates if _could_win(e, best, prefer)
                  and self._may_probe(e, best.cost_usd, draw)]
        pool = sorted(under + probes, key=key)  # the most promising of them
        if not pool:
            return None
        chosen = pool[0]
        if chosen.over_latency_budget:
            self._record_probe(chosen)
        return chosen

    def _record_probe(self, e: Estimate) -> None:
        """A budget probe of `e` is sent: its answer is judged by `_judge_probe`."""
        dep = e.deployment.id
        self._budget_probes[dep] = _Probes(self._probe_halvings(dep), self.stats.clock(),
                                           e.samples)

    def _judge_probe(self, e: Estimate, c: RouteConstraints) -> None:
        """Once a budget probe's answer is in, count it if it was over the budget: only
        a probe that found the deployment still slow halves the rate of the next."""
        probes = self._budget_probes.get(e.deployment.id)
        if probes is None or probes.pending is None or e.samples <= probes.pending:
            return
        last = self.stats.get(e.deployment.id).estimator.last_ttft_ms
        probes.pending = None
        # The probe was alone on the deployment (one at a time): its TTFT is load-free.
        if last is None or not _within_latency_budgets(last, e, c):
            probes.halvings = min(probes.halvings + 1.0, self.cfg.budget_probe_halvings)

    def _may_probe(self, e: Estimate, ceiling_usd: float, draw: float) -> bool:
        """Optimism under uncertainty for a latency budget, which is held against an
        estimate: one excluded by it alone, on little fresh evidence (its prior, or aged
        samples), may be re-measured, so a recovered or cheaper deployment is found again.
        Never one dearer than `ceiling_usd` (the best's price: a cap or spend budget that
        admits the best admits it), one with a known quota wait, or a second probe while
        one is in flight; and each probe that finds it still over halves the rate of the
        next, so one that really is slow costs few misses."""
        if not (self.cfg.budget_probes and e.over_latency_budget):
            return False
        if (e.weight >= self.cfg.explore_below_weight or e.wait_ms > 0 or e.inflight > 0
                or e.cost_usd > ceiling_usd):
            return False
        return draw < self.cfg.explore * math.pow(2.0, -self._probe_halvings(e.deployment.id))

    def _probe_halvings(self, dep: str) -> float:
        """How many times `dep`'s probe rate is halved now: once per probe that found it
        still over its budget (at most `budget_probe_halvings`), less one per
        `budget_probe_recovery` half-lives since the last probe, so a deployment that
        changes after its probes stopped is not left at the floor rate."""
        probes = self._budget_probes.get(dep)
        if probes is None:
            return 0.0
        recovered = (self.stats.clock() - probes.at) / (
            self.cfg.half_life_s * self.cfg.budget_probe_recovery)
        return max(0.0, probes.halvings - recovered)


@dataclass(slots=True)
class _Probes:
    """The budget probes of one deployment over a latency budget."""

    halvings: float  # of its probe rate at `at`: one per probe answered over the budget
    at: float  # clock time of the last probe
    pending: int | None  # its sample count when the last probe was sent, until it answers


def _to_front(chosen: Estimate, ranked: list[Estimate]) -> list[Estimate]:
    """`ranked` with `chosen` first, in place of its deployment's entry."""
    return [chosen, *(e for e in ranked if e.deployment is not chosen.deployment)]


def _in_place(chosen: Estimate, candidates: list[Estimate]) -> list[Estimate]:
    """`candidates` (in config order) with `chosen` for its deployment's entry."""
    return [chosen if e.deployment is chosen.deployment else e for e in candidates]


def _within_latency_budgets(ttft_ms: float, e: Estimate, c: RouteConstraints) -> bool:
    """Whether a first token after `ttft_ms` (and the expected output) meets the budgets."""
    if c.max_ttft_ms is not None and ttft_ms > c.max_ttft_ms:
        return False
    decode_ms = e.latency_q_ms - e.ttft_q_ms
    return c.max_latency_ms is None or ttft_ms + decode_ms <= c.max_latency_ms


def _could_win(e: Estimate, best: Estimate, prefer: Prefer) -> bool:
    if prefer == "cost":
        return e.cost_usd <= best.cost_usd
    if prefer == "quality":
        return e.deployment.quality >= best.deployment.quality
    return True


def choose_route(
    c: RouteConstraints,
    deployments: Mapping[str, Deployment],
    stats: StatsRegistry,
    unavailable: Unavailable,
) -> RouteDecision:
    """The decision without exploration (a dry run, or a caller without a policy)."""
    policy = RoutingPolicy(stats, rng=_NEVER)
    return policy.choose(c, deployments, unavailable)


class _NeverExplore(random.Random):
    def random(self) -> float:
        return 1.0


_NEVER = _NeverExplore(0)
