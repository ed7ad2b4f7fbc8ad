"""The orchestration of one request: route, attempt, fail over, account, end.

`run_stream` yields the public events of one request: route, budget reservation, then
`router.serving.failover` serves it over the ranked candidates (retries, hedging, failover with
continuation), and the terminal event. The per-chunk hot path is `router.serving.attempt`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from router.budgets.gate import BudgetNotice, Refusal
from router.budgets.spend import costs_by_deployment
from router.events import (
    BudgetEvent,
    Candidate,
    ErrorCode,
    ErrorEvent,
    Event,
    RouteEvent,
    build,
)
from router.request import RequestError, StreamParams, prepare
from router.routing.policy import RouteDecision, choose_route
from router.serving.failover import Failover
from router.serving.ledger import Ledger

if TYPE_CHECKING:
    from router.core import Router

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


def route_event(em: Emitter, decision: RouteDecision) -> RouteEvent:
    chosen = decision.chosen
    candidates = [
        build(
            Candidate, deployment=e.deployment.id, eligible=e.eligible,
            reason=e.reason if not e.eligible else ("chosen" if e is chosen else "eligible"),
            estimated_cost_usd=e.cost_usd, estimated_ttft_ms=e.ttft_ms,
            estimated_latency_ms=e.latency_ms,
        )
        for e in decision.candidates
    ]
    seq = em.seq
    em.seq += 1
    return build(
        RouteEvent, request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(),
        deployment=chosen.deployment.id if chosen else None,
        provider=chosen.deployment.provider if chosen else None,
        model=chosen.deployment.model if chosen else None,
        reason=decision.reason,
        estimated_cost_usd=chosen.cost_usd if chosen else None,
        estimated_ttft_ms=chosen.ttft_ms if chosen else None,
        estimated_latency_ms=chosen.latency_ms if chosen else None,
        candidates=candidates,
    )


async def run_stream(router: Router, params: StreamParams, request_id: str) -> AsyncIterator[Event]:
    em = Emitter(request_id)
    try:
        req = prepare(params, router.loaded)
    except RequestError as exc:
        yield em.error(exc.code, exc.message, suggestion=exc.suggestion)
        return
    decision = choose_route(req.constraints, router.loaded.deployments, router.stats,
                            router.unavailable_reason)
    yield route_event(em, decision)
    chosen = decision.chosen
    if chosen is None:
        # Every candidate's breaker is open: say so (it heals by itself), not `no_route`.
        tripped = all(e.reason == "circuit_open" for e in decision.candidates)
        yield em.error("circuit_open" if tripped else "no_route",
                       "no eligible deployment: " + decision.explain_exclusions(),
                       retryable=tripped)
        return
    reservation = await router.budgets.reserve(req, chosen.cost_usd, req.constraints.max_cost_usd)
    if isinstance(reservation, Refusal):
        yield em.error("budget_exceeded", reservation.message)
        return
    ledger = Ledger(em, reservation.limit_usd)
    settled = False
    try:
        # aclosing: closing this generator must close the provider stream at once, not
        # whenever the abandoned inner generators are garbage collected.
        ranked = [e.deployment for e in decision.ranked]
        failover = Failover(router, req, ranked, em, ledger)
        async with aclosing(failover.run()) as served:
            async for event in served:
                yield event
        settled = True
        stopped = ledger.finish == "budget"
        for notice in await reservation.settle(ledger.cost_usd(), stopped,
                                               costs_by_deployment(ledger)):
            yield budget_event(em, notice)
        failure = ledger.failure
        if failure is None:
            yield ledger.done_event(ledger.finish or "stop")
        else:
            err, dep_id = failure
            yield em.error(err.code, err.message, retryable=err.retryable, deployment=dep_id,
                           status=err.status)
    finally:
        if not settled:  # cancelled by the caller: the spend still counts
            await reservation.settle(ledger.cost_usd(), False, costs_by_deployment(ledger))


def budget_event(em: Emitter, notice: BudgetNotice) -> BudgetEvent:
    seq = em.seq
    em.seq += 1
    return build(
        BudgetEvent,
        request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(), scope=notice.scope,
        spent_usd=notice.spent_usd, limit_usd=notice.limit_usd, level=notice.level)
