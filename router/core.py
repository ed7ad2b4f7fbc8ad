"""`Router`: the configured fleet, its provider clients, live statistics and budgets.

`Router.stream()` returns an `EventStream` (async iterator of events; also an async context
manager). `Router.complete()` drains one into a `Completion` or raises the typed error.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, SecretStr

from providers.base import Provider, ProviderSettings, create_provider
from router.budgets.gate import BudgetGate, BudgetNotice
from router.config import Deployment, LoadedConfig, load_config
from router.config.catalog import Vendor, load_catalog
from router.errors import StreamError, error_for
from router.events import (
    DoneEvent,
    ErrorEvent,
    Event,
    FallbackEvent,
    FinishReason,
    Latency,
    ReasoningEvent,
    TextEvent,
    ToolCall,
    Usage,
)
from router.request import StreamParams, prepare
from router.serving.context import ServingContext

if TYPE_CHECKING:  # loaded with the first Router: kept off `import router` (asyncio, redis glue)
    from router.budgets.spend import ReportWindow, SpendReport
    from router.routing.policy import RouteDecision
    from router.serving.admission import Admission
    from router.serving.takeover import PriorAnswer


class Completion(BaseModel):
    """The whole answer of one request (what `complete()` returns)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    usage: Usage
    cost_usd: float
    latency: Latency
    finish_reason: FinishReason
    deployment: str
    provider: str
    model: str
    attempts: int
    request_id: str


class EventStream:
    """The events of one request. Iterate it; leave early with `aclose()` or `async with`
    to close the provider stream at once."""

    __slots__ = ("_agen", "request_id")

    def __init__(self, agen: AsyncIterator[Event], request_id: str) -> None:
        self._agen = agen
        self.request_id = request_id

    def __aiter__(self) -> AsyncIterator[Event]:
        # The pipeline's own generator: `async for` then reads it with no frame of ours per
        # event (`__anext__` stays for callers that step the stream by hand).
        return self._agen

    def __anext__(self) -> Any:
        return self._agen.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


RunSink = Callable[[str, "Mapping[str, Any] | Event"], object]


class Router:
    """Routes requests across the deployments of one config."""

    def __init__(self, config: LoadedConfig | str | os.PathLike[str] | None = None, *,
                 budgets: BudgetGate | None = None,
                 inflight: Callable[[str], int] | None = None) -> None:
        self.loaded = config if isinstance(config, LoadedConfig) else load_config(config)
        from router.budgets.manager import BudgetManager
        from router.routing.policy import RoutingPolicy
        from router.routing.stats import StatsRegistry

        self.stats = StatsRegistry(self.loaded.config.routing)
        from router.resilience.policies import Resilience
        from router.serving.admission import Admission

        admission = self.loaded.config.resilience.admission
        self.admission: Admission = Admission(
            {dep.id: dep.max_concurrency for dep in self.loaded.deployments.values()},
            max_queued=admission.max_queued, queue_timeout_s=admission.queue_timeout_s)
        # Streams in flight per deployment (slots held in admission): a plain callable.
        self.inflight: Callable[[str], int] = inflight or self.admission.inflight
        # Routing's load term reads the same counts (or the `inflight` given).
        self.policy = RoutingPolicy(
            self.stats, inflight=self.inflight,
            backoff_ms=self.loaded.config.resilience.retry.initial_backoff_ms)
        # Without budgets configured the manager still books spend for `spend()`.
        self.budgets: BudgetGate = budgets or BudgetManager.from_config(self.loaded)
        self._owns_budgets = budgets is None
        self.notices: list[BudgetNotice] = []
        self._providers: dict[str, Provider] = {}
        self._run_sinks: list[RunSink] = []
        self.resilience = Resilience(self.loaded)
        self._context: ServingContext | None = None
        self._key_sources: dict[str, tuple[LoadedConfig, tuple[SecretStr | None, str | None,
                                                               bool]]] = {}
        from router.serving.orchestrator import run_stream

        self._run_stream = run_stream  # imported once here, not on every request

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Router:
        return cls(load_config(path))

    # --- providers ------------------------------------------------------------------------

    def provider_settings(self, name: str) -> ProviderSettings:
        """The adapter's settings: config, completed by the catalog's vendor row."""
        cfg = self.loaded.config.providers[name]
        timeouts = self.loaded.config.resilience.timeouts
        base_url, options = cfg.base_url, dict(cfg.options)
        vendor = self._vendor(name)
        if vendor is not None:
            base_url = base_url or vendor.base_url
            options = {**vendor.options, "include_usage": vendor.include_usage, **options}
        api_key, key_env = self._credentials(name)
        return ProviderSettings(
            name=name, kind=cfg.kind, base_url=base_url, api_key=api_key,
            api_key_env=key_env, headers=cfg.headers,
            connect_timeout_s=cfg.connect_timeout_s or timeouts.connect_s,
            read_timeout_s=cfg.read_timeout_s or timeouts.total_s, options=options,
        )

    def provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = create_provider(self.provider_settings(name))
        return provider

    def set_provider(self, name: str, provider: Provider) -> None:
        """Use `provider` for the config's provider `name` (tests inject mocked clients)."""
        self._providers[name] = provider

    def _vendor(self, name: str) -> Vendor | None:
        cfg = self.loaded.config.providers[name]
        if cfg.vendor is None and cfg.kind not in ("openai", "openai_responses"):
            return None
        return load_catalog().vendors.get(cfg.vendor or "openai")

    def _credentials(self, name: str) -> tuple[SecretStr | None, str | None]:
        """The provider's key and the environment variable it comes from. A vendor row's
        variable is read from the environment when the config gives no key."""
        key, key_env, from_env = self._key_source(name)
        if from_env and key_env and os.environ.get(key_env):
            key = SecretStr(os.environ[key_env])
        return key, key_env

    def _key_source(self, name: str) -> tuple[SecretStr | None, str | None, bool]:
        """The configured key, its variable, and whether the key is read from that
        variable (at each use). From the (frozen) config: looked up once per provider,
        not for every candidate of every request."""
        loaded = self.loaded
        cached = self._key_sources.get(name)
        if cached is not None and cached[0] is loaded:
            return cached[1]
        cfg = loaded.config.providers[name]
        vendor = self._vendor(name)
        key_env = cfg.api_key_env or (vendor.api_key_env if vendor else None)
        source = (cfg.api_key, key_env, cfg.api_key is None and cfg.api_key_env is None)
        self._key_sources[name] = (loaded, source)
        return source

    def unavailable_reason(self, dep: Deployment) -> str | None:
        """Why `dep` cannot serve now, or None."""
        key, key_env, from_env = self._key_source(dep.provider)
        if key is None and key_env is not None and not (from_env and os.environ.get(key_env)):
            return f"missing_api_key: set {key_env}"
        return self.resilience.breakers.unavailable_reason(dep.id)

    # --- requests -------------------------------------------------------------------------

    def stream(self, input: str | Sequence[Mapping[str, Any]], *, task: str | None = None,
               model: str | None = None, prefer: str | None = None,
               max_ttft_ms: float | None = None, max_latency_ms: float | None = None,
               max_cost_usd: float | None = None, max_tokens: int | None = None,
               temperature: float | None = None, system: str | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None,
               tool_choice: str | Mapping[str, Any] | None = None,
               stop: str | Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None,
               response_format: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None,
               request_id: str | None = None,
               resume_from: PriorAnswer | None = None) -> EventStream:
        """`resume_from`: continue a stream whose serving instance died (the server's
        takeover), numbering events on from it."""
        # Positional, in the fields' order (`test_core` checks each lands in its field):
        # keywords would cost the call a dict, half of the construction's cost.
        stream_params = StreamParams(
            input, task, model, prefer, max_ttft_ms, max_latency_ms, max_cost_usd, max_tokens,
            temperature, system, tools, tool_choice, stop, metadata or {}, response_format,
            params)
        rid = request_id or os.urandom(16).hex()  # uuid4's randomness without `import uuid`
        if resume_from is not None:
            from router.serving.takeover import resume_stream

            return EventStream(resume_stream(self._serving_context(), stream_params, rid,
                                             resume_from), rid)
        return EventStream(self._run_stream(self._serving_context(), stream_params, rid), rid)

    def _serving_context(self) -> ServingContext:
        # Rebuilt when a part was swapped (tests and embedders may swap `resilience` or
        # `budgets`), else the last one rather than a new one per request. The two bound
        # methods compare equal (not identical) to the last ones unless replaced.
        ctx = self._context
        if ctx is None or not (
                ctx.loaded is self.loaded and ctx.stats is self.stats
                and ctx.resilience is self.resilience and ctx.budgets is self.budgets
                and ctx.policy is self.policy and ctx.admission is self.admission
                and ctx.provider == self.provider
                and ctx.unavailable_reason == self.unavailable_reason):
            ctx = self._context = ServingContext(
                self.loaded, self.stats, self.resilience, self.budgets, self.provider,
                self.unavailable_reason, self.policy, self.admission)
        return ctx

    async def complete(self, input: str | Sequence[Mapping[str, Any]],
                       **options: Any) -> Completion:
        """Drain `stream(...)` (same arguments) into a `Completion`, or raise the typed
        error of its `error` event."""
        text: list[str] = []
        reasoning: list[str] = []
        async with self.stream(input, **options) as events:
            async for ev in events:
                if isinstance(ev, TextEvent):
                    text.append(ev.delta)
                elif isinstance(ev, ReasoningEvent):
                    reasoning.append(ev.delta)
                elif isinstance(ev, FallbackEvent) and ev.mode == "restart":
                    text.clear()  # the next deployment streams the whole answer again
                    reasoning.clear()
                elif isinstance(ev, DoneEvent):
                    return Completion(
                        text="".join(text), reasoning="".join(reasoning),
                        tool_calls=ev.tool_calls, usage=ev.usage, cost_usd=ev.cost_usd,
                        latency=ev.latency, finish_reason=ev.finish_reason,
                        deployment=ev.deployment, provider=ev.provider, model=ev.model,
                        attempts=ev.attempts, request_id=ev.request_id)
                elif isinstance(ev, ErrorEvent):
                    raise error_for(ev)
        raise StreamError(ErrorEvent(request_id=events.request_id, seq=0, elapsed_ms=0.0,
                                     code="protocol_error", message="stream ended without a "
                                     "terminal event", retryable=False))

    def route(self, input: str | Sequence[Mapping[str, Any]], **options: Any) -> RouteDecision:
        """The routing decision for a request, calling no provider (a dry run)."""
        from router.routing.policy import choose_route

        req = prepare(StreamParams(input=input, **options), self.loaded)
        return choose_route(req.constraints, self.loaded.deployments, self.stats,
                            self.unavailable_reason)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per deployment: live statistics, availability and circuit breaker."""
        out: dict[str, dict[str, Any]] = {}
        breakers = self.resilience.breakers.snapshot(tuple(self.loaded.deployments))
        for dep in self.loaded.deployments.values():
            breaker = breakers.get(dep.id)
            s = self.stats.get(dep.id)
            out[dep.id] = {
                "available": self.unavailable_reason(dep) is None,
                "reason": self.unavailable_reason(dep),
                "ttft_ms": self.stats.estimate_ttft_ms(dep),
                "tokens_per_s": self.stats.estimate_tokens_per_s(dep),
                "observed": s.observed,
                "estimate": self.stats.describe(dep),
                "requests": s.requests,
                "failures": s.failures,
                "last_error": s.last_error,
                "breaker": breaker.as_dict() if breaker else {
                    "deployment": dep.id, "state": "closed", "fail_counter": 0,
                    "fail_max": self.loaded.config.resilience.breaker.fail_max,
                    "opened_at": None, "retry_at": None, "probe_in_flight": False},
            }
        return out

    async def spend(self, scope: str | None = None, window: ReportWindow = "day") -> SpendReport:
        """Spend in the current UTC hour, day or month per scope and deployment, and each
        budget's state. `scope`: `user` selects every user, `user:alice` one."""
        from router.budgets.manager import BudgetManager
        from router.budgets.spend import build_report

        if not isinstance(self.budgets, BudgetManager):
            raise TypeError("spend() needs the router's BudgetManager as its budget gate")
        return await build_report(self.budgets, scope, window)

    # --- run channels ---------------------------------------------------------------------

    def add_run_sink(self, sink: RunSink) -> Callable[[], None]:
        """Deliver `publish()`ed events to `sink` (the server's run channels register here).
        Returns a function that removes it."""
        self._run_sinks.append(sink)
        return lambda: self._run_sinks.remove(sink)

    def publish(self, run_id: str, event: Mapping[str, Any] | Event) -> int:
        """Publish an agent's own event (any JSON object with a `type`: step started, tool
        end, progress, …) or a router event into run `run_id`, so a UI following the run
        sees the whole workflow. Returns how many run channels took it (0 when no server
        runs with this router)."""
        for sink in self._run_sinks:
            sink(run_id, event)
        return len(self._run_sinks)

    # --- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        providers, self._providers = self._providers, {}
        for provider in providers.values():
            await provider.aclose()
        await self.resilience.aclose()
        from router.budgets.manager import BudgetManager

        if self._owns_budgets and isinstance(self.budgets, BudgetManager):
            await self.budgets.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
