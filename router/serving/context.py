"""`ServingContext`: the narrow view of its router that serving one request is handed.

The pipeline (orchestrator, failover, attempt, hedge) needs the config, the live statistics,
the routing policy, the resilience kit, the budget gate and a provider lookup; it gets
exactly these, never the `Router` facade that owns them, so no module below `router.core`
imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the resilience kit imports tenacity: only when the first router is built
    from providers.base import Provider
    from router.budgets.gate import BudgetGate
    from router.config.schema import Deployment, LoadedConfig
    from router.resilience.policies import Resilience
    from router.routing.policy import RoutingPolicy
    from router.routing.stats import StatsRegistry


@dataclass(frozen=True, slots=True)
class ServingContext:
    loaded: LoadedConfig
    stats: StatsRegistry
    resilience: Resilience
    budgets: BudgetGate
    provider: Callable[[str], Provider]
    # Why a deployment cannot serve now (missing key, open breaker), or None.
    unavailable_reason: Callable[[Deployment], str | None]
    policy: RoutingPolicy
