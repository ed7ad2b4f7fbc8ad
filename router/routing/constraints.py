"""`RouteConstraints`: what one request asks of its route. Its own module so that building
a request (`router.request`, loaded by `import router`) does not load the policy and its
estimators; those load with the first `Router`."""

from __future__ import annotations

from dataclasses import dataclass

from router.config.schema import Prefer
from router.records import fast_init


@fast_init
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
