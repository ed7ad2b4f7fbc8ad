"""Taking over a stream whose instance died mid-answer (the shared event log's takeover).

What the dead instance wrote is all there is: its events up to the last one flushed, which
is also the last one any client saw. `prior_answer` reads from them what a continuation
needs (the text so far, the deployment, the next `seq`); `resume_stream` then serves the
request again as a failover `continue` from that deployment: no new `route`, a `fallback`
(`error: connection`, `mode: continue`), the rest of the answer, one terminal event. The
dead part is booked as a closed attempt with its output counted from the text it sent
(its spend was never settled), so `done.cost_usd` and the spend count both parts once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from providers.base import ProviderError, estimate_tokens
from router.budgets.gate import Refusal
from router.events import TERMINAL_TYPES, Event
from router.request import RequestError, StreamParams, prepare
from router.routing.policy import choose_route
from router.serving.emitter import Emitter
from router.serving.failover import Failover
from router.serving.ledger import Ledger
from router.serving.orchestrator import Prelude, Served, serve_to_end

if TYPE_CHECKING:
    from router.serving.context import ServingContext


@dataclass(frozen=True, slots=True)
class PriorAnswer:
    """What the dead instance's events say of the answer so far."""

    next_seq: int
    elapsed_ms: float
    text_parts: tuple[str, ...]
    deployment: str | None


def prior_answer(request_id: str, next_seq: int,
                 entries: Iterable[tuple[str, bytes]]) -> PriorAnswer | None:
    """The answer so far of a stream's logged events; None when it has ended (or has not
    begun: nothing to continue)."""
    parts: list[str] = []
    deployment: str | None = None
    elapsed = 0.0
    for etype, data in entries:
        if etype in TERMINAL_TYPES:
            return None
        ev = orjson.loads(data)
        elapsed = float(ev.get("elapsed_ms", elapsed))
        if etype == "text":
            parts.append(ev["delta"])
        elif etype == "start":
            deployment = ev["deployment"]
        elif etype == "fallback" and ev.get("mode") == "restart":
            parts.clear()
    if deployment is None:
        return None
    return PriorAnswer(next_seq, elapsed, tuple(parts), deployment)


def resume_stream(ctx: ServingContext, params: StreamParams, request_id: str,
                  prior: PriorAnswer) -> AsyncIterator[Event]:
    return serve_to_end(_resumed(ctx, params, request_id, prior))


async def _resumed(ctx: ServingContext, params: StreamParams, request_id: str,
                   prior: PriorAnswer) -> Prelude:
    em = Emitter(request_id)
    em.seq = prior.next_seq
    em.t0 -= prior.elapsed_ms / 1000.0
    try:
        req = prepare(params, ctx.loaded)
    except RequestError as exc:
        yield em.error(exc.code, exc.message, suggestion=exc.suggestion)
        return
    decision = choose_route(req.constraints, ctx.loaded.deployments, ctx.stats,
                            ctx.unavailable_reason)
    dead = ctx.loaded.deployments.get(prior.deployment or "")
    if decision.chosen is None or dead is None:
        yield em.error("no_route", "the stream's instance stopped and no deployment can "
                       "continue it: " + decision.explain_exclusions())
        return
    reservation = await ctx.budgets.reserve(req, decision.chosen.cost_usd,
                                            req.constraints.max_cost_usd)
    if isinstance(reservation, Refusal):
        yield em.error("budget_exceeded", reservation.message)
        return
    ledger = Ledger(em, reservation.limit_usd)
    lost = ledger.begin(dead, estimate_tokens(req.system or "") + req.constraints.input_tokens)
    for part in prior.text_parts:
        ledger.add_output(lost, part)
    ledger.end_attempt()
    failover = Failover(ctx, req, [e.deployment for e in decision.ranked], em, ledger,
                        [e.deployment for e in decision.backups])
    lost_instance = ProviderError("connection", "the instance serving the stream stopped",
                                  retryable=True)
    failover.resumed, failover.original = (dead, lost_instance), (lost_instance, dead.id)
    yield Served(failover, reservation)
