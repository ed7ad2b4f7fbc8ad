"""`Emitter`: numbers the events of one request and builds the events the serving loop
announces (`start`, `retry`, `fallback`, and `error` with the suggestion each error code
carries)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from router.events import (
    ErrorCode,
    ErrorEvent,
    FallbackEvent,
    ResumeMode,
    RetryEvent,
    StartEvent,
    build,
    build_whole,
)

if TYPE_CHECKING:
    from router.config.schema import Deployment

_SUGGESTIONS: dict[str, str] = {
    "no_route": "relax max_ttft_ms / max_latency_ms / max_cost_usd, or add candidates to the task",
    "auth": "check the provider's API key",
    "bad_request": "fix the request; it was refused as invalid",
    "context_length": "shorten the input or add a larger-context candidate",
    "content_filter": "rephrase the request",
    "budget_exceeded": "raise the budget or wait for its window to roll over",
    "rate_limited": "retry later, or add candidates on other providers to the task",
    "overloaded": "retry later, or add candidates on other providers to the task",
    "circuit_open": "the deployments failed repeatedly; retry after the breaker's "
                    "reset_timeout_s, or add candidates on other providers",
    "timeout": "raise resilience.timeouts (ttft_s, idle_s, total_s), or add faster candidates",
    "connection": "check the provider's base_url and the network; add candidates as fallbacks",
    "provider_error": "retry later, or add candidates on other providers to the task",
    "protocol_error": "the provider broke its stream protocol; retry, or add fallback candidates",
    "cancelled": "the stream was cancelled before it finished",
}


class Emitter:
    """Numbers events (`seq` from 0) and stamps `elapsed_ms` for one request."""

    __slots__ = ("clock", "request_id", "seq", "t0")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.seq = 0
        self.clock = time.perf_counter
        self.t0 = self.clock()

    def elapsed_ms(self) -> float:
        return (self.clock() - self.t0) * 1000.0

    def _next(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def start(self, dep: Deployment, attempt: int, hedge: bool) -> StartEvent:
        return build_whole(StartEvent, {
            "request_id": self.request_id, "seq": self._next(), "elapsed_ms": self.elapsed_ms(),
            "type": "start", "deployment": dep.id, "provider": dep.provider, "model": dep.model,
            "attempt": attempt, "hedge": hedge})

    def retry(self, dep: Deployment, attempt: int, error: ErrorCode,
              delay_s: float) -> RetryEvent:
        return build(
            RetryEvent,
            request_id=self.request_id, seq=self._next(), elapsed_ms=self.elapsed_ms(),
            deployment=dep.id, attempt=attempt, error=error, delay_ms=delay_s * 1000.0)

    def fallback(self, src: Deployment, dst: Deployment, error: ErrorCode, after_tokens: int,
                 mode: ResumeMode | None) -> FallbackEvent:
        return build(
            FallbackEvent,
            request_id=self.request_id, seq=self._next(), elapsed_ms=self.elapsed_ms(),
            from_deployment=src.id, to_deployment=dst.id, error=error,
            after_tokens=after_tokens, mode=mode)

    def error(self, code: ErrorCode, message: str, *, retryable: bool = False,
              deployment: str | None = None, status: int | None = None,
              suggestion: str | None = None) -> ErrorEvent:
        return build(
            ErrorEvent,
            request_id=self.request_id, seq=self._next(), elapsed_ms=self.elapsed_ms(), code=code,
            message=message, retryable=retryable, deployment=deployment, status=status,
            suggestion=suggestion or _SUGGESTIONS.get(code),
        )
