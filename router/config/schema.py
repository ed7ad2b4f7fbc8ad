"""Config v1's schema: the pydantic models of the YAML file, and the resolved `Deployment`
and `LoadedConfig` the router works with. Each field's constraint is stated here once;
`router.config.loading` turns a validation failure into a `ConfigError` naming the path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from router.budgets.windows import Window
from router.routing.settings import RoutingConfig

Capability = Literal["tools", "reasoning", "prefill", "vision", "structured_output"]
Prefer = Literal["cost", "latency", "quality", "balanced"]
ProviderKind = Literal["simulated", "anthropic", "openai", "openai_compatible", "openai_responses",
                       "ollama", "gemini"]
ResumePolicy = Literal["continue", "restart", "fail"]

class _Strict(BaseModel):
    # No NaN or infinity anywhere: `limit_usd: .inf` once passed `config check`, then crashed.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


class Price(_Strict):
    input_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float = Field(ge=0)


class LatencyPrior(_Strict):
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)


class ProviderConfig(_Strict):
    kind: ProviderKind
    base_url: str | None = None
    api_key: SecretStr | None = None
    # The environment variable the key comes from: named in errors when it is unset.
    api_key_env: str | None = None
    vendor: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    read_timeout_s: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class DeploymentConfig(_Strict):
    id: str = Field(min_length=1)
    provider: str
    model: str
    catalog: str | None = None
    price: Price | None = None
    context_window: int | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, gt=0)  # requests per minute the vendor allows
    tpm: int | None = Field(default=None, gt=0)  # tokens per minute
    max_output_tokens: int | None = Field(default=None, gt=0)
    default_max_tokens: int | None = Field(default=None, gt=0)
    latency_prior: LatencyPrior | None = None
    quality: float | None = Field(default=None, ge=0, le=1)
    capabilities: list[Capability] | None = None
    # Streams in flight at once; None takes `resilience.admission.max_concurrency`.
    max_concurrency: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class HedgeConfig(_Strict):
    enabled: bool = False
    after_ms: float | Literal["p95"] = "p95"


class TaskConfig(_Strict):
    candidates: list[str] = Field(min_length=1)
    prefer: Prefer | None = None
    max_ttft_ms: float | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    expected_output_tokens: int | None = Field(default=None, gt=0)
    requires: list[Capability] = Field(default_factory=list)
    system: str | None = None
    hedge: HedgeConfig | None = None
    description: str | None = None


class Defaults(_Strict):
    task: str | None = None
    prefer: Prefer = "balanced"
    expected_output_tokens: int = Field(default=500, gt=0)
    max_tokens: int = Field(default=1024, gt=0)


class RetryConfig(_Strict):
    attempts: int = Field(default=3, ge=1)
    initial_backoff_ms: float = Field(default=200, ge=0)
    max_backoff_ms: float = Field(default=5000, ge=0)
    honor_retry_after: bool = True
    budget_ms: float = Field(default=30000, ge=0)


class BreakerConfig(_Strict):
    fail_max: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=30, gt=0)
    # Also open when at least `failure_rate` of the last `window_s` seconds' calls failed,
    # once `min_calls` were made in it (resilience4j's failure-rate threshold). None: off.
    failure_rate: float | None = Field(default=None, gt=0, le=1)
    min_calls: int = Field(default=10, ge=1)
    window_s: float = Field(default=60, gt=0)


class TimeoutsConfig(_Strict):
    connect_s: float = Field(default=5, gt=0)
    ttft_s: float = Field(default=15, gt=0)
    idle_s: float = Field(default=30, gt=0)
    total_s: float = Field(default=600, gt=0)


class AdmissionConfig(_Strict):
    """Per-deployment concurrency limit (router.serving.admission): past `max_concurrency`
    streams in flight, a request waits in a FIFO of at most `max_queued` for at most
    `queue_timeout_s`, then goes to the next candidate or ends with `overloaded`."""

    max_concurrency: int = Field(default=512, ge=1)
    max_queued: int = Field(default=1024, ge=0)
    queue_timeout_s: float = Field(default=5, gt=0)


class ResilienceConfig(_Strict):
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    resume: ResumePolicy = "continue"
    hedge: HedgeConfig = Field(default_factory=HedgeConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)


class ApiKeyConfig(_Strict):
    """One server API key, stored as the SHA-256 hex of the key (never the key itself)."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scope: str | None = None  # budget scope (`metadata["key"]`); defaults to `name`
    rate_per_min: float | None = Field(default=None, gt=0)


class ServerLimitsConfig(_Strict):
    """What one client may hold of the server (see router/server/limits.py)."""

    header_timeout_s: float = Field(default=10, gt=0)  # request line and headers, whole
    body_timeout_s: float = Field(default=30, gt=0)  # request body, whole
    max_connections: int = Field(default=2048, ge=1)
    # Per client IP address. Half the total: one agent host (or the load balancer in front)
    # may hold 500+ streams, while one abuser cannot take every slot.
    max_connections_per_client: int = Field(default=1024, ge=1)
    ws_auth_max_bytes: int = Field(default=4096, ge=64)  # a frame before `auth`
    run_max_bytes_per_key: int = Field(default=64 * 1024 * 1024, ge=1024)
    run_max_events_per_key: int = Field(default=200_000, ge=16)
    run_max_runs_per_key: int = Field(default=1000, ge=1)


class ResponsesConfig(_Strict):
    """What `POST /v1/responses` remembers of its answers, per API key, for
    `item_reference` and `previous_response_id` (`router.server.response_items`)."""

    max_items_per_key: int = Field(default=10_000, ge=1)
    # A conversation is kept whole per turn, so a long `previous_response_id` chain grows
    # with the square of its turns: bytes, not entries, are what bound the memory.
    max_bytes_per_key: int = Field(default=64 * 1024 * 1024, ge=1024)
    ttl_s: float = Field(default=3600, gt=0, le=30 * 86400)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    heartbeat_s: float = Field(default=15, gt=0)
    retention_s: float = Field(default=300, ge=0)
    # Finished streams kept for resume, all together: past it the longest finished go
    # first (memory would otherwise grow with throughput times `retention_s`).
    max_retained_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    max_log_events: int = Field(default=20000, ge=16)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    log_prompts: bool = False
    # uvicorn's access log, a line per request: off by default (~4% of the server's CPU at
    # c=50, and the server logs its own line per stream). Keys in it are redacted.
    access_log: bool = False
    shutdown_grace_s: float = Field(default=10, ge=0)
    limits: ServerLimitsConfig = Field(default_factory=ServerLimitsConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)


_SCOPE = re.compile(r"^(key|user|session|global|task:[^\s|]+)$")


class BudgetConfig(BaseModel):
    """One entry of `budgets:` in the config."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True,
                              allow_inf_nan=False)
    scope: str
    limit_usd: float = Field(gt=0)
    window: str = "day"
    warn_at: float | None = Field(default=None, gt=0, le=1)

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, value: str) -> str:
        if not _SCOPE.match(value):
            raise ValueError(f"invalid scope {value!r} (expected key, user, session, global "
                             "or task:<name>)")
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        Window.parse(value)
        return value


class StateConfig(BaseModel):
    """`state:` in the config: where shared state lives. `redis` keeps spend across router
    restarts and shares it between router processes."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True,
                              allow_inf_nan=False)
    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "llmr:"
    # Every call to the store is bounded: a hung or dead Redis costs a request at most
    # about connect + socket timeout, never a frozen event loop.
    connect_timeout_s: float = Field(default=0.5, gt=0, le=60, allow_inf_nan=False)
    socket_timeout_s: float = Field(default=0.5, gt=0, le=60, allow_inf_nan=False)
    # The store unreachable: `fail_open` serves on per-process breakers and budgets and
    # journals spend to book it when the store returns; `fail_closed` refuses new
    # requests with `state_unavailable` (HTTP 503).
    on_unavailable: Literal["fail_open", "fail_closed"] = "fail_open"
    # A reservation is a lease of the request's `total_s` timeout plus this slack: a dead
    # process holds a budget for one lease time at most.
    lease_slack_s: float = Field(default=30.0, ge=0, le=86400, allow_inf_nan=False)
    # Spend of a long stream is booked every this many seconds (a kill -9 loses at most
    # the last increment).
    book_every_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    # Spend waiting for the store while it is unavailable (settles); when full, new
    # requests are refused with `state_unavailable` rather than spend be lost.
    journal_max: int = Field(default=100_000, ge=1)
    # `per_key`: `user` and `session` budget scopes are namespaced by the caller's key
    # (`user:<key>/ann`), so one tenant cannot spend another's budget. `shared` is for a
    # trusted single tenant whose keys share users.
    user_scopes: Literal["per_key", "shared"] = "per_key"
    # The shared event log (Redis Streams): how long events wait to be written together
    # (readers elsewhere see them at most this much later), and how long an instance may
    # be silent before its running streams count as orphaned and another takes them over.
    event_flush_ms: float = Field(default=10.0, ge=0, le=1000, allow_inf_nan=False)
    # A stream's text deltas wait up to this long (or 20 of them) to be written together;
    # its first text, and every other event, go with the next flush.
    event_batch_ms: float = Field(default=100.0, ge=0, le=5000, allow_inf_nan=False)
    stream_lease_s: float = Field(default=3.0, gt=0, le=3600, allow_inf_nan=False)
    # Events delivered while Redis is unavailable, waiting to be written to the shared log
    # when it returns (over all streams and runs). Past it, the streams waiting longest are
    # no longer shared: a resume of one elsewhere answers 410 `events_lost`.
    event_backlog_max: int = Field(default=100_000, ge=1)
    # How often each instance merges its routing statistics with the others' (the bound on
    # how stale another instance's observations are when this one routes on them).
    stats_sync_s: float = Field(default=2.0, gt=0, le=3600, allow_inf_nan=False)


class RouterConfig(_Strict):
    version: Literal[1] = 1
    providers: dict[str, ProviderConfig]
    deployments: list[DeploymentConfig] = Field(min_length=1)
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    state: StateConfig = Field(default_factory=StateConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment with every catalog default resolved: what the router works with."""

    id: str
    provider: str
    provider_kind: str
    model: str
    price: Price
    context_window: int
    max_output_tokens: int | None
    default_max_tokens: int
    latency_prior: LatencyPrior
    quality: float
    capabilities: frozenset[str]
    options: Mapping[str, Any]
    rpm: int | None = None  # the vendor's request and token limits per minute, if known
    tpm: int | None = None
    # The sampling parameters (`providers.base.SAMPLING_PARAMS`) this deployment can honour.
    params: frozenset[str] = frozenset()
    # Resolved: the deployment's own, else resilience.admission.max_concurrency.
    max_concurrency: int = AdmissionConfig.model_fields["max_concurrency"].default


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config, its source, and its deployments resolved against the catalog."""

    source: str
    config: RouterConfig
    deployments: Mapping[str, Deployment]
