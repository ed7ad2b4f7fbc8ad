"""The orchestration of one request: route, attempt, fail over, account, end.

`run_stream` yields the public events of one request: route, budget reservation, then
`router.serving.failover` serves it over the ranked candidates (retries, hedging, failover with
continuation), and the terminal event. The per-chunk hot path is `router.serving.attempt`;
between it and the caller there are only `Failover.run` and `serve_to_end`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from router.budgets.gate import BudgetNotice, Refusal, Reservation
from router.events import (
    BudgetEvent,
    Candidate,
    CandidateEstimate,
    Event,
    RouteEvent,
    build,
    build_whole,
)
from router.request import RequestError, StreamParams, prepare
from router.routing.policy import RouteDecision
from router.serving.emitter import Emitter
from router.serving.failover import Failover
from router.serving.ledger import Ledger
from router.state.store import StateUnavailable

if TYPE_CHECKING:
    from router.serving.context import ServingContext

_MISSING_KEY = "missing_api_key: set "


def _missing_keys_hint(decision: RouteDecision) -> str | None:
    """When missing API keys excluded candidates, the hint names the variables to set (the
    generic `no_route` hint would send the user relaxing budgets that are not the cause)."""
    keys = sorted({e.reason.removeprefix(_MISSING_KEY) for e in decision.candidates
                   if e.reason and e.reason.startswith(_MISSING_KEY)})
    if not keys:
        return None
    hint = f"set {' or '.join(keys)} (the provider's API key) in the environment"
    if all(e.reason and e.reason.startswith(_MISSING_KEY) for e in decision.candidates):
        return hint
    return hint + ", or relax max_ttft_ms / max_latency_ms / max_cost_usd"


def route_event(em: Emitter, decision: RouteDecision) -> RouteEvent:
    # Every field, in each model's order (`build_whole`).
    chosen = decision.chosen
    candidates = [
        build_whole(Candidate, {
            "deployment": e.deployment.id, "eligible": e.eligible,
            "reason": e.reason if not e.eligible else ("chosen" if e is chosen else "eligible"),
            "estimated_cost_usd": e.cost_usd, "estimated_ttft_ms": e.ttft_ms,
            "estimated_latency_ms": e.latency_ms,
            "estimate": build_whole(CandidateEstimate, {
                "quantile": e.quantile, "ttft_q_ms": e.ttft_q_ms,
                "latency_q_ms": e.latency_q_ms, "expected_ms": e.expected_ms,
                "level": e.level, "samples": e.samples, "weight": e.weight, "age_s": e.age_s,
                "error_rate": e.error_rate, "inflight": e.inflight, "wait_ms": e.wait_ms,
                "explore": e.explore, "load_slope": e.load_slope})})
        for e in decision.candidates
    ]
    seq = em.seq
    em.seq += 1
    return build_whole(RouteEvent, {
        "request_id": em.request_id, "seq": seq, "elapsed_ms": em.elapsed_ms(),
        "type": "route",
        "deployment": chosen.deployment.id if chosen else None,
        "provider": chosen.deployment.provider if chosen else None,
        "model": chosen.deployment.model if chosen else None,
        "reason": decision.reason,
        "estimated_cost_usd": chosen.cost_usd if chosen else None,
        "estimated_ttft_ms": chosen.ttft_ms if chosen else None,
        "estimated_latency_ms": chosen.latency_ms if chosen else None,
        "candidates": candidates})


class Served:
    """What a prelude hands over once the request is routed and reserved."""

    __slots__ = ("failover", "reservation")

    def __init__(self, failover: Failover, reservation: Reservation) -> None:
        self.failover = failover
        self.reservation = reservation


Prelude = AsyncGenerator[Event | Served, None]


def run_stream(ctx: ServingContext, params: StreamParams,
               request_id: str) -> AsyncIterator[Event]:
    """The events of one request, from its `route` event to its terminal one."""
    return serve_to_end(_routed(ctx, params, request_id))


async def _routed(ctx: ServingContext, params: StreamParams, request_id: str) -> Prelude:
    """Route and reserve: the `route` event, then `Served` (or a terminal error event)."""
    em = Emitter(request_id)
    try:
        req = prepare(params, ctx.loaded)
    except RequestError as exc:
        yield em.error(exc.code, exc.message, suggestion=exc.suggestion)
        return
    decision = ctx.policy.choose(req.constraints, ctx.loaded.deployments,
                                 ctx.unavailable_reason)
    yield route_event(em, decision)
    chosen = decision.chosen
    if chosen is None:
        # Every candidate's breaker is open: say so (it heals by itself), not `no_route`.
        tripped = all(e.reason == "circuit_open" for e in decision.candidates)
        yield em.error("circuit_open" if tripped else "no_route",
                       "no eligible deployment: " + decision.explain_exclusions(),
                       retryable=tripped, suggestion=_missing_keys_hint(decision))
        return
    try:
        reservation = await ctx.budgets.reserve(req, chosen.cost_usd,
                                                req.constraints.max_cost_usd)
    except StateUnavailable as exc:  # state.on_unavailable: fail_closed
        yield em.error("state_unavailable", str(exc), retryable=True)
        return
    if isinstance(reservation, Refusal):
        yield em.error("budget_exceeded", reservation.message)
        return
    ledger = Ledger(em, reservation.limit_usd)
    failover = Failover(ctx, req, [e.deployment for e in decision.ranked], em, ledger,
                        [e.deployment for e in decision.backups])
    yield Served(failover, reservation)


async def serve_to_end(prelude: Prelude) -> AsyncGenerator[Event, None]:
    """The events of `prelude` up to its `Served`, then the routed, reserved request's
    events, the settlement of its spend and the terminal event (a takeover runs its own
    prelude). One generator between the failover loop and the caller: every chunk's event
    passes through here, so the preludes hand over rather than wrap."""
    served: Served | None = None
    try:  # no `aclosing` object: a `try` is cheaper, and this runs once per request
        async for item in prelude:
            if isinstance(item, Served):
                served = item  # the prelude's last item: it ends by itself, not closed
            else:
                yield item
    finally:
        await prelude.aclose()
    if served is None:
        return  # the prelude ended the stream
    failover, reservation = served.failover, served.reservation
    del served, item, prelude  # none of them is kept for the stream's lifetime
    em, ledger = failover.em, failover.ledger
    settled = False
    try:
        # A long stream's spend is booked every `book_every_s` in the background (one
        # booking at a time), so a process killed mid-stream loses at most the last
        # increment. Plain locals: this loop is on the per-chunk path.
        clock, every_s = em.clock, reservation.book_every_s
        due = clock() + every_s
        booking: asyncio.Task[None] | None = None
        events = failover.run()
        try:
            async for event in events:
                yield event
                if clock() >= due:
                    due = clock() + every_s
                    if booking is None or booking.done():
                        booking = asyncio.get_running_loop().create_task(reservation.progress(
                            ledger.cost_usd(), ledger.costs_by_deployment()))
        finally:
            # Closing this generator must close the provider stream at once, not whenever
            # the abandoned inner generators are garbage collected.
            await events.aclose()
        if booking is not None:
            await asyncio.shield(booking)
        settled = True
        stopped = ledger.finish == "budget"
        for notice in await reservation.settle(ledger.cost_usd(), stopped,
                                               ledger.costs_by_deployment()):
            yield budget_event(em, notice)
        yield terminal_event(em, ledger)
    finally:
        if not settled:  # cancelled by the caller: the spend still counts
            await reservation.settle(ledger.cost_usd(), False, ledger.costs_by_deployment())


def terminal_event(em: Emitter, ledger: Ledger) -> Event:
    """`done`, or the `error` the request failed with."""
    failure = ledger.failure
    if failure is None:
        return ledger.done_event(ledger.finish or "stop")
    err, dep_id = failure
    return em.error(err.code, err.message, retryable=err.retryable, deployment=dep_id,
                    status=err.status)


def budget_event(em: Emitter, notice: BudgetNotice) -> BudgetEvent:
    seq = em.seq
    em.seq += 1
    return build(
        BudgetEvent,
        request_id=em.request_id, seq=seq, elapsed_ms=em.elapsed_ms(), scope=notice.scope,
        spent_usd=notice.spent_usd, limit_usd=notice.limit_usd, level=notice.level)
