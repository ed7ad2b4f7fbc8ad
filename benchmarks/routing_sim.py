"""The drifting fleets and the discrete-event simulation of `benchmarks.routing`: each
deployment's true behaviour over (simulated) time, and one run of a policy over the same
Poisson arrivals and draws (common random numbers)."""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from router.config import Deployment, LatencyPrior, Price
from router.routing.policy import RouteConstraints

INPUT_TOKENS, OUTPUT_TOKENS = 500, 100
BACKOFF_S = 0.2
TRIES_PER_DEPLOYMENT = 2


@dataclass(frozen=True)
class Truth:
    """One deployment's real behaviour: TTFT median over time, spread, tail, errors, load."""

    id: str
    price: tuple[float, float]
    prior_ttft_ms: float
    ms_per_token: float
    ttft_ms: Callable[[float], float]  # median TTFT at time fraction f (0..1)
    sigma: float = 0.25
    tail_p: float = 0.0
    tail_x: float = 1.0
    error: Callable[[float], float] = lambda f: 0.005
    load_slope: float = 0.0  # TTFT grows by this share per request in flight
    rpm: int | None = None

    def deployment(self) -> Deployment:
        return Deployment(
            id=self.id, provider="sim", provider_kind="simulated", model=self.id,
            price=Price(input_per_mtok=self.price[0], output_per_mtok=self.price[1]),
            context_window=100000, max_output_tokens=None, default_max_tokens=OUTPUT_TOKENS,
            latency_prior=LatencyPrior(ttft_ms=self.prior_ttft_ms,
                                       tokens_per_s=1000.0 / self.ms_per_token),
            quality=0.5, capabilities=frozenset(), options={}, rpm=self.rpm)

    def median_ms(self, f: float, load: int) -> float:
        return self.ttft_ms(f) * (1.0 + self.load_slope * load)

    def mean_ttft_ms(self, f: float, load: int) -> float:
        m = self.median_ms(f, load) * math.exp(self.sigma ** 2 / 2)
        return m * (1 - self.tail_p + self.tail_p * self.tail_x)

    def mean_latency_ms(self, f: float, load: int) -> float:
        return self.mean_ttft_ms(f, load) + OUTPUT_TOKENS * self.ms_per_token

    def _latency_cdf(self, f: float, load: int) -> Callable[[float], float]:
        """P(one try's total latency <= x ms): the tail mixture of log-normals, plus decode."""
        med, decode = self.median_ms(f, load), OUTPUT_TOKENS * self.ms_per_token

        def cdf(x: float) -> float:
            def phi(z: float) -> float:
                return 0.5 * (1 + math.erf(z / math.sqrt(2)))
            t = max(x - decode, 1e-9)
            body = phi(math.log(t / med) / self.sigma)
            tail = phi(math.log(t / (med * self.tail_x)) / self.sigma)
            return (1 - self.tail_p) * body + self.tail_p * tail

        return cdf

    def q_success_ms(self, f: float, load: int, q: float) -> float:
        """The q-quantile of the time to a successful answer as `Simulation` serves it: a
        first try fails with the error rate p after a uniform share of its TTFT, the retry
        follows `BACKOFF_S` later; a request whose retry fails too leaves (slower than any
        success). Infinite when fewer than q of the requests succeed here."""
        p = self.error(f)
        if (1 - p) * (1 + p) < q:
            return math.inf
        cdf = self._latency_cdf(f, load)
        # The failed try's duration: a uniform share of a TTFT, at four quadrature points
        # of the share times the mean TTFT.
        mean_ttft = self.mean_ttft_ms(f, load)
        delays = [BACKOFF_S * 1000 + u * mean_ttft for u in (0.125, 0.375, 0.625, 0.875)]

        def success_cdf(x: float) -> float:
            retried = sum(cdf(x - d) for d in delays) / len(delays)
            return (1 - p) * cdf(x) + p * (1 - p) * retried

        decode = OUTPUT_TOKENS * self.ms_per_token
        lo, hi = decode, decode + self.median_ms(f, load) * 100 + BACKOFF_S * 2000
        for _ in range(50):  # bisection on the CDF
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if success_cdf(mid) < q else (lo, mid)
        return hi


def _ramp(a: float, b: float, f0: float, f1: float) -> Callable[[float], float]:
    return lambda f: a if f < f0 else b if f >= f1 else a + (b - a) * (f - f0) / (f1 - f0)


def _degrading(f: float) -> float:
    return 150.0 if f < 0.2 else 1500.0 if f < 0.7 else 150.0


Fleet = tuple[Truth, ...]

# The fleet: one of each drift.
DRIFTING: Fleet = (
    Truth("degrading", (0.5, 1.5), 150, 2.0, lambda f: _degrading(f) if f < 0.2 or f >= 0.7
          else _ramp(150, 1500, 0.2, 0.35)(f)),
    Truth("brownout", (0.3, 1.2), 250, 2.5, lambda f: 250.0,
          error=lambda f: 0.5 if 0.3 <= f < 0.55 else 0.005),
    Truth("heavytail", (0.6, 2.0), 200, 2.0, lambda f: 200.0, tail_p=0.1, tail_x=8.0),
    Truth("wrongprior", (0.2, 0.8), 100, 2.5, lambda f: 900.0),
    Truth("cheapslow", (0.05, 0.2), 600, 4.0, lambda f: 650.0, sigma=0.3),
    Truth("quota", (0.1, 0.4), 200, 2.0, lambda f: 220.0, rpm=240),
    Truth("loaded", (1.0, 3.0), 180, 1.5, lambda f: 180.0, load_slope=0.15),
)

# Budget edges (for 1 s): the cheapest misses 1 s on ~19% of its replies (p90 ~1.07 s), the
# next on ~4% (p90 ~0.92 s), a cheap heavy tail on 5%; one is fast but loses 40% of its
# replies for a while and one is priced like the rest but is slow under its own load.
EDGE: Fleet = (
    Truth("over", (0.05, 0.2), 400, 3.0, lambda f: 560.0),
    Truth("under", (0.1, 0.4), 400, 3.0, lambda f: 450.0),
    Truth("tail5", (0.15, 0.6), 250, 2.0, lambda f: 250.0, tail_p=0.05, tail_x=6.0),
    Truth("flaky", (0.3, 1.0), 200, 2.0, lambda f: 200.0,
          error=lambda f: 0.4 if 0.4 <= f < 0.6 else 0.005),
    Truth("busy", (0.5, 1.5), 150, 1.5, lambda f: 150.0, load_slope=0.3),
    Truth("fast", (1.0, 3.0), 120, 1.5, lambda f: 120.0),
)

# Price and speed inversely ordered; the cheapest's prior is far too good, one mid-priced
# one has an rpm quota and one gets slower with its own load.
INVERSE: Fleet = (
    Truth("p1", (0.05, 0.2), 300, 3.0, lambda f: 1200.0),
    Truth("p2", (0.1, 0.4), 800, 2.5, lambda f: 800.0, sigma=0.3),
    Truth("p3", (0.2, 0.8), 500, 2.0, lambda f: 500.0, rpm=300),
    Truth("p4", (0.4, 1.6), 300, 2.0, lambda f: 300.0, load_slope=0.1),
    Truth("p5", (0.8, 3.2), 150, 1.5, lambda f: 150.0),
)

# The fleet shifts mid-run: the cheap one slows past the budget while a pricier slow one
# speeds up, and late on the cheap one also starts failing a fifth of its calls.
SHIFT: Fleet = (
    Truth("cheap", (0.05, 0.2), 300, 2.5, _ramp(300, 1100, 0.45, 0.55),
          error=lambda f: 0.2 if f >= 0.8 else 0.005),
    Truth("riser", (0.2, 0.8), 1100, 2.5, _ramp(1100, 300, 0.45, 0.55)),
    Truth("steady", (0.5, 1.5), 350, 2.0, lambda f: 350.0, sigma=0.35),
    Truth("premium", (1.0, 3.0), 150, 1.5, lambda f: 150.0, load_slope=0.05),
)

# Load sensitivity, not assumed: the cheapest is the fastest idle but 50% slower per request
# in flight beside it, one mid-priced slows 25%, and two (one cheap and slow, one dear and
# fast) do not slow at all. The constant 5% the router assumed would herd onto the first and
# spread off the flat ones.
LOAD: Fleet = (
    Truth("steep", (0.05, 0.2), 150, 2.0, lambda f: 150.0, load_slope=0.5),
    Truth("flatcheap", (0.1, 0.4), 450, 2.5, lambda f: 450.0),
    Truth("moderate", (0.3, 1.0), 220, 2.0, lambda f: 220.0, load_slope=0.25),
    Truth("flatfast", (0.8, 2.5), 200, 1.5, lambda f: 200.0),
)

FLEETS: dict[str, Fleet] = {"drifting": DRIFTING, "edge": EDGE, "inverse": INVERSE,
                            "shift": SHIFT, "load": LOAD}


@dataclass
class Quota:
    """A vendor's request-per-minute window, as its headers describe it."""

    rpm: int
    started: deque[float] = field(default_factory=deque)

    def take(self, now: float) -> tuple[bool, int, float]:
        """(admitted, remaining requests, seconds until one frees)."""
        while self.started and self.started[0] <= now - 60.0:
            self.started.popleft()
        reset = (self.started[0] + 60.0 - now) if self.started else 0.0
        if len(self.started) >= self.rpm:
            return False, 0, reset
        self.started.append(now)
        return True, self.rpm - len(self.started), reset


class Policy:
    name = "?"

    def rank(self, now: float, f: float, c: RouteConstraints) -> list[str]:
        raise NotImplementedError

    def started(self, dep: str) -> None: ...
    def ended(self, dep: str) -> None: ...
    def first_token(self, dep: str, ttft_ms: float, sent_beside: int, retried: bool
                    ) -> None: ...
    def finished(self, dep: str, latency_ms: float, decode_ms_per_token: float) -> None: ...
    def failed(self, dep: str, duration_ms: float, code: str, retry_after: float | None
               ) -> None: ...
    def headers(self, dep: str, remaining: int, reset_s: float) -> None: ...


@dataclass(frozen=True)
class Step:
    """What happens next to request `i`: `ranked` is what is left of its candidates."""

    kind: str  # arrive, attempt, first, done, or an error code
    i: int
    ranked: tuple[str, ...]
    tries: int = 0
    retry_after: float | None = None

    def __lt__(self, other: Step) -> bool:  # heap ties are broken by sequence numbers
        return False


@dataclass
class Outcome:
    arrival: float
    ttft_ms: float = math.nan
    latency_ms: float = math.nan
    cost_usd: float = 0.0
    failed: bool = False
    first_choice: str = ""
    best: str = ""


class Simulation:
    """Discrete events on a simulated clock; one policy per run."""

    def __init__(self, fleet: Fleet, requests: int, rate: float, seed: int) -> None:
        self.fleet, self.truth = fleet, {t.id: t for t in fleet}
        self.n, self.seed = requests, seed
        rng = random.Random(seed)
        self.arrivals: list[float] = []
        t = 0.0
        for _ in range(requests):
            t += rng.expovariate(rate)
            self.arrivals.append(t)
        self.horizon = t
        self.now = 0.0
        self.load: dict[str, int] = {}
        self.quotas: dict[str, Quota] = {}
        # The oracle's budget quantiles, shared by its runs on this fleet (memoised there).
        self.q_success: dict[tuple[str, int, int], float] = {}

    def _draw(self, i: int, dep: str, attempt: int) -> random.Random:
        # Common random numbers: the draws of request i on deployment d, whatever policy.
        return random.Random(f"{self.seed}:{i}:{dep}:{attempt}")

    def quota_wait_s(self, dep: str, now: float) -> float:
        q = self.quotas.get(dep)
        if q is None:
            return 0.0
        while q.started and q.started[0] <= now - 60.0:
            q.started.popleft()
        return (q.started[0] + 60.0 - now) if len(q.started) >= q.rpm else 0.0

    def run(self, policy: Policy, best: Policy, c: RouteConstraints) -> list[Outcome]:
        """Every request served by `policy`; `best` (the oracle) names what it would pick."""
        self.now, self.load, self._seq = 0.0, {t.id: 0 for t in self.fleet}, 0
        self.quotas = {t.id: Quota(t.rpm) for t in self.fleet if t.rpm}
        self._policy, self._events = policy, []
        self._first_try: dict[int, float] = {}
        self._first_try_load: dict[int, int] = {}  # others in flight as it was sent
        self.outcomes = [Outcome(a) for a in self.arrivals]
        for i, a in enumerate(self.arrivals):
            self._push(a, Step("arrive", i, ()))
        while self._events:
            self.now, _, step = heapq.heappop(self._events)
            f = self.now / self.horizon
            if step.kind == "arrive":
                ranked = tuple(policy.rank(self.now, f, c))
                out = self.outcomes[step.i]
                out.first_choice, out.best = ranked[0], best.rank(self.now, f, c)[0]
                self._attempt(Step("attempt", step.i, ranked), f)
            elif step.kind == "attempt":
                self._attempt(step, f)
            elif step.kind == "first":
                self._first_token(step)
            else:
                self._end(step)
        return self.outcomes

    def _push(self, at: float, step: Step) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, step))

    def _attempt(self, step: Step, f: float) -> None:
        """Start one attempt: its outcome (first token or failure) is drawn now."""
        dep, t = step.ranked[0], self.truth[step.ranked[0]]
        if step.tries % TRIES_PER_DEPLOYMENT == 0:
            self._first_try[step.i] = self.now
            self._first_try_load[step.i] = self.load[dep]
        draw = self._draw(step.i, dep, step.tries)
        self._policy.started(dep)
        quota = self.quotas.get(dep)
        ok, remaining, reset = quota.take(self.now) if quota else (True, 0, 0.0)
        if quota is not None:
            self._policy.headers(dep, remaining, reset)
        load = self.load[dep]
        self.load[dep] += 1
        ttft = t.median_ms(f, load) * math.exp(t.sigma * draw.gauss(0, 1))
        if draw.random() < t.tail_p:
            ttft *= t.tail_x
        if not ok:
            step = replace(step, kind="rate_limited", retry_after=reset)
            ttft = 30.0
        elif draw.random() < t.error(f):
            step, ttft = replace(step, kind="overloaded"), ttft * draw.random()
        else:
            step = replace(step, kind="first")
        self._push(self.now + ttft / 1000, step)

    def _first_token(self, step: Step) -> None:
        dep, out = step.ranked[0], self.outcomes[step.i]
        out.ttft_ms = (self.now - out.arrival) * 1000
        self._policy.first_token(dep, (self.now - self._first_try[step.i]) * 1000,
                                 self._first_try_load[step.i],
                                 step.tries % TRIES_PER_DEPLOYMENT != 0)
        decode = self.truth[dep].ms_per_token * self._draw(step.i, dep, -1).uniform(0.8, 1.2)
        self._push(self.now + OUTPUT_TOKENS * decode / 1000, replace(step, kind="done"))

    def _end(self, step: Step) -> None:
        """An attempt ends: done, or failed (retry once, then the next candidate)."""
        dep, out, t = step.ranked[0], self.outcomes[step.i], self.truth[step.ranked[0]]
        self.load[dep] -= 1
        self._policy.ended(dep)
        if step.kind == "done":
            out.latency_ms = (self.now - out.arrival) * 1000
            decode = (out.latency_ms - out.ttft_ms) / OUTPUT_TOKENS
            self._policy.finished(dep, out.latency_ms, decode)
            out.cost_usd += (INPUT_TOKENS * t.price[0] + OUTPUT_TOKENS * t.price[1]) / 1e6
            return
        self._policy.failed(dep, (self.now - self._first_try[step.i]) * 1000, step.kind,
                            step.retry_after)
        tries = step.tries + 1
        if tries % TRIES_PER_DEPLOYMENT != 0:
            delay = step.retry_after if step.retry_after is not None else BACKOFF_S
            if delay <= 5.0:  # the retry policy's max backoff
                self._push(self.now + delay, Step("attempt", step.i, step.ranked, tries))
                return
            tries += 1
        if len(step.ranked) == 1:
            out.failed = True
            return
        self._push(self.now, Step("attempt", step.i, step.ranked[1:], tries))


