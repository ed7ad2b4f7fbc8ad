"""`Emitter`: numbers the events of one request and builds its `error` event, with the
suggestion each error code carries."""

from __future__ import annotations

import time

from router.events import ErrorCode, ErrorEvent, build

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

    def error(self, code: ErrorCode, message: str, *, retryable: bool = False,
              deployment: str | None = None, status: int | None = None,
              suggestion: str | None = None) -> ErrorEvent:
        seq = self.seq
        self.seq += 1
        return build(
            ErrorEvent,
            request_id=self.request_id, seq=seq, elapsed_ms=self.elapsed_ms(), code=code,
            message=message, retryable=retryable, deployment=deployment, status=status,
            suggestion=suggestion or _SUGGESTIONS.get(code),
        )
