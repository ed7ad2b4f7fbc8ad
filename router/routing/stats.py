"""Live statistics per deployment: one `Estimator` each (decayed TTFT distribution, decode
rate, error rate), requests in flight, and the quota a vendor announced or a 429 imposed.
The serving pipeline reports into it; the policy reads `snapshot()`s from it, and the hedge
delay the estimator's p95 of TTFT."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from providers.base import QuotaDelta
from router.config.schema import Deployment
from router.routing.estimator import Clock, Estimator, Prior, Snapshot
from router.routing.load_model import LoadModel, load_factor
from router.routing.settings import RoutingConfig

# Decayed samples' worth of TTFT behind a hedge delay read from the distribution; with
# less, twice the (prior-blended) mean stands for it.
HEDGE_MIN_WEIGHT = 10.0
# The load model's horizon against the estimator's: a slope needs loads of some spread, which
# bursts bring now and then, not every half-life.
LOAD_HALF_LIVES = 8.0
LOAD_MAX_WEIGHTS = 50.0
# The window a TTFT is compared within, against the estimator's half-life: a level is taken
# as steady over it, so a level that moves between windows is not read as load.
LOAD_WINDOW_HALF_LIVES = 0.5


@dataclass(slots=True)
class Quota:
    """What the vendor last said is left, and until when a 429 told us to wait."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    remaining_input_tokens: int | None = None  # Anthropic's split token limits
    remaining_output_tokens: int | None = None
    reset_at: float | None = None  # clock time the remaining requests reset
    tokens_reset_at: float | None = None
    cooling_until: float | None = None  # clock time a 429's retry-after ends

    def take(self, input_tokens: int, output_tokens: int) -> None:
        """A request was sent: what it will use is no longer left (until the next
        announcement replaces these figures)."""
        if self.remaining_requests is not None:
            self.remaining_requests = max(0, self.remaining_requests - 1)
        if self.remaining_tokens is not None:
            self.remaining_tokens = max(0, self.remaining_tokens - input_tokens - output_tokens)
        if self.remaining_input_tokens is not None:
            self.remaining_input_tokens = max(0, self.remaining_input_tokens - input_tokens)
        if self.remaining_output_tokens is not None:
            self.remaining_output_tokens = max(0, self.remaining_output_tokens - output_tokens)

    def short_of_tokens(self, input_tokens: int, output_tokens: int) -> bool:
        """Less announced as left than the request is expected to use (a 429 if sent)."""
        def short(left: int | None, need: int) -> bool:
            return left is not None and left < max(1, need)

        return (short(self.remaining_tokens, input_tokens + output_tokens)
                or short(self.remaining_input_tokens, input_tokens)
                or short(self.remaining_output_tokens, output_tokens))


@dataclass(slots=True)
class DeploymentStats:
    estimator: Estimator
    load: LoadModel
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    inflight: int = 0
    # The last minute's attempts (sent at, tokens expected), for a config `rpm` / `tpm`.
    sent_in_window: deque[tuple[float, int]] = field(default_factory=deque)
    quota: Quota = field(default_factory=Quota)

    @property
    def observed(self) -> bool:
        return self.estimator.samples > 0


class StatsRegistry:
    """In-process statistics; each router instance measures what it observes."""

    def __init__(self, routing: RoutingConfig | None = None, clock: Clock = time.monotonic
                 ) -> None:
        self.routing = routing or RoutingConfig()
        self.clock = clock
        self._by_id: dict[str, DeploymentStats] = {}
        self._priors: dict[str, Prior] = {}
        self._known: dict[str, Deployment] = {}  # the config object each prior came from
        # Set by `router.state.stats_sync`: what the estimators learn is also recorded here
        # (kind, deployment, value, extra), for other instances to learn it too.
        self.journal: deque[tuple[str, str, float, float]] | None = None

    def know(self, dep: Deployment) -> DeploymentStats:
        """The stats of `dep`, created with its config priors on first use."""
        s = self._by_id.get(dep.id)
        if s is not None and self._known.get(dep.id) is dep:
            return s  # the same config object as last time: its priors are in place
        self._known[dep.id] = dep
        prior = Prior(dep.latency_prior.ttft_ms, 1000.0 / dep.latency_prior.tokens_per_s,
                      self.routing.prior_error_rate)
        if s is None or self._priors.get(dep.id) != prior:
            self._priors[dep.id] = prior
            if s is None:
                s = self._by_id[dep.id] = self._new_stats(prior)
            else:
                s.estimator.prior = prior
        return s

    def get(self, deployment_id: str) -> DeploymentStats:
        s = self._by_id.get(deployment_id)
        if s is None:  # observed before routing knew it: neutral priors until `know()`
            prior = Prior(1000.0, 10.0, self.routing.prior_error_rate)
            s = self._by_id[deployment_id] = self._new_stats(prior)
        return s

    def _new_stats(self, prior: Prior) -> DeploymentStats:
        cfg, now = self.routing, self.clock()
        return DeploymentStats(
            Estimator(prior, cfg.half_life_s, now, cfg.max_weight),
            LoadModel(cfg.load_penalty, cfg.half_life_s * LOAD_HALF_LIVES, now,
                      cfg.max_weight * LOAD_MAX_WEIGHTS, cfg.half_life_s * LOAD_WINDOW_HALF_LIVES))

    # --- what the serving pipeline reports --------------------------------------------------

    def load_slope(self, deployment_id: str) -> float:
        """How much longer a first token takes per other request in flight on this
        deployment: learnt from its TTFTs at the loads they were sent under, the config's
        `load_penalty` until that says otherwise (`router.routing.load_model`)."""
        s = self._by_id.get(deployment_id)
        return s.load.slope(self.clock()) if s is not None else self.routing.load_penalty

    def load_factor(self, deployment_id: str, inflight: int) -> float:
        """How much longer a first token of this deployment takes beside `inflight` other
        requests than on an idle one."""
        return load_factor(self.load_slope(deployment_id), inflight)

    def _unloaded(self, s: DeploymentStats, ms: float, others: int, now: float) -> float:
        """A TTFT as it would have been on an idle deployment: the estimators learn
        load-free figures and the policy scales them by the load a request meets now, so
        an estimate measured under a burst does not keep a drained deployment excluded."""
        return ms / load_factor(s.load.slope(now), others)

    def observe_ttft(self, deployment_id: str, ttft_ms: float,
                     sent_beside: int | None = None, retried: bool = False) -> None:
        """A first token after `ttft_ms`, for a request sent while `sent_beside` others
        were in flight on the deployment (`attempt_started`'s answer). Unknown (None): the
        others in flight now (the attempt itself is still counted: one fewer). `retried`:
        the time spans failed attempts and their backoff (or a 429's wait), which the load
        did not cause, so the slope does not learn from it."""
        s = self.get(deployment_id)
        now = self.clock()
        others = s.inflight - 1 if sent_beside is None else sent_beside
        if not retried:
            s.load.observe(ttft_ms, others, now)
            if self.journal is not None:
                self.journal.append(("load", deployment_id, ttft_ms, float(others)))
        unloaded = self._unloaded(s, ttft_ms, others, now)
        s.estimator.observe_ttft(unloaded, now)
        if self.journal is not None:
            self.journal.append(("ttft", deployment_id, unloaded, 0.0))

    def observe_censored(self, deployment_id: str, at_least_ms: float,
                         sent_beside: int | None = None) -> None:
        """An attempt given up before its first token (hedge loser, timeout). Not a point
        on the load line (only a bound on it): the slope does not learn from it."""
        s = self.get(deployment_id)
        now = self.clock()
        others = s.inflight - 1 if sent_beside is None else sent_beside
        unloaded = self._unloaded(s, at_least_ms, others, now)
        s.estimator.observe_censored(unloaded, now)
        if self.journal is not None:
            self.journal.append(("censored", deployment_id, unloaded, 0.0))

    def observe_rate(self, deployment_id: str, tokens_per_s: float) -> None:
        if tokens_per_s > 0:
            self.get(deployment_id).estimator.observe_decode(1000.0 / tokens_per_s,
                                                             self.clock())
            if self.journal is not None:
                self.journal.append(("decode", deployment_id, 1000.0 / tokens_per_s, 0.0))

    def observe_outcome(self, deployment_id: str, error_code: str | None,
                        duration_ms: float | None = None,
                        retry_after_s: float | None = None) -> None:
        s = self.get(deployment_id)
        s.requests += 1
        now = self.clock()
        if error_code is None:
            s.estimator.observe_outcome(False, now)
            if self.journal is not None:
                self.journal.append(("outcome", deployment_id, 0.0, -1.0))
            return
        s.failures += 1
        s.last_error = error_code
        if error_code == "rate_limited":
            # A quota answer, not an outage: cool down for its retry-after, count no failure.
            s.quota.cooling_until = now + (retry_after_s if retry_after_s is not None else 1.0)
            return
        s.estimator.observe_outcome(True, now, duration_ms)
        if self.journal is not None:
            self.journal.append(("outcome", deployment_id, 1.0,
                                 -1.0 if duration_ms is None else duration_ms))

    def observe_quota(self, deployment_id: str, delta: QuotaDelta) -> None:
        """The `x-ratelimit-remaining-*` (or `anthropic-ratelimit-*`) a response announced.
        Token resets unknown while tokens are announced short count as one second (a 429's
        default), so a deployment is not avoided forever on one old header."""
        q = self.get(deployment_id).quota
        now = self.clock()
        q.remaining_requests, q.remaining_tokens = delta.remaining_requests, delta.remaining_tokens
        q.remaining_input_tokens = delta.remaining_input_tokens
        q.remaining_output_tokens = delta.remaining_output_tokens
        q.reset_at = None if delta.reset_requests_s is None else now + delta.reset_requests_s
        tokens_reset = delta.reset_tokens_s
        announced = (delta.remaining_tokens, delta.remaining_input_tokens,
                     delta.remaining_output_tokens)
        if tokens_reset is None and any(v is not None for v in announced):
            tokens_reset = 1.0
        q.tokens_reset_at = None if tokens_reset is None else now + tokens_reset

    def attempt_started(self, deployment_id: str, input_tokens: int = 0,
                        output_tokens: int = 0) -> int:
        """An attempt was sent, expected to use these tokens (for quotas and `tpm`). Returns
        how many others were in flight on the deployment as it was sent: the load its TTFT
        is served under, for `observe_ttft` / `observe_censored`."""
        s = self.get(deployment_id)
        others = s.inflight
        s.inflight += 1
        now = self.clock()
        s.estimator.started(now)
        # The windows of a config `rpm` / `tpm` only, pruned here too (a route may not read
        # them): kept for every deployment, they grew by an entry per request for ever.
        limits = self._known.get(deployment_id)
        if limits is not None and (limits.rpm is not None or limits.tpm is not None):
            _prune(s.sent_in_window, now)
            s.sent_in_window.append((now, input_tokens + output_tokens))
        s.quota.take(input_tokens, output_tokens)
        return others

    def attempt_ended(self, deployment_id: str) -> None:
        s = self.get(deployment_id)
        s.inflight = max(0, s.inflight - 1)

    def inflight(self, deployment_id: str) -> int:
        s = self._by_id.get(deployment_id)
        return s.inflight if s is not None else 0

    # --- what the policy reads --------------------------------------------------------------

    def snapshot(self, dep: Deployment) -> Snapshot:
        cfg = self.routing
        return self.know(dep).estimator.snapshot(self.clock(), cfg.quantile,
                                                 cfg.budget_confidence)

    def wait_ms(self, dep: Deployment, input_tokens: int = 0, output_tokens: int = 0
                ) -> float:
        """How long a request expected to use these tokens, sent now, would wait for quota:
        a 429's retry-after still running, announced requests or tokens short of it until
        their reset, or the config `rpm` / `tpm` spent over the last minute."""
        s = self.know(dep)
        now, q, wait = self.clock(), s.quota, 0.0
        if q.cooling_until is not None and q.cooling_until > now:
            wait = q.cooling_until - now
        if q.remaining_requests == 0 and q.reset_at is not None and q.reset_at > now:
            wait = max(wait, q.reset_at - now)
        if (q.tokens_reset_at is not None and q.tokens_reset_at > now
                and q.short_of_tokens(input_tokens, output_tokens)):
            wait = max(wait, q.tokens_reset_at - now)
        if dep.rpm is not None:
            window = s.sent_in_window
            _prune(window, now)
            if len(window) >= dep.rpm:
                wait = max(wait, window[0][0] + 60.0 - now)
        if dep.tpm is not None:
            wait = max(wait, _tpm_wait_s(s.sent_in_window, dep.tpm,
                                         input_tokens + output_tokens, now))
        return wait * 1000.0

    def estimate_ttft_ms(self, dep: Deployment) -> float:
        return self.snapshot(dep).ttft_ms

    def estimate_tokens_per_s(self, dep: Deployment) -> float:
        return 1000.0 / self.snapshot(dep).ms_per_token

    def p95_ttft_ms(self, dep: Deployment) -> float:
        """The hedge delay of `after_ms: p95`: the estimator's decayed 95th percentile of
        TTFT (hedge losers in it as censored, "at least" observations) at the load a
        request meets now; twice the estimate while less than `HEDGE_MIN_WEIGHT` samples'
        worth backs it (so it follows the estimate back to the prior as it goes stale)."""
        est = self.know(dep).estimator
        now = self.clock()
        p95 = est.ttft_quantile(0.95, now, HEDGE_MIN_WEIGHT)
        if p95 is None:
            return 2 * self.estimate_ttft_ms(dep)
        return p95 * self.load_factor(dep.id, self.inflight(dep.id))

    def describe(self, dep: Deployment) -> dict[str, float | int | None]:
        """The live estimates of `dep`, for `health()` and `llm-router deployments`."""
        s = self.snapshot(dep)
        return {"ttft_ms": s.ttft_ms, "ttft_q_ms": s.ttft_q_ms, "quantile": s.quantile,
                "level": s.level,
                "ms_per_token": s.ms_per_token, "error_rate": s.error_rate,
                "weight": s.weight, "samples": s.samples, "age_s": s.age_s,
                "inflight": self.inflight(dep.id), "wait_ms": self.wait_ms(dep),
                "load_slope": self.load_slope(dep.id)}


def _tpm_wait_s(window: deque[tuple[float, int]], tpm: int, tokens: int, now: float) -> float:
    """Seconds until `tokens` more fit in the last minute's `tpm` (0: they fit now)."""
    _prune(window, now)
    used = sum(n for _, n in window)
    need = used + max(1, tokens) - tpm
    if need <= 0:
        return 0.0
    for started, n in window:  # the oldest expire first
        need -= n
        if need <= 0:
            return started + 60.0 - now
    return 60.0  # more than the whole quota: never fits, one window stands for it


def _prune(window: deque[tuple[float, int]], now: float) -> None:
    """Drop the attempts sent more than a minute before `now` (oldest first)."""
    while window and window[0][0] <= now - 60.0:
        window.popleft()
