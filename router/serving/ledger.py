"""What one request produced and cost, across all its attempts.

Spend is never under-counted: an attempt's cost uses the provider's reported usage when the
stream completed; otherwise the larger of reported and counted output tokens, marked
`estimated`. Failed attempts that produced nothing and reported nothing cost nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from providers.base import ProviderError, ProviderFinish, ToolCallDelta, UsageDelta
from router.config.schema import Deployment
from router.events import (
    Cost,
    DoneEvent,
    FinishReason,
    Latency,
    ToolCall,
    Usage,
    build,
    build_whole,
)
from router.routing.cost import PER_TOKEN, input_cost, output_cost
from router.routing.stats import StatsRegistry

if TYPE_CHECKING:
    from router.serving.emitter import Emitter


class Attempt:
    """One call to one deployment, as seen so far. It holds no reference back to its
    `Ledger` (whose methods taking an attempt count into it): a finished request is freed
    by reference counting, with no cycle left for the garbage collector."""

    __slots__ = ("content_deltas", "deployment", "finish", "first_content_at", "hidden_chars",
                 "inflight", "input_estimate", "input_usd", "number", "out_price",
                 "output_tokens", "reasoning_tokens", "sent_beside", "started_at", "usage")

    def __init__(self, dep: Deployment, number: int, input_estimate: int,
                 started_at: float) -> None:
        self.deployment = dep
        self.number = number
        self.input_estimate = input_estimate
        self.out_price = dep.price.output_per_mtok * PER_TOKEN
        self.input_usd = input_cost(dep.price, input_estimate)
        self.output_tokens = 0  # counted from deltas (an estimate)
        self.hidden_chars = 0  # streamed but not (yet) shown: see Ledger.add_hidden
        self.reasoning_tokens = 0
        self.content_deltas = 0
        self.usage: UsageDelta | None = None
        self.finish: ProviderFinish | FinishReason | None = None
        self.started_at = started_at
        self.first_content_at: float | None = None
        self.inflight = False  # counted in its deployment's requests in flight
        self.sent_beside = 0  # others in flight on its deployment as it was sent

    def usage_counts(self) -> tuple[int, int, int, int, bool]:
        """(input, cached input, output, reasoning tokens, estimated) to bill: the provider's
        report when the stream completed; otherwise never less than what was seen."""
        reported = self.usage
        complete = self.finish is not None and self.finish != "budget"
        if reported is not None and complete:
            return (reported.input_tokens, reported.cached_input_tokens,
                    reported.output_tokens, reported.reasoning_tokens, False)
        if reported is None:
            if self.content_deltas == 0:
                return 0, 0, 0, 0, False
            return self.input_estimate, 0, self.output_tokens, self.reasoning_tokens, True
        # Cut, stopped or failed mid-stream.
        return (max(reported.input_tokens, self.input_estimate), reported.cached_input_tokens,
                max(reported.output_tokens, self.output_tokens),
                max(reported.reasoning_tokens, self.reasoning_tokens), True)

    def final_usage(self) -> Usage:
        i, cached, o, reasoning, estimated = self.usage_counts()
        return build(Usage, input_tokens=i, cached_input_tokens=cached, output_tokens=o,
                     reasoning_tokens=reasoning, estimated=estimated)

    def cost_parts(self) -> tuple[float, float]:
        """(input, output) USD of `usage_counts()`."""
        if self.usage is None and not self.content_deltas:
            return 0.0, 0.0
        i, cached, o, _, _ = self.usage_counts()
        price = self.deployment.price
        return input_cost(price, i, cached), output_cost(price, o)

    def cost(self) -> Cost:
        i, o = self.cost_parts()
        return build(Cost, input_usd=i, output_usd=o, total_usd=i + o)


class Ledger:
    """The request's text, tool calls, usage and cost over every attempt."""

    def __init__(self, em: Emitter, limit_usd: float | None) -> None:
        self.em = em
        self.limit_usd = limit_usd
        self.attempts: list[Attempt] = []
        self.current: Attempt | None = None
        self.text_parts: list[str] = []
        self.tool_calls: dict[int, list[str]] = {}
        self.spent_usd = 0.0  # closed attempts
        self.first_content_at: float | None = None
        self.finish: ProviderFinish | FinishReason | None = None
        self.failure: tuple[ProviderError, str] | None = None
        # Totals of the closed attempts: tokens (input, cached, output, reasoning), USD.
        self._input = self._cached = self._output = self._reasoning = 0
        self._estimated = False
        self._input_usd = self._output_usd = 0.0

    def costs_by_deployment(self) -> dict[str, float]:
        """The request's cost so far split per deployment, every attempt included."""
        out: dict[str, float] = {}
        for attempt in self.attempts:
            i, o = attempt.cost_parts()
            cost = i + o
            if cost > 0:
                dep = attempt.deployment.id
                out[dep] = out.get(dep, 0.0) + cost
        return out

    def begin(self, dep: Deployment, input_estimate: int) -> Attempt:
        attempt = Attempt(dep, len(self.attempts) + 1, input_estimate, self.em.clock())
        self.attempts.append(attempt)
        self.current = attempt
        return attempt

    def add_output(self, attempt: Attempt, text: str, reasoning: bool = False) -> bool:
        """Count one content delta of `attempt`; True when the next one would pass the
        spending limit."""
        tokens = (len(text) + 3) >> 2 or 1
        attempt.output_tokens += tokens
        attempt.content_deltas += 1
        if reasoning:
            attempt.reasoning_tokens += tokens
        else:
            self.text_parts.append(text)
        limit = self.limit_usd
        if limit is None:
            return False
        running = self.spent_usd + attempt.input_usd + attempt.output_tokens * attempt.out_price
        return running + tokens * attempt.out_price > limit

    def set_usage(self, attempt: Attempt, usage: UsageDelta) -> None:
        attempt.usage = usage
        if self.limit_usd is not None:
            attempt.input_usd = input_cost(
                attempt.deployment.price, max(usage.input_tokens, attempt.input_estimate),
                usage.cached_input_tokens)

    def add_hidden(self, attempt: Attempt, chars: int) -> bool:
        """Count output the provider streamed (and bills) but the caller was not shown —
        text a continuation repeated, which the splice drops or holds back (negative when
        held text is released and counted as shown). True when the limit is passed."""
        before = (attempt.hidden_chars + 3) >> 2
        attempt.hidden_chars += chars
        attempt.output_tokens += ((attempt.hidden_chars + 3) >> 2) - before
        limit = self.limit_usd
        if limit is None:
            return False
        running = self.spent_usd + attempt.input_usd + attempt.output_tokens * attempt.out_price
        return running > limit

    def over_limit(self, attempt: Attempt) -> bool:
        """The spending limit is already passed (e.g. by input usage reported up front)."""
        limit = self.limit_usd
        return limit is not None and self.spent_usd + attempt.input_usd >= limit

    def add_tool_fragment(self, delta: ToolCallDelta) -> None:
        calls = self.tool_calls
        call = calls.get(delta.index)
        if call is None:
            calls[delta.index] = [delta.id or "", delta.name or "", delta.arguments]
        else:
            call[0] = call[0] or delta.id or ""
            call[1] = call[1] or delta.name or ""
            call[2] += delta.arguments

    def first_content(self, stats: StatsRegistry) -> None:
        attempt = self.current
        assert attempt is not None
        now = self.em.clock()
        attempt.first_content_at = now
        if self.first_content_at is None:
            self.first_content_at = now
        first = self._first_try(attempt)
        stats.observe_ttft(attempt.deployment.id, (now - first.started_at) * 1000.0,
                           first.sent_beside, retried=first is not attempt)

    def _first_try(self, attempt: Attempt) -> Attempt:
        """The attempt this request began trying `attempt`'s deployment with: its TTFT
        includes the failed attempts and retry backoff since (what routing there costs a
        caller), and is timed against the load that attempt was sent under."""
        first = attempt
        for earlier in reversed(self.attempts[:self.attempts.index(attempt)]):
            if earlier.deployment is not attempt.deployment or (
                    earlier.first_content_at is not None):
                break
            if earlier.started_at <= first.started_at:
                first = earlier
        return first

    def end_attempt(self, stats: StatsRegistry | None = None) -> None:
        attempt = self.current
        if attempt is None:
            return
        self.current = None
        i, cached, o, reasoning, estimated = attempt.usage_counts()
        price = attempt.deployment.price  # `cost_parts()`, from the counts already read
        input_usd, output_usd = input_cost(price, i, cached), output_cost(price, o)
        self._input += i
        self._cached += cached
        self._output += o
        self._reasoning += reasoning
        self._estimated = self._estimated or estimated
        self._input_usd += input_usd
        self._output_usd += output_usd
        self.spent_usd += input_usd + output_usd
        if stats is not None and attempt.first_content_at is not None and o > 4:
            seconds = self.em.clock() - attempt.first_content_at
            if seconds > 0:
                stats.observe_rate(attempt.deployment.id, o / seconds)

    def cost_usd(self) -> float:
        """Everything spent so far, the running attempt included."""
        if self.current is None:
            return self.spent_usd
        i, o = self.current.cost_parts()
        return self.spent_usd + i + o

    def text(self) -> str:
        return "".join(self.text_parts)

    def parsed_tool_calls(self) -> list[ToolCall]:
        out = []
        for index in sorted(self.tool_calls):
            call_id, name, args = self.tool_calls[index]
            arguments: Any
            try:
                arguments = orjson.loads(args) if args.strip() else {}
            except orjson.JSONDecodeError:
                arguments = args  # malformed JSON from the model: keep it as text
            out.append(build(ToolCall, id=call_id, name=name, arguments=arguments))
        return out

    def done_event(self, finish: FinishReason) -> DoneEvent:
        last = self.attempts[-1]
        dep = last.deployment
        em = self.em
        now = em.clock()
        ttft = (self.first_content_at - em.t0) * 1000.0 if self.first_content_at else None
        rate = None
        if last.first_content_at is not None and now > last.first_content_at:
            rate = last.usage_counts()[2] / (now - last.first_content_at)
        seq = em.seq
        em.seq += 1
        elapsed_ms = (now - em.t0) * 1000.0
        # Every field, in each model's order (`build_whole`).
        return build_whole(DoneEvent, {
            "request_id": em.request_id, "seq": seq, "elapsed_ms": elapsed_ms, "type": "done",
            "deployment": dep.id, "provider": dep.provider, "model": dep.model,
            "finish_reason": finish,
            "tool_calls": self.parsed_tool_calls() if self.tool_calls else [],
            "usage": build_whole(Usage, {
                "input_tokens": self._input, "cached_input_tokens": self._cached,
                "output_tokens": self._output, "reasoning_tokens": self._reasoning,
                "estimated": self._estimated}),
            "cost_usd": self.spent_usd,
            "cost": build_whole(Cost, {"input_usd": self._input_usd,
                                       "output_usd": self._output_usd,
                                       "total_usd": self.spent_usd}),
            "latency": build_whole(Latency, {"ttft_ms": ttft, "total_ms": elapsed_ms,
                                             "tokens_per_s": rate}),
            "attempts": len(self.attempts)})
