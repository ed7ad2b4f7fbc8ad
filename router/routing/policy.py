"""Routing policy: which deployments may serve a request, and in which order.

A candidate is excluded, with a stated reason, when it is unavailable (open breaker, missing
credentials), its context window is too small, it lacks a required capability
(`structured_output` for a JSON `response_format`), it cannot honour a sampling parameter the
request sets (`seed`, `top_p`, ...), or its estimated TTFT, latency or cost exceeds the
request's budget. Eligible candidates are
ranked by `prefer`. Estimates use live statistics once observed, config priors before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from router.config.schema import Deployment, Prefer
from router.routing.cost import estimate_cost
from router.routing.stats import StatsRegistry

Unavailable = Callable[[Deployment], str | None]


@dataclass(frozen=True, slots=True)
class RouteConstraints:
    """What one request asks of its route, after task defaults were applied."""

    candidates: tuple[str, ...]
    prefer: Prefer
    input_tokens: int
    output_tokens: int
    max_ttft_ms: float | None = None
    max_latency_ms: float | None = None
    max_cost_usd: float | None = None
    requires: frozenset[str] = frozenset()
    params: frozenset[str] = frozenset()  # sampling parameters the request sets
    task: str | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Estimate:
    deployment: Deployment
    eligible: bool
    reason: str | None
    cost_usd: float
    ttft_ms: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class RouteDecision:
    ranked: list[Estimate]  # eligible candidates, best first
    candidates: list[Estimate]  # every candidate, in config order
    reason: str

    @property
    def chosen(self) -> Estimate | None:
        return self.ranked[0] if self.ranked else None

    def explain_exclusions(self) -> str:
        return "; ".join(f"{e.deployment.id}: {e.reason}" for e in self.candidates)


def estimate(
    dep: Deployment, c: RouteConstraints, stats: StatsRegistry, unavailable: Unavailable
) -> Estimate:
    ttft = stats.estimate_ttft_ms(dep)
    latency = ttft + 1000.0 * c.output_tokens / stats.estimate_tokens_per_s(dep)
    cost = estimate_cost(dep.price, c.input_tokens, c.output_tokens)
    reason = unavailable(dep)
    missing = sorted(c.requires - dep.capabilities)
    unhonoured = sorted(c.params - dep.params)
    if reason is not None:
        pass
    elif c.input_tokens + c.output_tokens > dep.context_window:
        reason = (
            f"context_window: ~{c.input_tokens} input + {c.output_tokens} output tokens "
            f"> {dep.context_window}"
        )
    elif missing:
        reason = f"capability: lacks {', '.join(missing)}"
    elif unhonoured:
        reason = f"parameter: cannot honour {', '.join(unhonoured)}"
    elif c.max_ttft_ms is not None and ttft > c.max_ttft_ms:
        reason = f"max_ttft_ms: estimated {ttft:.0f} ms > {c.max_ttft_ms:g} ms"
    elif c.max_latency_ms is not None and latency > c.max_latency_ms:
        reason = f"max_latency_ms: estimated {latency:.0f} ms > {c.max_latency_ms:g} ms"
    elif c.max_cost_usd is not None and cost > c.max_cost_usd:
        reason = f"max_cost_usd: estimated ${cost:.6g} > ${c.max_cost_usd:.6g}"
    return Estimate(dep, reason is None, reason, cost, ttft, latency)


def _rank_key(prefer: Prefer, pool: Sequence[Estimate]) -> Callable[[Estimate], tuple[float, ...]]:
    if prefer == "cost":
        return lambda e: (e.cost_usd, e.latency_ms)
    if prefer == "latency":
        return lambda e: (e.latency_ms, e.cost_usd)
    if prefer == "quality":
        return lambda e: (-e.deployment.quality, e.cost_usd)
    max_cost = max((e.cost_usd for e in pool), default=0.0) or 1.0
    max_latency = max((e.latency_ms for e in pool), default=0.0) or 1.0

    def balanced(e: Estimate) -> tuple[float, ...]:
        score = (
            0.5 * e.deployment.quality
            + 0.25 * (1 - e.cost_usd / max_cost)
            + 0.25 * (1 - e.latency_ms / max_latency)
        )
        return (-score, e.cost_usd)

    return balanced


_WHY = {
    "cost": "lowest estimated cost",
    "latency": "lowest estimated latency",
    "quality": "highest quality",
    "balanced": "best balance of quality, cost and latency",
}


def choose_route(
    c: RouteConstraints,
    deployments: Mapping[str, Deployment],
    stats: StatsRegistry,
    unavailable: Unavailable,
) -> RouteDecision:
    all_estimates = [estimate(deployments[d], c, stats, unavailable) for d in c.candidates]
    eligible = [e for e in all_estimates if e.eligible]
    ranked = sorted(eligible, key=_rank_key(c.prefer, eligible))
    if not ranked:
        return RouteDecision([], all_estimates, "no eligible candidate")
    if c.pinned:
        reason = f"pinned model {ranked[0].deployment.id}"
    else:
        reason = f"{_WHY[c.prefer]} (prefer={c.prefer}) of {len(ranked)} eligible"
    return RouteDecision(ranked, all_estimates, reason)
