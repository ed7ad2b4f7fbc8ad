"""Routing that learns, against an oracle: seeded drifting fleets, simulated time.

    python -m benchmarks.routing [--requests 3000] [--rate 12] [--seed 7] [--fleet edge]
                                 [--plot routing.png] [--random-fleets N [--verbose]]

Five fleets (`benchmarks.routing_sim.FLEETS`), each under `prefer: latency` and under
`prefer: cost` with `max_latency_ms`. `drifting`, the issue's, has seven deployments that
drift the way production fleets do: `degrading` (150 ms -> 1.5 s TTFT,
then recovers), `brownout` (50% errors for a while), `heavytail` (one reply in ten 8x
slower), `wrongprior` (its config says 100 ms, it takes 900), `cheapslow` (cheapest, over
a 1 s budget on its tail), `quota` (cheap and fast, 240 requests a minute: then 429 with
`retry-after`, and `x-ratelimit-remaining-requests` shrinking on every reply) and `loaded`
(latency rising with its own requests in flight). `edge` puts the cheapest deployments
just over and just under the budget (and a cheap 5% tail), `inverse` orders prices and
latencies inversely (the cheapest has a far too good prior), in `shift` the cheap
deployment slows past the budget mid-run while a pricier one speeds up, and `load` has one
deployment 50% slower per request in flight beside it (the cheapest, fastest idle), one 25%
and two that do not slow at all. Requests arrive as a Poisson stream.

The REAL `RoutingPolicy` and `StatsRegistry` decide and learn, on a simulated clock (no
sleeping): the simulation calls `choose()` and reports attempts exactly as the serving
pipeline does (`attempt_started/ended`, `observe_ttft` from the first try on a deployment
with the others in flight as that try was sent, `observe_outcome` with retry-after,
`observe_quota` from the headers). Reference policies
pin a deployment per request: an oracle that knows every deployment's true current
distribution and load, random, static (best prior), and LiteLLM-style (mean of the last 10
latencies). Common random numbers: request i meets the same draws on deployment d under
every policy. Every policy retries a failed attempt once after a backoff (a 429 after its
retry-after) and then falls over to its next choice.

`--random-fleets N` is the held-out check: N seeded random fleets nobody tuned on
(`benchmarks.routing_fleets`), the router against the oracle only, and per objective the
median and worst of each ratio over the fleets.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks import plot_path
from benchmarks.routing_fleets import random_fleet
from benchmarks.routing_sim import (
    BACKOFF_S,
    FLEETS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    Fleet,
    Outcome,
    Policy,
    Simulation,
    Truth,
)
from providers.base import QuotaDelta
from router.config import Deployment
from router.routing.policy import RouteConstraints, RoutingPolicy
from router.routing.settings import RoutingConfig
from router.routing.stats import StatsRegistry


class Learned(Policy):
    """The router's own policy and estimator."""

    name = "router"

    def __init__(self, deps: dict[str, Deployment], clock: Callable[[], float],
                 cfg: RoutingConfig) -> None:
        self.deps = deps
        self.stats = StatsRegistry(cfg, clock=clock)
        self.policy = RoutingPolicy(self.stats, backoff_ms=BACKOFF_S * 1000)

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        decision = self.policy.choose(c, self.deps, lambda d: None)
        # The backups (over the latency budget alone) are failed over to last, as the
        # serving pipeline does.
        ranked = [e.deployment.id for e in (*decision.ranked, *decision.backups)]
        # Nothing passes the budget: the sim still serves, as fastest-first.
        return ranked or [e.deployment.id for e in sorted(decision.candidates,
                                                           key=lambda e: e.expected_ms)]

    def started(self, dep: str) -> None:
        # The load it is sent under comes back to `first_token` from the simulation (the
        # serving pipeline keeps it on the attempt): the same count, ours and the sim's.
        self.stats.attempt_started(dep, INPUT_TOKENS, OUTPUT_TOKENS)

    def ended(self, dep: str) -> None:
        self.stats.attempt_ended(dep)

    def first_token(self, dep: str, ttft_ms: float, sent_beside: int, retried: bool
                    ) -> None:
        self.stats.observe_ttft(dep, ttft_ms, sent_beside, retried)

    def finished(self, dep: str, latency_ms: float, decode_ms_per_token: float) -> None:
        self.stats.observe_rate(dep, 1000.0 / decode_ms_per_token)
        self.stats.observe_outcome(dep, None)

    def failed(self, dep: str, duration_ms: float, code: str, retry_after: float | None
               ) -> None:
        self.stats.observe_outcome(dep, code, duration_ms, retry_after)

    def headers(self, dep: str, remaining: int, reset_s: float) -> None:
        self.stats.observe_quota(dep, QuotaDelta(remaining, None, reset_s))


class Oracle(Policy):
    """Knows every deployment's true current distribution, load and quota."""

    name = "oracle"

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        def expected(t: Truth) -> float:
            p = t.error(f)
            load = self.sim.load[t.id]
            wait = self.sim.quota_wait_s(t.id, now) * 1000.0
            return t.mean_latency_ms(f, load) + wait + p / (1 - p) * (
                t.median_ms(f, load) + BACKOFF_S * 1000)

        by_time = sorted(self.sim.fleet, key=expected)
        if c.prefer == "latency" or c.max_latency_ms is None:
            return [t.id for t in by_time]
        def fits_budget(t: Truth) -> bool:
            # The budget's p90 of time to success (the router's criterion): a retried
            # success's failed try and backoff are inside it, and a request that fails
            # over is slower than any success.
            if self.sim.quota_wait_s(t.id, now) != 0:
                return False
            # Memoised per 1/2000 of the run (an eighth of a second at the defaults): the
            # quantile is a bisection over a mixture, asked for every request of every run.
            held_at = self.sim.load[t.id] + 1
            key = (t.id, round(f * 2000), held_at)
            q = self.sim.q_success.get(key)
            if q is None:
                q = self.sim.q_success[key] = t.q_success_ms(f, held_at, 0.9)
            return q <= budget

        budget = c.max_latency_ms
        fits = [t for t in self.sim.fleet if fits_budget(t)]
        fits.sort(key=lambda t: t.price)
        return [t.id for t in fits] + [t.id for t in by_time if t not in fits]


class Random(Policy):
    name = "random"

    def __init__(self, fleet: Fleet, seed: int) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        ids = [t.id for t in self.fleet]
        self.rng.shuffle(ids)
        return ids


class Static(Policy):
    """The best prior, forever (what a router without statistics does)."""

    name = "static"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        def prior(t: Truth) -> float:
            return t.prior_ttft_ms + OUTPUT_TOKENS * t.ms_per_token

        if c.prefer == "cost" and c.max_latency_ms is not None:
            budget = c.max_latency_ms
            return [t.id for t in sorted(self.fleet, key=lambda t: (prior(t) > budget, t.price))]
        return [t.id for t in sorted(self.fleet, key=prior)]


class MeanOfTen(Policy):
    """LiteLLM's latency-based routing: the mean of each deployment's last 10 latencies;
    a deployment never measured counts as 0 (so each is tried once)."""

    name = "litellm-mean10"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.recent: dict[str, deque[float]] = {t.id: deque(maxlen=10) for t in fleet}

    def _mean(self, dep: str) -> float:
        r = self.recent[dep]
        return statistics.fmean(r) if r else 0.0

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        if c.prefer == "cost" and c.max_latency_ms is not None:
            budget = c.max_latency_ms
            return [t.id for t in sorted(self.fleet, key=lambda t: (self._mean(t.id) > budget,
                                                                t.price))]
        return [t.id for t in sorted(self.fleet, key=lambda t: self._mean(t.id))]

    def finished(self, dep: str, latency_ms: float, decode_ms_per_token: float) -> None:
        self.recent[dep].append(latency_ms)

    def failed(self, dep: str, duration_ms: float, code: str, retry_after: float | None
               ) -> None:
        self.recent[dep].append(duration_ms + BACKOFF_S * 1000)  # LiteLLM counts the wait


def _q(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


@dataclass
class Row:
    name: str
    outcomes: list[Outcome]

    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.failed]

    def latencies(self) -> list[float]:
        return [o.latency_ms for o in self.served()]


def _misses(r: Row, budget: float | None) -> int:
    """Requests that failed or, under a budget, took longer than it."""
    return sum(1 for o in r.outcomes if o.failed or (
        budget is not None and o.latency_ms > budget))


def table(rows: list[Row], budget: float | None) -> str:
    oracle = next(r for r in rows if r.name == "oracle")
    o95 = _q(oracle.latencies(), 0.95)
    o_cost = statistics.fmean(o.cost_usd for o in oracle.outcomes)
    head = ("| policy | TTFT p50 | p95 | p99 | latency p50 | p95 | p99 | mean cost $ | cost vs "
            "oracle | failed | over budget | on oracle's pick | p95 vs oracle |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ttft, lat = [o.ttft_ms for o in r.served()], r.latencies()
        cost = statistics.fmean(o.cost_usd for o in r.outcomes)
        misses = _misses(r, budget)
        share = sum(o.first_choice == o.best for o in r.outcomes) / len(r.outcomes)
        lines.append(
            f"| {r.name} | {_q(ttft, .5):.0f} | {_q(ttft, .95):.0f} | {_q(ttft, .99):.0f} | "
            f"{_q(lat, .5):.0f} | {_q(lat, .95):.0f} | {_q(lat, .99):.0f} | {cost:.7f} | "
            f"{cost / o_cost:.3f}x | {sum(o.failed for o in r.outcomes)} | "
            f"{misses if budget is not None else '-'} | {share:.0%} | "
            f"{_q(lat, .95) / o95:.2f}x |")
    return "\n".join(lines)


def plot(path: str, runs: list[tuple[str, Fleet, list[Row]]], columns: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_n = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(9 * columns, 3.2 * rows_n),
                             squeeze=False)
    for ax, (title, fleet, rows) in zip(axes.flat, runs, strict=False):
        ids = [t.id for t in fleet]
        by = {r.name: r for r in rows}
        for name, offset, style in (("oracle", 0.15, "k|"), ("router", -0.15, "r|")):
            outs = by[name].outcomes
            ax.plot([o.arrival for o in outs], [ids.index(o.first_choice) + offset
                                                for o in outs], style, markersize=4,
                    label=name, alpha=0.6)
        ax.set_yticks(range(len(ids)), ids)
        ax.set_xlabel("simulated time (s)")
        ax.set_title(title)
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def summary(results: list[tuple[str, str, list[Row], float | None]]) -> str:
    """The router against the oracle on every fleet and objective (the issue's targets)."""
    lines = ["| fleet | objective | latency p95 vs oracle | cost vs oracle | over budget "
             "(oracle) | failed |", "|---|---|---:|---:|---:|---:|"]
    for fleet, title, rows, budget in results:
        oracle, router = (next(r for r in rows if r.name == n) for n in ("oracle", "router"))
        p95 = _q(router.latencies(), 0.95) / _q(oracle.latencies(), 0.95)
        cost = (statistics.fmean(o.cost_usd for o in router.outcomes)
                / statistics.fmean(o.cost_usd for o in oracle.outcomes))
        over = (f"{_misses(router, budget)} ({_misses(oracle, budget)})"
                if budget is not None else "-")
        lines.append(f"| {fleet} | {title} | {p95:.2f}x | {cost:.3f}x | {over} | "
                     f"{sum(o.failed for o in router.outcomes)} |")
    return "\n".join(lines)


def _scenarios(ids: tuple[str, ...], budget_ms: float
               ) -> list[tuple[str, RouteConstraints, float | None]]:
    return [
        ("prefer: latency", RouteConstraints(ids, "latency", INPUT_TOKENS, OUTPUT_TOKENS),
         None),
        (f"prefer: cost, max_latency_ms: {budget_ms:g}",
         RouteConstraints(ids, "cost", INPUT_TOKENS, OUTPUT_TOKENS,
                          max_latency_ms=budget_ms), budget_ms),
    ]


def _learned(sim: Simulation, cfg: RoutingConfig) -> Learned:
    return Learned({t.id: t.deployment() for t in sim.fleet}, lambda: sim.now, cfg)


def _ratios(rows: list[Row], budget: float | None
            ) -> tuple[float, float, float, int, int]:
    """(p95, cost, misses) of the router over the oracle's, the router's and the oracle's
    failed requests.
    The oracle's misses are floored at 10 (of 3,000) so a near-zero one does not divide."""
    oracle, router = rows
    p95 = _q(router.latencies(), 0.95) / _q(oracle.latencies(), 0.95)
    cost = (statistics.fmean(o.cost_usd for o in router.outcomes)
            / statistics.fmean(o.cost_usd for o in oracle.outcomes))
    misses = (_misses(router, budget) / max(10, _misses(oracle, budget))
              if budget is not None else math.nan)
    return (p95, cost, misses, sum(o.failed for o in router.outcomes),
            sum(o.failed for o in oracle.outcomes))


def random_fleets(args: argparse.Namespace, cfg: RoutingConfig) -> None:
    """The held-out check: per objective, the median and worst of each ratio over
    `args.random_fleets` random fleets (and the worst fleets, to look into)."""
    per: dict[str, list[tuple[int, tuple[float, float, float, int, int]]]] = {}
    for index in range(args.random_fleets):
        fleet, lines = random_fleet(args.seed, index)
        sim = Simulation(fleet, args.requests, args.rate, args.seed)
        for title, c, budget in _scenarios(tuple(t.id for t in fleet), args.budget_ms):
            # Static stands in for the oracle's pick per request (not reported here).
            rows = [Row(name, sim.run(make(sim), Static(fleet), c)) for name, make in (
                ("oracle", Oracle), ("router", lambda s: _learned(s, cfg)))]
            r = _ratios(rows, budget)
            per.setdefault(title, []).append((index, r))
            if args.verbose:
                misses = (f"misses {r[2]:.2f}x ({_misses(rows[1], budget)}/"
                          f"{_misses(rows[0], budget)})" if budget is not None else "")
                print(f"fleet {index} | {title} | p95 {r[0]:.2f}x | cost {r[1]:.3f}x | "
                      f"{misses} | failed {r[3]} ({r[4]})")
        if args.verbose:
            print("  " + "\n  ".join(lines))
    print(f"{args.random_fleets} random fleets (seed {args.seed}), {args.requests} requests "
          f"each, {args.rate:g}/s\n\n| objective | latency p95 vs oracle: median / worst | "
          "cost vs oracle: median / worst | misses vs oracle: median / worst | fleets "
          "meeting the targets | failed: total (oracle) |\n|---|---:|---:|---:|---:|---:|")
    for title, results in per.items():
        cols = list(zip(*(r for _, r in results), strict=True))
        budget = "cost" in title
        # "0 failed requests" where the fleet can serve every request; where its quotas
        # cannot (the oracle fails some too), no more than the oracle fails.
        met = sum(1 for _, (p95, cost, misses, failed, oracle_failed) in results
                  if failed <= oracle_failed and (
                      (cost <= 1.05 and misses <= 2.0) if budget else p95 <= 1.10))
        cells = [f"{statistics.median(v):.2f} / {max(v):.2f}" for v in cols[:3]]
        print(f"| {title} | {cells[0]}x | {cells[1]}x | "
              f"{cells[2] + 'x' if budget else '-'} | {met}/{len(results)} | {sum(cols[3])} "
              f"({sum(cols[4])}) |")
        worst = sorted(results, key=lambda ir: -(ir[1][2] if budget else ir[1][0]))[:3]
        print("  worst: " + ", ".join(f"fleet {i} ({r[2] if budget else r[0]:.2f}x)"
                                      for i, r in worst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=12.0, help="requests per simulated second")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--budget-ms", type=float, default=1000.0)
    ap.add_argument("--fleet", action="append", choices=sorted(FLEETS),
                    help="fleets to run (repeatable; default: all)")
    ap.add_argument("--plot", default="routing.png", help="PNG path ('' for none)")
    ap.add_argument("--random-fleets", type=int, default=0, metavar="N",
                    help="the held-out check: N random fleets against the oracle")
    ap.add_argument("--verbose", action="store_true", help="each random fleet's ratios")
    ap.add_argument("--explore-seed", type=int, default=None,
                    help="seed of the router's exploration draws alone (default: --seed): "
                         "what a difference between two variants must beat")
    args = ap.parse_args()
    cfg = RoutingConfig(seed=args.seed if args.explore_seed is None else args.explore_seed)
    if args.random_fleets:
        random_fleets(args, cfg)
        return
    args.plot = plot_path(args.plot)
    results, plotted = [], []
    print(f"{args.requests} requests per run, {args.rate:g}/s Poisson arrivals, seed "
          f"{args.seed}, simulated clock\n")
    for fleet_name in args.fleet or list(FLEETS):
        fleet = FLEETS[fleet_name]
        sim = Simulation(fleet, args.requests, args.rate, args.seed)
        ids = tuple(t.id for t in fleet)
        makers: list[tuple[str, Callable[[Simulation], Policy]]] = [
            ("oracle", Oracle),
            ("router", lambda s: _learned(s, cfg)),
            ("litellm-mean10", lambda s: MeanOfTen(s.fleet)),
            ("static", lambda s: Static(s.fleet)),
            ("random", lambda s: Random(s.fleet, args.seed)),
        ]
        for title, c, budget in _scenarios(ids, args.budget_ms):
            rows = [Row(name, sim.run(make(sim), Oracle(sim), c)) for name, make in makers]
            print(f"### {fleet_name} ({len(fleet)} deployments), {title}\n\n"
                  f"{table(rows, budget)}\n")
            results.append((fleet_name, title, rows, budget))
            plotted.append((f"{fleet_name}: {title}", fleet, rows))
    print(f"### router vs oracle\n\n{summary(results)}\n")
    if args.plot:
        plot(args.plot, plotted, columns=2)
        print(f"choices over time: {args.plot}")


if __name__ == "__main__":
    main()
