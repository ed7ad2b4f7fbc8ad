"""Live statistics per deployment: one `Estimator` each (decayed TTFT distribution, decode
rate, error rate), requests in flight, and the quota a vendor announced or a 429 imposed.
The serving pipeline reports into it; the policy reads `snapshot()`s from it. A recent-TTFT
window is kept for the hedge delay's percentile."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from router.config.schema import Deployment
from router.routing.estimator import Clock, Estimator, Prior, Snapshot
from router.routing.settings import RoutingConfig

WINDOW = 200  # recent TTFT samples kept for the hedge delay's percentile


@dataclass(slots=True)
class Quota:
    """What the vendor last said is left, and until when a 429 told us to wait."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_at: float | None = None  # clock time the remaining requests reset
    tokens_reset_at: float | None = None
    cooling_until: float | None = None  # clock time a 429's retry-after ends


@dataclass(slots=True)
class DeploymentStats:
    estimator: Estimator
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    inflight: int = 0
    started_in_window: deque[float] = field(default_factory=deque)  # for `rpm`
    quota: Quota = field(default_factory=Quota)
    recent_ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

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
                s = self._by_id[dep.id] = DeploymentStats(
                    Estimator(prior, self.routing.half_life_s, self.clock(),
                              self.routing.max_weight))
            else:
                s.estimator.prior = prior
        return s

    def get(self, deployment_id: str) -> DeploymentStats:
        s = self._by_id.get(deployment_id)
        if s is None:  # observed before routing knew it: neutral priors until `know()`
            prior = Prior(1000.0, 10.0, self.routing.prior_error_rate)
            s = self._by_id[deployment_id] = DeploymentStats(
                Estimator(prior, self.routing.half_life_s, self.clock(),
                              self.routing.max_weight))
        return s

    # --- what the serving pipeline reports --------------------------------------------------

    def observe_ttft(self, deployment_id: str, ttft_ms: float) -> None:
        s = self.get(deployment_id)
        s.estimator.observe_ttft(ttft_ms, self.clock())
        s.recent_ttft_ms.append(ttft_ms)
        if self.journal is not None:
            self.journal.append(("ttft", deployment_id, ttft_ms, 0.0))

    def observe_censored(self, deployment_id: str, at_least_ms: float) -> None:
        """An attempt given up before its first token (hedge loser, timeout)."""
        self.get(deployment_id).estimator.observe_censored(at_least_ms, self.clock())
        if self.journal is not None:
            self.journal.append(("censored", deployment_id, at_least_ms, 0.0))

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

    def observe_quota(self, deployment_id: str, remaining_requests: int | None,
                      remaining_tokens: int | None, reset_s: float | None,
                      tokens_reset_s: float | None = None) -> None:
        """The `x-ratelimit-remaining-*` (or `anthropic-ratelimit-*`) a response announced."""
        q = self.get(deployment_id).quota
        now = self.clock()
        q.remaining_requests, q.remaining_tokens = remaining_requests, remaining_tokens
        q.reset_at = None if reset_s is None else now + reset_s
        q.tokens_reset_at = None if tokens_reset_s is None else now + tokens_reset_s

    def attempt_started(self, deployment_id: str) -> None:
        s = self.get(deployment_id)
        s.inflight += 1
        s.started_in_window.append(self.clock())
        if s.quota.remaining_requests is not None:
            s.quota.remaining_requests = max(0, s.quota.remaining_requests - 1)

    def attempt_ended(self, deployment_id: str) -> None:
        s = self.get(deployment_id)
        s.inflight = max(0, s.inflight - 1)

    def inflight(self, deployment_id: str) -> int:
        s = self._by_id.get(deployment_id)
        return s.inflight if s is not None else 0

    # --- what the policy reads --------------------------------------------------------------

    def snapshot(self, dep: Deployment) -> Snapshot:
        return self.know(dep).estimator.snapshot(self.clock(), self.routing.quantile)

    def wait_ms(self, dep: Deployment) -> float:
        """How long a request sent now would wait for quota: a 429's retry-after still
        running, announced requests used up until their reset, or the config `rpm` spent."""
        s = self.know(dep)
        now, q, wait = self.clock(), s.quota, 0.0
        if q.cooling_until is not None and q.cooling_until > now:
            wait = q.cooling_until - now
        if q.remaining_requests == 0 and q.reset_at is not None and q.reset_at > now:
            wait = max(wait, q.reset_at - now)
        if q.remaining_tokens == 0 and q.tokens_reset_at is not None and (
                q.tokens_reset_at > now):
            wait = max(wait, q.tokens_reset_at - now)
        if dep.rpm is not None:
            window = s.started_in_window
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= dep.rpm:
                wait = max(wait, window[0] + 60.0 - now)
        return wait * 1000.0

    def estimate_ttft_ms(self, dep: Deployment) -> float:
        return self.snapshot(dep).ttft_ms

    def estimate_tokens_per_s(self, dep: Deployment) -> float:
        return 1000.0 / self.snapshot(dep).ms_per_token

    def p95_ttft_ms(self, dep: Deployment) -> float:
        """95th percentile of recent TTFTs, or twice the estimate before enough samples."""
        s = self._by_id.get(dep.id)
        if s is None or len(s.recent_ttft_ms) < 20:
            return 2 * self.estimate_ttft_ms(dep)
        ordered = sorted(s.recent_ttft_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def describe(self, dep: Deployment) -> dict[str, float | int | None]:
        """The live estimates of `dep`, for `health()` and `llm-router deployments`."""
        s = self.snapshot(dep)
        return {"ttft_ms": s.ttft_ms, "ttft_q_ms": s.ttft_q_ms, "quantile": s.quantile,
                "ms_per_token": s.ms_per_token, "error_rate": s.error_rate,
                "weight": s.weight, "samples": s.samples, "age_s": s.age_s,
                "inflight": self.inflight(dep.id), "wait_ms": self.wait_ms(dep)}
