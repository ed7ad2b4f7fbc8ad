"""`routing:` in the config: how the estimator learns and how the policy explores.

The defaults are safe for one user on the embedded fleet: exploration is rare, touches only
under-measured candidates, and draws from a seeded generator, so a demo repeats itself."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    # Age at which an observation counts half; estimates drift to the prior past it.
    half_life_s: float = Field(default=15.0, gt=0)
    # Most sample weight an estimate holds: a busy deployment's estimate follows a change
    # within about this many requests, however short their ages.
    max_weight: float = Field(default=20.0, ge=1)
    # Quantile of TTFT and latency that `max_ttft_ms` / `max_latency_ms` are checked against.
    quantile: float = Field(default=0.9, gt=0, lt=1)
    # Standard errors of the empirical quantile a budget allows before it excludes: the
    # check reads the quantile at q - confidence * sqrt(q(1-q)/samples) (0: at q itself).
    budget_confidence: float = Field(default=1.0, ge=0, le=3)
    # Share of requests sent to the least-measured eligible candidate instead of the best.
    explore: float = Field(default=0.02, ge=0, le=0.5)
    # A candidate with less decayed sample weight than this is "under-measured".
    explore_below_weight: float = Field(default=3.0, gt=0)
    # A candidate over a latency budget (max_ttft_ms / max_latency_ms) on an estimate with
    # little fresh evidence may be re-measured too, at the exploration rate halved once per
    # probe that finds it still over, down to explore / 2**budget_probe_halvings.
    budget_probes: bool = True
    budget_probe_halvings: int = Field(default=4, ge=0, le=16)
    # Half-lives without a probe after which a halved probe rate doubles back: one that
    # really is slow is still probed about once a minute (each probe a likely miss), one
    # that changed after its probes stopped is found within minutes, not at the floor.
    budget_probe_recovery: float = Field(default=4.0, gt=0)
    # Optimism under uncertainty: rank scores shrink by up to this share with no evidence.
    optimism: float = Field(default=0.1, ge=0, lt=1)
    # How much slower a first token is per request already in flight on a deployment: the
    # prior of the slope each deployment's own TTFTs teach, and its least value until they
    # rule it out (`router.routing.load_model`).
    load_penalty: float = Field(default=0.05, ge=0)
    # The error rate a deployment is assumed to have before it is observed.
    prior_error_rate: float = Field(default=0.01, ge=0, lt=1)
    seed: int | None = 0  # None: a fresh random seed per router
