"""Serving one request over its ranked candidates: breakers, retries, hedging, failover
before the first token and failover with continuation after it.

Before the first content delta nothing has reached the caller, so an attempt may be
retried (tenacity loop, `retry` events), raced against a hedge, or abandoned for the next
candidate (`fallback` with `after_tokens: 0`). After it, a failure moves on to the next
candidate with the mode of `resilience.resume`: `continue` asks it for the rest of the
answer (see `router.resilience.continuation`), `restart` streams the whole answer again after a
`fallback` telling the caller to discard what it has (also used when tool-call fragments
were sent: a JSON fragment cannot be continued), `fail` ends with the error. When every
candidate failed, the original error is reported — the first real failure, never a 400
from a continuation request or an open breaker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from providers.base import (
    CLIENT_ERROR_CODES,
    ErrorCodeName,
    ProviderError,
    ProviderRequest,
    estimate_tokens,
)
from router.config.schema import Deployment
from router.events import Event, ResumeMode, StartEvent
from router.resilience.breaker import Permit
from router.resilience.continuation import Splice, Way, added_input_tokens, continuation_messages
from router.serving.admission import AdmissionRefused, Slot
from router.serving.attempt import (
    AttemptFailed,
    Opened,
    abandon_attempt,
    censor_attempt,
    open_attempt,
    provider_request,
    stream_opened,
)
from router.serving.ledger import Attempt, Ledger
from router.serving.resume import (
    affordable,
    content_sent,
    hedge_affordable,
    resume_mode,
    tokens_left,
)

if TYPE_CHECKING:
    from router.request import PreparedRequest
    from router.serving.context import ServingContext
    from router.serving.emitter import Emitter


def detached(err: ProviderError) -> ProviderError:
    """`err` (and the errors it was raised from) without tracebacks, to be kept for later.
    A traceback holds every frame the error passed through and each frame its locals, the
    error among them: a reference cycle, the whole request's state in it, that only the
    cyclic garbage collector would free. The error's code, message and status remain."""
    link: BaseException | None = err
    for _ in range(8):  # a chain is short; bounded all the same
        if link is None:
            break
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return err


class Failover:
    """The serving state of one request; `run()` yields its events up to the terminal one,
    leaving `ledger.finish` (success) or `ledger.failure` set."""

    __slots__ = ("_answer_from", "_attempt", "_extra_input", "_hedgeable", "_hedged_to",
                 "_held", "ctx", "em", "error", "input_estimate", "ledger", "opened",
                 "original", "ranked", "req", "res", "resumed", "t0")

    def __init__(self, ctx: ServingContext, req: PreparedRequest, ranked: list[Deployment],
                 em: Emitter, ledger: Ledger, backups: list[Deployment] | None = None) -> None:
        self.ctx, self.req, self.em, self.ledger = ctx, req, em, ledger
        # The routing's backups (over a latency budget alone) come after the ranked
        # candidates; a hedge is only ever one of the ranked.
        self.ranked = ranked + backups if backups else ranked
        self._hedgeable = len(ranked)
        self.res = ctx.resilience
        self.input_estimate = estimate_tokens(req.system or "") + req.constraints.input_tokens
        self.t0 = self.res.retry.clock()
        self.original: tuple[ProviderError, str] | None = None  # what the caller is told
        self.error: ProviderError | None = None  # how the last pre-token phase failed
        self.opened: Opened | None = None
        self._hedged_to: Deployment | None = None  # the hedge started by the last race
        self._answer_from = 0  # the first attempt of the answer the caller keeps (restarts)
        # Every breaker admission and admission slot taken for this request, released at
        # its end (one list: each is one more object per live stream).
        self._held: list[Permit | Slot] = []
        self._attempt: Attempt | None = None  # the attempt the last `start` event announced
        self._extra_input = 0  # input tokens a continuation request adds
        # Set for a stream taken over from a dead instance: the deployment that was serving
        # it and how it was lost (the first `fallback` then says so).
        self.resumed: tuple[Deployment, ProviderError] | None = None

    # --- the candidate loop ---------------------------------------------------------------

    def _admit(self, dep: Deployment) -> Permit | None:
        permit = self.res.breakers.admit(dep.id)
        if permit is not None:
            self._held.append(permit)
        return permit

    async def _take_slot(self, dep: Deployment) -> Slot | None:
        """A slot of `dep`'s concurrency limit, queued for if need be, taken before its
        attempt is announced (None without admission). Raises `AdmissionRefused`."""
        admission = self.ctx.admission
        if admission is None:
            return None
        # A free slot with nobody queued (most requests) is taken without a coroutine.
        slot = admission.try_slot(dep.id) or await admission.slot(dep.id)
        self._held.append(slot)
        return slot

    async def run(self) -> AsyncGenerator[Event, None]:
        # One generator from the candidate loop to the caller's loop: every event of the
        # answer passes through here, so no wrapper generator is added for the `finally`.
        ranked, i = self.ranked, 0
        failed_on, failure = self.resumed if self.resumed is not None else (None, None)
        try:
            while i < len(ranked):
                dep, i = ranked[i], i + 1
                if failure is not None and failure.code == "context_length" and failed_on and (
                        dep.context_window <= failed_on.context_window):
                    continue  # only a larger context window can help
                permit = self._admit(dep)
                if permit is None:
                    continue  # opened since routing: route elsewhere
                sent = content_sent(self.ledger)
                mode = resume_mode(self.res.cfg.resume, self.ledger, sent)
                if not self._may_resume(dep, permit, sent, mode):
                    return
                if failed_on is not None and failure is not None:
                    yield self.em.fallback(failed_on, dep, failure.code, sent, mode)
                if mode == "restart":
                    self.ledger.text_parts.clear()
                    self.ledger.tool_calls.clear()
                    self._answer_from = len(self.ledger.attempts)
                hedge = ranked[i] if i < self._hedgeable and not sent else None
                if hedge is not None and not hedge_affordable(self.ledger, dep, hedge,
                                                              self.input_estimate):
                    hedge = None  # both would bill their input: the spending limit cannot pay
                after_s = None if hedge is None else self.res.hedge_after_s(
                    self.req.task, dep, self.ctx.stats)
                # Up to `dep`'s first token: sets `self.opened`, or `self.error` with how
                # `dep` failed.
                self._hedged_to, self._extra_input, self.error = None, 0, None
                preq = provider_request(dep, self.req)
                events: AsyncGenerator[Event, None] | None = None
                if mode == "continue":
                    events = self._continuing(dep, preq, permit, i < len(ranked))
                elif after_s is not None:
                    events = self._retrying(dep, preq, permit, i < len(ranked), None, hedge,
                                            after_s)
                else:
                    # A fresh answer, no hedge (most requests): the first attempt runs here,
                    # with no generator or retry loop in between; a failure builds them.
                    try:
                        slot = await self._take_slot(dep)
                        yield self._start(dep, hedge=False)
                        self.opened = await self._open(dep, preq, self._current(), permit,
                                                       slot)
                    except AdmissionRefused as err:
                        permit.release()  # our own limit, not the deployment's failure
                        self.error = detached(err)  # full: the next candidate, not a retry
                    except ProviderError as err:
                        events = self._retrying(dep, preq, permit, i < len(ranked), None,
                                                None, None, detached(err))
                if events is not None:
                    # Closed in `finally` (no `aclosing` object: all the streams of a burst
                    # wait here at once), then dropped: not kept, with its weakref, for the
                    # answer.
                    try:
                        async for event in events:
                            yield event
                    finally:
                        await events.aclose()
                    events = None
                opened, self.opened = self.opened, None
                if opened is None:
                    assert self.error is not None
                    failed_on, failure = self._failed(dep, self.error)
                    if self._hedged_to is not None:
                        i = max(i, ranked.index(self._hedged_to) + 1)
                    if failure.code in CLIENT_ERROR_CODES and (
                            failure.code != "context_length" and not sent):
                        break  # the request itself is refused (a continuation's may go on)
                    continue
                if opened.dep is not dep:  # the hedge won: go on from it
                    i = ranked.index(opened.dep) + 1
                answer = stream_opened(self.ctx, opened, self.ledger)
                try:
                    async for event in answer:  # the per-chunk path: no `aclosing` object
                        yield event
                    return
                except AttemptFailed as failed:
                    failed_on, failure = self._failed(opened.dep, failed.error)
                    if self.res.cfg.resume == "fail":
                        break
                finally:
                    await answer.aclose()
            self.ledger.failure = self.original or self._all_open()
        finally:
            # The caller may leave between an admission and its attempt's outcome (at a
            # `fallback`, `start` or `retry` event): free every slot still held.
            for held in self._held:
                held.release()  # a no-op for a slot its upstream holds, or a used permit

    def _may_resume(self, dep: Deployment, permit: Permit, sent: int,
                    mode: ResumeMode | None) -> bool:
        """Decided before the `fallback` event: it must not announce a switch that is not
        made. The unused permit is released (a half-open breaker keeps its probe slot)."""
        way = self.res.continuation_ways(dep)[0] if mode == "continue" else None
        if sent and not affordable(self.ledger, dep, self.input_estimate, self.req.messages,
                                   way):
            permit.release()
            self.ledger.finish = "budget"  # the spending limit cannot pay for a resume
            return False
        if mode == "continue" and self._tokens_left(dep) <= 0:
            permit.release()
            self.ledger.finish = "length"  # the caller's max_tokens was reached anyway
            return False
        return True

    def _tokens_left(self, dep: Deployment) -> int:
        asked = provider_request(dep, self.req).max_tokens or 0
        return tokens_left(asked, self.ledger, self._answer_from)

    def _failed(self, dep: Deployment, err: ProviderError) -> tuple[Deployment, ProviderError]:
        detached(err)
        if self.original is None:
            self.original = (err, dep.id)
        return dep, err

    def _all_open(self) -> tuple[ProviderError, str]:
        # Every breaker refused (each opened, or gave its probe to another request, since
        # routing): the router's own `circuit_open`, not a provider's code.
        code = cast(ErrorCodeName, "circuit_open")
        return (ProviderError(code, "every candidate's circuit breaker is open", retryable=True),
                self.ranked[0].id if self.ranked else "")

    # --- before the first token -----------------------------------------------------------

    async def _continuing(self, dep: Deployment, preq: ProviderRequest, permit: Permit,
                          has_alternative: bool) -> AsyncGenerator[Event, None]:
        """`dep` asked for the rest of the answer, each way it may be asked in turn."""
        partial = self.ledger.text()
        ways = self.res.continuation_ways(dep)
        for n, way in enumerate(ways):
            messages, stripped = continuation_messages(self.req.messages, partial, way)
            splice = Splice(partial, strip_leading_ws=stripped, repeat_check=way == "instruct")
            cont = dataclasses.replace(preq, messages=messages,
                                       max_tokens=max(1, self._tokens_left(dep)))
            self._extra_input = added_input_tokens(self.req.messages, messages)
            async with aclosing(self._retrying(dep, cont, permit, has_alternative, splice,
                                               None, None)) as events:
                async for event in events:
                    yield event
            err = self.error
            if self.opened is not None or err is None or err.code != "bad_request":
                return
            self._learn(dep, way)  # refused this way of continuing: try the other
            if n + 1 < len(ways):
                next_permit = self._admit(dep)
                if next_permit is None:
                    return
                permit = next_permit

    def _learn(self, dep: Deployment, way: Way) -> None:
        self.res.learn_refusal(dep.id, way)

    async def _retrying(self, dep: Deployment, preq: ProviderRequest, permit: Permit,
                        has_alternative: bool, splice: Splice | None,
                        hedge: Deployment | None, after_s: float | None,
                        failed_first: ProviderError | None = None
                        ) -> AsyncGenerator[Event, None]:
        """Attempts on `dep` (racing `hedge` after `after_s` on the first), retried while
        the retry policy allows; `failed_first`: the first attempt was made, and failed."""
        self.error = None
        retry = self.res.retry
        try:
            async for attempt in retry.loop(has_alternative=has_alternative,
                                            started_at=self.t0, failed_first=failed_first):
                if attempt.number > 1:
                    assert attempt.error is not None
                    next_permit = self._admit(dep)
                    if next_permit is None:  # tripped meanwhile: go elsewhere
                        self.error = attempt.error
                        return
                    permit = next_permit
                    yield self.em.retry(dep, attempt.number, attempt.error.code, attempt.delay_s)
                    await retry.sleep(attempt.delay_s)
                try:
                    if after_s is not None and hedge is not None and attempt.number == 1:
                        async with aclosing(self._race(dep, preq, permit, hedge,
                                                       after_s)) as events:
                            async for event in events:
                                yield event
                        if self.opened is None:
                            assert self.error is not None
                            raise self.error
                    else:
                        slot = await self._take_slot(dep)
                        yield self._start(dep, hedge=False)
                        self.opened = await self._open(dep, preq, self._current(), permit,
                                                       slot)
                except AdmissionRefused as err:
                    permit.release()  # our own limit, not the deployment's failure
                    self.error = detached(err)  # full here: the next candidate, not a retry
                    return
                except ProviderError as err:
                    attempt.failed(detached(err))
                    continue
                self.opened.splice = splice if splice is not None and not splice.done else None
                attempt.succeeded()
                return
        except ProviderError as err:
            self.error = detached(err)

    def _current(self) -> Attempt:
        assert self._attempt is not None
        return self._attempt

    def _start(self, dep: Deployment, hedge: bool) -> StartEvent:
        self._attempt = self.ledger.begin(dep, self.input_estimate + self._extra_input)
        return self.em.start(dep, self._attempt.number, hedge)

    def _open(self, dep: Deployment, preq: ProviderRequest, attempt: Attempt,
              permit: Permit, slot: Slot | None) -> Coroutine[Any, Any, Opened]:
        return open_attempt(self.ctx, self.ledger, dep, preq, attempt, permit, slot,
                            self.input_estimate, self.req.constraints.output_tokens)

    def _censor(self, attempt: Attempt) -> None:
        censor_attempt(self.ctx, self.ledger, attempt)

    def abandon(self, attempt: Attempt, permit: Permit) -> None:
        abandon_attempt(self.ctx, self.ledger, attempt, permit)

    # --- hedging --------------------------------------------------------------------------

    async def _race(self, dep: Deployment, preq: ProviderRequest, permit: Permit,
                    hedge: Deployment, after_s: float) -> AsyncGenerator[Event, None]:
        """Start `dep`; if no first token after `after_s`, start `hedge` too. The first to
        produce one wins (`self.opened`); the other is closed at once, its cost counted.
        When both fail, `self.error` is `dep`'s failure."""
        from router.serving.hedge import Race

        slot = await self._take_slot(dep)
        yield self._start(dep, hedge=False)
        race = Race(self.ledger, self.abandon, self._censor)
        primary = self._current()
        race.add(primary, self._open(dep, preq, primary, permit, slot), permit)
        try:
            if not await race.wait(after_s):
                hedge_slot, hedge_permit = self._hedge_admission(hedge)
                if hedge_permit is not None:
                    yield self._start(hedge, hedge=True)
                    self._hedged_to = hedge
                    hreq = provider_request(hedge, self.req)
                    second = self._current()
                    race.add(second, self._open(hedge, hreq, second, hedge_permit, hedge_slot),
                             hedge_permit)
                await race.wait(None)
            self.opened, error = race.result()
            self.error = None if error is None else detached(error)
        finally:
            await race.close_losers()

    def _hedge_admission(self, hedge: Deployment) -> tuple[Slot | None, Permit | None]:
        """A free slot (a hedge does not queue: a full deployment is no help) and a breaker
        permit for `hedge`, or no permit (and no slot held) when either refuses."""
        admission = self.ctx.admission
        slot = admission.try_slot(hedge.id) if admission is not None else None
        if admission is not None and slot is None:
            return None, None
        permit = self._admit(hedge)
        if slot is not None:
            if permit is None:
                slot.release()
            else:
                self._held.append(slot)
        return slot, permit
