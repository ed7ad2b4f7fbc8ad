"""Live latency statistics per deployment: decayed averages of observed time to first token
and output rate, and a window of recent TTFTs for percentiles (hedging). Routing uses them
once a deployment has been observed, and the config priors before."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from router.config.schema import Deployment

DECAY = 0.2  # weight of the newest observation in the moving averages
WINDOW = 200  # recent TTFT samples kept for percentiles


@dataclass(slots=True)
class DeploymentStats:
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    recent_ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


class StatsRegistry:
    """In-process statistics; each router instance measures what it observes."""

    def __init__(self) -> None:
        self._by_id: dict[str, DeploymentStats] = {}

    def get(self, deployment_id: str) -> DeploymentStats:
        stats = self._by_id.get(deployment_id)
        if stats is None:
            stats = self._by_id[deployment_id] = DeploymentStats()
        return stats

    def observe_ttft(self, deployment_id: str, ttft_ms: float) -> None:
        s = self.get(deployment_id)
        s.ttft_ms = ttft_ms if s.ttft_ms is None else s.ttft_ms + DECAY * (ttft_ms - s.ttft_ms)
        s.recent_ttft_ms.append(ttft_ms)

    def observe_rate(self, deployment_id: str, tokens_per_s: float) -> None:
        s = self.get(deployment_id)
        prev = s.tokens_per_s
        s.tokens_per_s = tokens_per_s if prev is None else prev + DECAY * (tokens_per_s - prev)

    def observe_outcome(self, deployment_id: str, error_code: str | None) -> None:
        s = self.get(deployment_id)
        s.requests += 1
        if error_code is not None:
            s.failures += 1
            s.last_error = error_code

    def estimate_ttft_ms(self, dep: Deployment) -> float:
        s = self._by_id.get(dep.id)
        return s.ttft_ms if s is not None and s.ttft_ms is not None else dep.latency_prior.ttft_ms

    def estimate_tokens_per_s(self, dep: Deployment) -> float:
        s = self._by_id.get(dep.id)
        if s is not None and s.tokens_per_s is not None:
            return s.tokens_per_s
        return dep.latency_prior.tokens_per_s

    def p95_ttft_ms(self, dep: Deployment) -> float:
        """95th percentile of recent TTFTs, or twice the prior before enough samples."""
        s = self._by_id.get(dep.id)
        if s is None or len(s.recent_ttft_ms) < 20:
            return 2 * self.estimate_ttft_ms(dep)
        ordered = sorted(s.recent_ttft_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
