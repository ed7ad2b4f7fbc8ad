"""The orchestration of one request: route, attempt, fail over, account, end.

`run_stream` yields the public events of one request. The per-chunk loop in `_attempt` is
the hot path: it builds events without validation and only stores timestamps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from providers.base import (
    CLIENT_ERROR_CODES,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
    estimate_tokens,
)
from router.accounting import Ledger
from router.budget_gate import BudgetNotice, Refusal
from router.config import Deployment
from router.events import (
    BudgetEvent,
    Candidate,
    ErrorCode,
    ErrorEvent,
    Event,
    FallbackEvent,
    RouteEvent,
    StartEvent,
    reasoning_event,
    text_event,
    tool_call_event,
)
from router.policy import RouteDecision, choose_route
from router.request import PreparedRequest, RequestError, StreamParams, prepare
from router.spend import costs_by_deployment
from router.watchdog import Watchdog

if TYPE_CHECKING:
    from router.core import Router

_SUGGESTIONS: dict[str, str] = {
    "no_route": "relax max_ttft_ms / max_latency_ms / max_cost_usd, or add candidates to the task",
    "auth": "check the provider's API key",
    "bad_request": "fix the request; it was refused as invalid",
    "context_length": "shorten the input or add a larger-context candidate",
    "content_filter": "rephrase the request",
    "budget_exceeded": "raise the budget or wait for its window to roll over",
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
        return ErrorEvent.model_construct(
            request_id=self.request_id, seq=seq, elapsed_ms=self.elapsed_ms(), code=code,
            message=message, retryable=retryable, deployment=deployment, status=status,
            suggestion=suggestion or _SUGGESTIONS.get(code),
        )


def route_event(em: Emitter, decision: RouteDecision) -> RouteEvent:
    chosen = decision.chosen
    candidates = [
        Candidate.model_construct(
            deployment=e.deployment.id, eligible=e.eligible,
            reason=e.reason if not e.eligible else ("chosen" if e is chosen else "eligible"),
            estimated_cost_usd=e.cost_usd, estimated_ttft_ms=e.ttft_ms,
            estimated_latency_ms=e.latency_ms,
        )
        for e in decision.candidates
    ]
    seq = em.seq
    em.seq += 1
    return RouteEvent.model_construct(
        request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(),
        deployment=chosen.deployment.id if chosen else None,
        provider=chosen.deployment.provider if chosen else None,
        model=chosen.deployment.model if chosen else None,
        reason=decision.reason,
        estimated_cost_usd=chosen.cost_usd if chosen else None,
        estimated_ttft_ms=chosen.ttft_ms if chosen else None,
        estimated_latency_ms=chosen.latency_ms if chosen else None,
        candidates=candidates,
    )


class AttemptFailed(Exception):
    """An attempt ended with a provider error; `after_tokens` content deltas had been
    emitted by it."""

    def __init__(self, error: ProviderError, after_tokens: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.after_tokens = after_tokens


def provider_request(dep: Deployment, req: PreparedRequest) -> ProviderRequest:
    max_tokens = req.max_tokens or dep.default_max_tokens
    if dep.max_output_tokens is not None:
        max_tokens = min(max_tokens, dep.max_output_tokens)
    return ProviderRequest(
        model=dep.model, messages=req.messages, system=req.system, max_tokens=max_tokens,
        temperature=req.temperature, tools=req.tools, tool_choice=req.tool_choice,
        stop=req.stop, options=dep.options,
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
        yield em.error("no_route", "no eligible deployment: " + decision.explain_exclusions())
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
        async with aclosing(_serve(router, req, decision, em, ledger)) as served:
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
    return BudgetEvent.model_construct(
        request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(), scope=notice.scope,
        spent_usd=notice.spent_usd, limit_usd=notice.limit_usd, level=notice.level)


async def _serve(router: Router, req: PreparedRequest, decision: RouteDecision, em: Emitter,
                 ledger: Ledger) -> AsyncGenerator[Event, None]:
    """Try the ranked candidates in order; on success `ledger.finish` is set, on failure
    `ledger.failure`."""
    ranked = decision.ranked
    first_error: ProviderError | None = None
    last_dep: Deployment | None = None
    for i, est in enumerate(ranked):
        dep = est.deployment
        last_dep = dep
        try:
            async with aclosing(_attempt(router, dep, req, em, ledger)) as events:
                async for event in events:
                    yield event
            return
        except AttemptFailed as failed:
            err = failed.error
            first_error = first_error or err
            nxt = ranked[i + 1].deployment if i + 1 < len(ranked) else None
            client_error = err.code in CLIENT_ERROR_CODES and err.code != "context_length"
            if nxt is None or failed.after_tokens > 0 or client_error:
                break
            seq = em.seq
            em.seq += 1
            yield FallbackEvent.model_construct(
                request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(),
                from_deployment=dep.id, to_deployment=nxt.id, error=err.code,
                after_tokens=0, mode=None)
    assert first_error is not None and last_dep is not None
    ledger.failure = (first_error, last_dep.id)


async def _attempt(router: Router, dep: Deployment, req: PreparedRequest, em: Emitter,
                   ledger: Ledger) -> AsyncGenerator[Event, None]:
    """One call to one deployment. Yields its events; raises AttemptFailed."""
    preq = provider_request(dep, req)
    provider = router.provider(dep.provider)
    attempt = ledger.begin(dep, estimate_tokens(req.system or "") + req.constraints.input_tokens)
    seq = em.seq
    em.seq += 1
    yield StartEvent.model_construct(
        request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(), deployment=dep.id,
        provider=dep.provider, model=dep.model, attempt=attempt.number, hedge=False)
    timeouts = router.loaded.config.resilience.timeouts
    wd = Watchdog(timeouts.ttft_s, timeouts.idle_s, timeouts.total_s)
    upstream = provider.stream(preq)
    anext_ = upstream.__anext__
    rid = em.request_id
    clock, t0 = em.clock, em.t0
    time_ = wd.time
    try:
        while True:
            wd.waiting_since = time_()
            try:
                delta = await anext_()
            except StopAsyncIteration:
                break
            wd.waiting_since = None
            kind = type(delta)
            if kind is TextDelta:
                text: str = delta.text  # type: ignore[union-attr]
                if not wd.got_content:
                    wd.got_content = True
                    ledger.first_content(router.stats)
                seq = em.seq
                em.seq = seq + 1
                yield text_event(rid, seq, (clock() - t0) * 1000.0, text)
                if attempt.add_output(text):
                    attempt.finish = "budget"
                    break
            elif kind is ReasoningDelta:
                text = delta.text  # type: ignore[union-attr]
                if not wd.got_content:
                    wd.got_content = True
                    ledger.first_content(router.stats)
                seq = em.seq
                em.seq = seq + 1
                yield reasoning_event(rid, seq, (clock() - t0) * 1000.0, text)
                if attempt.add_output(text, reasoning=True):
                    attempt.finish = "budget"
                    break
            elif kind is ToolCallDelta:
                assert isinstance(delta, ToolCallDelta)
                if not wd.got_content:
                    wd.got_content = True
                    ledger.first_content(router.stats)
                attempt.add_tool_fragment(delta)
                seq = em.seq
                em.seq = seq + 1
                yield tool_call_event(rid, seq, (clock() - t0) * 1000.0, delta.index,
                                      delta.id, delta.name, delta.arguments)
                if attempt.add_output(delta.arguments):
                    attempt.finish = "budget"
                    break
            elif kind is UsageDelta:
                assert isinstance(delta, UsageDelta)
                attempt.set_usage(delta)
            elif kind is FinishDelta:
                assert isinstance(delta, FinishDelta)
                attempt.finish = delta.reason
        if attempt.finish is None:
            raise ProviderError("protocol_error", "stream ended without a finish marker")
    except ProviderError as err:
        wd.disarm()
        router.stats.observe_outcome(dep.id, err.code)
        raise AttemptFailed(err, attempt.content_deltas) from None
    except asyncio.CancelledError:
        wd.disarm()
        timeout = wd.expired()
        if timeout is None:
            raise
        router.stats.observe_outcome(dep.id, timeout.code)
        raise AttemptFailed(timeout, attempt.content_deltas) from None
    finally:
        wd.disarm()
        close = getattr(upstream, "aclose", None)
        if close is not None:
            await close()
        ledger.end_attempt(router.stats)
    router.stats.observe_outcome(dep.id, None)
    ledger.finish = attempt.finish
