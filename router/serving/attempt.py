"""One call to one deployment, in two phases split at the first content delta — the commit
point of a stream:

- `open_upstream`: open the provider stream and read up to its first content delta, under
  the first-token and total deadlines. It sends nothing to the caller, so it can be retried,
  raced against a hedge in another task, or abandoned; on any failure the upstream is
  closed before the error propagates.
- `stream_opened`: the hot path. Turn the buffered head and the rest of the stream into
  events, with the idle and total deadlines of the `Watchdog`; account usage and cost;
  report the outcome to the deployment's breaker; close the upstream on every path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from providers.base import (
    Delta,
    FinishDelta,
    Provider,
    ProviderError,
    ProviderRequest,
    QuotaDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from router.config.schema import Deployment
from router.events import Event, reasoning_event, text_event, tool_call_event
from router.resilience.breaker import Permit
from router.resilience.continuation import Splice
from router.resilience.watchdog import Watchdog
from router.serving.admission import Admitted, Slot
from router.serving.ledger import Attempt, Ledger

if TYPE_CHECKING:
    from router.request import PreparedRequest
    from router.serving.context import ServingContext

CONTENT_TYPES = (TextDelta, ReasoningDelta, ToolCallDelta)


class AttemptFailed(Exception):
    """An attempt ended with a provider error after `after_tokens` content deltas."""

    def __init__(self, error: ProviderError, after_tokens: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.after_tokens = after_tokens


@dataclass(slots=True)
class Opened:
    """An attempt that produced its first content delta (or ended before any)."""

    dep: Deployment
    upstream: AsyncIterator[Delta]
    head: tuple[Delta, ...]  # every delta read so far, the first content delta last
    attempt: Attempt
    permit: Permit
    started: float  # loop time the attempt started
    # Still armed for the first token's deadline: `stream_opened` moves it on to the
    # answer's (whoever drops an `Opened` unread disarms it).
    watchdog: Watchdog
    splice: Splice | None = None


async def close_quietly(upstream: AsyncIterator[Delta]) -> None:
    close = getattr(upstream, "aclose", None)
    if close is not None:
        # No `contextlib.suppress` object: this runs at every attempt's end.
        try:  # noqa: SIM105
            await close()
        except ProviderError:
            pass  # a failure while closing changes nothing


async def open_upstream(provider: Provider, preq: ProviderRequest, started: float,
                        ttft_s: float, total_s: float, slot: Slot | None = None, *,
                        idle_s: float = 0.0
                        ) -> tuple[AsyncIterator[Delta], tuple[Delta, ...], Watchdog]:
    """Open the stream (holding admission's `slot` until the upstream is closed) and read
    up to the first content delta. Raises `ProviderError` (`timeout` naming which
    deadline); the upstream is closed, and the slot given back, on every failure.

    The deadlines are kept by a `Watchdog` (one lazy timer, no `asyncio.timeout` scope),
    returned still armed: `stream_opened` takes it over for the answer (`idle_s` is its idle
    deadline), so an attempt builds one watchdog, not a timeout scope and a watchdog, and
    mostly one timer. Whoever drops the result unread disarms it."""
    wd = Watchdog(ttft_s, idle_s, total_s, started=started)
    source = provider.stream(preq)
    upstream = source if slot is None else slot.holding(source)
    head: list[Delta] = []
    wd.waiting_since = wd.time()  # on the provider from here to the first content delta
    try:
        anext_ = source.__anext__  # past admission's forwarding object, as below
        while True:
            try:
                delta = await anext_()
            except StopAsyncIteration:
                break
            head.append(delta)
            if isinstance(delta, CONTENT_TYPES):
                break
    except BaseException as exc:
        wd.disarm()  # first: closing the upstream below must not be cut by a deadline
        timeout = wd.expired() if isinstance(exc, asyncio.CancelledError) else None
        await close_quietly(upstream)
        if timeout is not None:
            raise timeout from None
        if isinstance(exc, TimeoutError):  # not ours: a deadline within the provider call
            raise ProviderError("timeout", "timeout inside the provider call") from None
        raise
    wd.waiting_since = None  # the timer, if it fires now, looks again later
    return upstream, tuple(head), wd


async def open_attempt(ctx: ServingContext, ledger: Ledger, dep: Deployment,
                       preq: ProviderRequest, attempt: Attempt, permit: Permit,
                       slot: Slot | None, input_tokens: int, output_tokens: int) -> Opened:
    """One attempt up to its first content delta, counted in flight on `dep` (sent beside
    the others there, with the request's `input_tokens` and `output_tokens`). On failure
    its books are closed, its breaker told, and the `ProviderError` raised."""
    started = asyncio.get_running_loop().time()
    stats = ctx.stats
    attempt.inflight = True
    attempt.sent_beside = stats.attempt_started(dep.id, input_tokens, output_tokens)
    try:
        timeouts = ctx.loaded.config.resilience.timeouts
        upstream, head, watchdog = await open_upstream(
            ctx.provider(dep.provider), preq, started, timeouts.ttft_s, timeouts.total_s, slot,
            idle_s=timeouts.idle_s)
    except ProviderError as err:
        end_attempt(ctx, ledger, attempt)
        permit.failure(err.code)
        waited_ms = (ledger.em.clock() - attempt.started_at) * 1000.0
        if err.code == "timeout":  # no first token for this long: at least this long
            stats.observe_censored(dep.id, waited_ms, attempt.sent_beside)
        stats.observe_outcome(dep.id, err.code, waited_ms, err.retry_after)
        raise
    except BaseException:
        abandon_attempt(ctx, ledger, attempt, permit)
        raise
    return Opened(dep, upstream, head, attempt, permit, started, watchdog)


def censor_attempt(ctx: ServingContext, ledger: Ledger, attempt: Attempt) -> None:
    """`attempt` was cut before its first token: it would have taken at least this long."""
    waited_ms = (ledger.em.clock() - attempt.started_at) * 1000.0
    ctx.stats.observe_censored(attempt.deployment.id, waited_ms, attempt.sent_beside)


def abandon_attempt(ctx: ServingContext, ledger: Ledger, attempt: Attempt,
                    permit: Permit) -> None:
    """An attempt given up without an outcome (caller left, hedge lost): the provider
    may bill the prompt, so its input is counted."""
    if attempt.usage is None:
        ledger.set_usage(attempt, UsageDelta(attempt.input_estimate, attempt.output_tokens))
    end_attempt(ctx, ledger, attempt)
    permit.release()


def end_attempt(ctx: ServingContext, ledger: Ledger, attempt: Attempt) -> None:
    """Close `attempt`'s books even when another attempt (a hedge) is the current one."""
    current = ledger.current
    ledger.current = attempt
    if attempt.inflight:
        attempt.inflight = False
        ctx.stats.attempt_ended(attempt.deployment.id)
    ledger.end_attempt(ctx.stats)
    ledger.current = current if current is not attempt else None


async def stream_opened(ctx: ServingContext, opened: Opened,
                        ledger: Ledger) -> AsyncGenerator[Event, None]:
    """Events of an opened attempt to its end. Sets `attempt.finish`; raises AttemptFailed."""
    dep, attempt, upstream = opened.dep, opened.attempt, opened.upstream
    ledger.current = attempt
    wd = opened.watchdog  # the first-token phase's, its total deadline kept
    wd.content_started()
    fresh = True  # no content sent yet by this attempt
    buffered, splice = opened.head, opened.splice
    opened.head = ()  # read from `buffered`, which ends as the empty tuple: nothing kept
    # Read past admission's forwarding object (closing `upstream` still gives its slot back).
    anext_ = (upstream.upstream if isinstance(upstream, Admitted) else upstream).__anext__
    em = ledger.em
    rid, clock, t0, time_ = em.request_id, em.clock, em.t0, wd.time
    current_task, loop = asyncio.current_task, asyncio.get_running_loop()
    outcome: str | None = "cancelled"  # what the breaker hears if we are left early
    try:
        while True:
            if buffered:
                delta, buffered = buffered[0], buffered[1:]
            else:
                wd.waiting_since = time_()
                wd.task = current_task(loop)  # with the loop: ~3x cheaper
                try:
                    delta = await anext_()
                except StopAsyncIteration:
                    break
                wd.waiting_since = None
            kind = type(delta)
            if kind is TextDelta:
                text: str = delta.text  # type: ignore[union-attr]
                if splice is not None:
                    fed = len(text)
                    text = splice.feed(text)
                    if splice.done:
                        splice = None
                    if fed != len(text) and ledger.add_hidden(attempt, fed - len(text)):
                        attempt.finish = "budget"  # billed repeats passed the limit
                        break
                    if not text:
                        continue
                if fresh:
                    fresh = False
                    ledger.first_content(ctx.stats)
                seq = em.seq
                em.seq = seq + 1
                # Counted before it is handed over: a caller that stops here was shown it.
                over = ledger.add_output(attempt, text)
                yield text_event(rid, seq, (clock() - t0) * 1000.0, text)
                if over:
                    attempt.finish = "budget"
                    break
            elif kind is ReasoningDelta:
                text = delta.text  # type: ignore[union-attr]
                if fresh:
                    fresh = False
                    ledger.first_content(ctx.stats)
                seq = em.seq
                em.seq = seq + 1
                # Counted before it is handed over: a caller that stops here was shown it.
                over = ledger.add_output(attempt, text, reasoning=True)
                yield reasoning_event(rid, seq, (clock() - t0) * 1000.0, text)
                if over:
                    attempt.finish = "budget"
                    break
            elif kind is ToolCallDelta:
                assert isinstance(delta, ToolCallDelta)
                if fresh:
                    fresh = False
                    ledger.first_content(ctx.stats)
                ledger.add_tool_fragment(delta)
                seq = em.seq
                em.seq = seq + 1
                over = ledger.add_output(attempt, delta.arguments)
                yield tool_call_event(rid, seq, (clock() - t0) * 1000.0, delta.index,
                                      delta.id, delta.name, delta.arguments)
                if over:
                    attempt.finish = "budget"
                    break
            elif kind is UsageDelta:
                assert isinstance(delta, UsageDelta)
                ledger.set_usage(attempt, delta)
                if fresh and ledger.over_limit(attempt):  # input billed up front: past the limit
                    attempt.finish = "budget"
                    break
            elif kind is FinishDelta:
                assert isinstance(delta, FinishDelta)
                attempt.finish = delta.reason
            elif kind is QuotaDelta:
                assert isinstance(delta, QuotaDelta)
                ctx.stats.observe_quota(dep.id, delta)
        if attempt.finish is None:
            raise ProviderError("protocol_error", "stream ended without a finish marker")
        if splice is not None and (rest := splice.flush()):
            seq = em.seq
            em.seq = seq + 1
            yield text_event(rid, seq, (clock() - t0) * 1000.0, rest)
            ledger.add_hidden(attempt, -len(rest))  # held back until now: counted as shown
            ledger.add_output(attempt, rest)
        outcome = None
    except ProviderError as err:
        outcome = err.code
        raise AttemptFailed(err, attempt.content_deltas) from None
    except asyncio.CancelledError:
        timeout = wd.expired()
        if timeout is None:
            raise
        outcome = timeout.code
        raise AttemptFailed(timeout, attempt.content_deltas) from None
    finally:
        wd.disarm()
        await close_quietly(upstream)
        end_attempt(ctx, ledger, attempt)
        if outcome is None:
            opened.permit.success()
            ctx.stats.observe_outcome(dep.id, None)
        elif outcome == "cancelled":
            opened.permit.release()
        else:
            opened.permit.failure(outcome)
            ctx.stats.observe_outcome(dep.id, outcome)
    ledger.finish = attempt.finish


def provider_request(dep: Deployment, req: PreparedRequest) -> ProviderRequest:
    max_tokens = req.max_tokens or dep.default_max_tokens
    if dep.max_output_tokens is not None:
        max_tokens = min(max_tokens, dep.max_output_tokens)
    return ProviderRequest(
        model=dep.model, messages=req.messages, system=req.system, max_tokens=max_tokens,
        temperature=req.temperature, tools=req.tools, tool_choice=req.tool_choice,
        stop=req.stop, response_format=req.response_format,
        # routing guaranteed the rest; advisory ones (`user`) go only where they can
        params={k: v for k, v in req.params.items() if k in dep.params} if req.params else {},
        options=dep.options,
    )
