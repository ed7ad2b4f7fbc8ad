"""Failover policy on the seeded simulated provider (no network): resume modes, tool calls,
larger-context fallback, the reported error, retry budget, and cleanup when the caller
leaves during a backoff or a hedge race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from providers.base import (
    Delta,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    ToolCallDelta,
    UsageDelta,
)
from router.core import Router
from router.events import DoneEvent, ErrorEvent, Event, FallbackEvent, RouteEvent
from router.request import StreamParams, prepare
from router.resilience.policies import Resilience
from router.serving.failover import Failover
from router.serving.ledger import Ledger
from router.serving.orchestrator import Emitter

Make = Callable[..., Router]
Fleet = Any  # tests/conftest.py's helper, given by the `fleet` fixture
CUT = {"strong": {"fail_after_tokens": 5}}


def text_of(events: list[Event]) -> str:
    return "".join(ev.delta for ev in events if ev.type == "text")


async def reference(fleet: Fleet, make_router: Make) -> str:
    return text_of(await fleet.collect(make_router(), task="best"))


def resumed(**resilience: Any) -> dict[str, Any]:
    base = {"retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0},
            "timeouts": {"ttft_s": 5, "idle_s": 5, "total_s": 30}}
    return {**base, **resilience}


async def test_continue_rescues_the_whole_answer_once(fleet: Fleet, make_router: Make) -> None:
    full = await reference(fleet, make_router)
    r = make_router(options=CUT)
    events = await fleet.collect(r, task="best")
    fb = [ev for ev in events if isinstance(ev, FallbackEvent)]
    assert [(f.from_deployment, f.to_deployment, f.error, f.after_tokens, f.mode)
            for f in fb] == [("strong", "mid", "protocol_error", 5, "continue")]
    assert text_of(events) == full
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.attempts == 2
    assert done.usage.estimated  # the cut attempt reported no usage: counted from deltas
    assert fleet.sim(r).open_streams == 0


async def test_restart_tells_the_caller_to_discard(fleet: Fleet, make_router: Make) -> None:
    full = await reference(fleet, make_router)
    r = make_router(options=CUT, resilience=resumed(resume="restart"))
    events = await fleet.collect(r, task="best")
    fb = next(ev for ev in events if isinstance(ev, FallbackEvent))
    assert fb.mode == "restart" and fb.after_tokens == 5
    after = events[events.index(fb):]
    assert text_of(after) == full  # the whole answer again
    completion = await r.complete("Explain circuit breakers", task="best")
    assert completion.text == full  # complete() discarded the first try


async def test_fail_ends_with_the_mid_stream_error(fleet: Fleet, make_router: Make) -> None:
    r = make_router(options=CUT, resilience=resumed(resume="fail"))
    events = await fleet.collect(r, task="best")
    assert [ev.type for ev in events if ev.type != "text"] == ["route", "start", "error"]
    err = events[-1]
    assert isinstance(err, ErrorEvent)
    assert (err.code, err.deployment) == ("protocol_error", "strong") and err.suggestion


class ToolThenCut:
    """The strong model sends half a tool call and is cut; the others send a whole one."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        if request.model == "sim-pro":
            yield ToolCallDelta(0, "call_1", "search", '{"query": "circ')
            raise ProviderError("protocol_error", "cut mid tool call")
        yield ToolCallDelta(0, "call_2", "search", '{"query": "circuit breakers"}')
        yield UsageDelta(input_tokens=20, output_tokens=8)
        yield FinishDelta("tool_calls")


async def test_tool_call_fragments_cannot_be_continued(fleet: Fleet, make_router: Make) -> None:
    """A JSON fragment already sent cannot be continued: the next deployment restarts."""
    r = make_router()
    r.set_provider("sim", ToolThenCut(fleet.sim(r).settings))
    events = await fleet.collect(r, task="best")
    fb = next(ev for ev in events if isinstance(ev, FallbackEvent))
    assert fb.mode == "restart" and fb.after_tokens == 1
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [
        ("call_2", "search", {"query": "circuit breakers"})]  # not two halves glued


async def test_context_length_skips_candidates_no_larger(fleet: Fleet,
                                                         make_router: Make) -> None:
    # strong (200k) refuses as too long; mid (128k) is smaller, fast (32k) too: no rescue
    # by a smaller window — the original error is reported.
    r = make_router(options={"strong": {"error_rate": 1.0, "error_code": "context_length"}})
    events = await fleet.collect(r, task="best")
    assert [ev.type for ev in events] == ["route", "start", "error"]
    err = events[-1]
    assert isinstance(err, ErrorEvent) and err.code == "context_length" and err.suggestion
    # From the smallest window, a larger one is tried.
    r = make_router(options={"fast": {"error_rate": 1.0, "error_code": "context_length"}})
    events = await fleet.collect(r, task="quick")
    assert events[-1].type == "done"
    fb = next(ev for ev in events if isinstance(ev, FallbackEvent))
    assert fb.error == "context_length" and fb.after_tokens == 0


async def test_all_failed_reports_the_original_error(fleet: Fleet, make_router: Make) -> None:
    r = make_router(options={
        "strong": {"error_rate": 1.0, "error_code": "rate_limited"},
        "mid": {"error_rate": 1.0, "error_code": "overloaded"},
        "fast": {"error_rate": 1.0, "error_code": "provider_error"}})
    events = await fleet.collect(r, task="best")
    assert [ev.type for ev in events] == ["route", "start", "fallback", "start", "fallback",
                                          "start", "error"]
    err = events[-1]
    assert isinstance(err, ErrorEvent)
    assert (err.code, err.deployment, err.status) == ("rate_limited", "strong", 429)
    assert err.retryable and err.suggestion


async def test_refused_prefill_never_masks_the_original_failure(fleet: Fleet,
                                                                make_router: Make) -> None:
    r = make_router(options={"strong": {"fail_after_tokens": 5},
                             "mid": {"reject_prefill": True, "error_rate": 0.0},
                             "fast": {"error_rate": 1.0}})
    events = await fleet.collect(r, task="best")
    assert events[-1].type == "done"  # mid continued the explicit way
    assert r.resilience.refusals() == {"mid": ["prefill"]}
    # Now mid fails outright too: the caller hears about the cut, not the 400.
    r = make_router(options={"strong": {"fail_after_tokens": 5},
                             "mid": {"reject_prefill": True, "fail_after_tokens": 0},
                             "fast": {"error_rate": 1.0}})
    events = await fleet.collect(r, task="best")
    err = events[-1]
    assert isinstance(err, ErrorEvent) and err.code == "protocol_error"
    assert err.deployment == "strong"


async def test_leaving_during_a_backoff_closes_everything(fleet: Fleet,
                                                          make_router: Make) -> None:
    r = make_router(options={"strong": {"error_rate": 1.0}}, resilience=resumed(
        retry={"attempts": 3, "initial_backoff_ms": 20000, "max_backoff_ms": 20000}))
    r.resilience.retry._rng = lambda: 1.0  # a long, certain backoff
    stream = r.stream("Explain circuit breakers", task="best")
    kinds = []
    async for ev in stream:
        kinds.append(ev.type)
        if ev.type == "retry":
            break
    # The caller gives up while the router sleeps before the next attempt.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.05)
    await asyncio.wait_for(stream.aclose(), 1)
    assert kinds == ["route", "start", "retry"]
    assert fleet.sim(r).open_streams == 0
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_leaving_during_a_hedge_race_cancels_both(fleet: Fleet, make_router: Make) -> None:
    r = make_router(options={"strong": {"ttft_ms": 60000}, "mid": {"ttft_ms": 60000}},
                    resilience=resumed(hedge={"enabled": True, "after_ms": 10}))
    stream = r.stream("Explain circuit breakers", task="best")
    starts = []
    async for ev in stream:
        if ev.type == "start":
            starts.append(ev.hedge)
        if len(starts) == 2:
            break
    await asyncio.wait_for(stream.aclose(), 1)
    assert starts == [False, True]
    assert fleet.sim(r).open_streams == 0
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    health = r.health()
    assert health["strong"]["breaker"]["fail_counter"] == 0  # leaving is nobody's fault
    assert health["mid"]["breaker"]["probe_in_flight"] is False


async def test_breakers_refusing_after_routing_end_with_circuit_open(fleet: Fleet,
                                                                     make_router: Make) -> None:
    """Breakers that opened between routing and the attempt: no call is made and the error
    is the router's own `circuit_open`."""
    r = make_router()
    fail_max = r.loaded.config.resilience.breaker.fail_max
    for dep in ("strong", "mid"):
        for _ in range(fail_max):
            permit = r.resilience.breakers.admit(dep)
            assert permit is not None
            permit.failure("overloaded")
    req = prepare(StreamParams(input="hi", task="best"), r.loaded)
    ledger = Ledger(Emitter("req"), None)
    ranked = [r.loaded.deployments[d] for d in ("strong", "mid")]
    events = [ev async for ev in Failover(r, req, ranked, ledger.em, ledger).run()]
    assert events == [] and ledger.attempts == []
    assert ledger.failure is not None
    assert (ledger.failure[0].code, ledger.failure[1]) == ("circuit_open", "strong")
    assert fleet.sim(r).calls == 0


async def test_a_continuation_refused_outright_moves_on_to_the_next(fleet: Fleet,
                                                                   make_router: Make) -> None:
    """mid refuses every continuation (prefill, then the explicit way) with a 400: that
    is mid's problem, not the request's, so fast continues the answer."""
    full = await reference(fleet, make_router)
    r = make_router(options=CUT)
    sim = fleet.sim(r)
    original = sim.stream

    def refusing(request: ProviderRequest) -> AsyncIterator[Delta]:
        if request.model == "sim-standard" and len(request.messages) > 1:
            raise ProviderError("bad_request", "continuations not accepted", status=400)
        return original(request)

    sim.stream = refusing  # type: ignore[method-assign]
    events = await fleet.collect(r, task="best")
    assert [(ev.from_deployment, ev.to_deployment, ev.error) for ev in events
            if isinstance(ev, FallbackEvent)] == [("strong", "mid", "protocol_error"),
                                                  ("mid", "fast", "bad_request")]
    assert events[-1].type == "done" and text_of(events) == full


async def test_leaving_at_a_start_event_frees_the_probe_slot(fleet: Fleet,
                                                            make_router: Make) -> None:
    r = make_router()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    r.resilience = Resilience(r.loaded, clock=lambda: now[0])
    cfg = r.loaded.config.resilience.breaker
    for _ in range(cfg.fail_max):
        permit = r.resilience.breakers.admit("strong")
        assert permit is not None
        permit.failure("overloaded")
    now[0] += timedelta(seconds=cfg.reset_timeout_s)
    stream = r.stream("Explain circuit breakers", task="best")
    async for ev in stream:
        if ev.type == "start":
            assert ev.deployment == "strong"  # the probe
            break
    await stream.aclose()
    snap = r.health()["strong"]["breaker"]
    assert snap["state"] == "half_open" and not snap["probe_in_flight"]
    assert r.resilience.breakers.admit("strong") is not None  # the next probe may go


async def test_total_deadline_ends_a_slow_stream_naming_which(fleet: Fleet,
                                                              make_router: Make) -> None:
    r = make_router(options={"strong": {"tokens_per_s": 40, "output_tokens": 200}},
                    resilience=resumed(resume="fail",
                                       timeouts={"ttft_s": 5, "idle_s": 5, "total_s": 0.3}))
    events = await fleet.collect(r, task="best")
    err = events[-1]
    assert isinstance(err, ErrorEvent) and err.code == "timeout"
    assert err.message == "total timeout after 0.3 s"
    assert 0 < len([ev for ev in events if ev.type == "text"]) < 200
    assert fleet.sim(r).open_streams == 0


async def test_a_pinned_deployment_with_an_open_breaker_says_circuit_open(
        fleet: Fleet, make_router: Make) -> None:
    r = make_router()
    for _ in range(r.loaded.config.resilience.breaker.fail_max):
        permit = r.resilience.breakers.admit("fast")
        assert permit is not None
        permit.failure("connection")
    events = await fleet.collect(r, model="fast")
    err = events[-1]
    assert isinstance(err, ErrorEvent)
    assert (err.code, err.retryable) == ("circuit_open", True)
    assert "fast: circuit_open" in err.message and err.suggestion
    assert fleet.sim(r).calls == 0


# --- what the statistics learn from a request ----------------------------------------------


def test_ttft_is_timed_from_the_first_try_on_the_deployment_across_retries(fleet: Fleet
                                                                          ) -> None:
    from router.routing.stats import StatsRegistry

    r = fleet.router()
    strong, mid = r.loaded.deployments["strong"], r.loaded.deployments["mid"]
    now = [0.0]
    em = Emitter("r")
    em.clock = lambda: now[0]
    ledger = Ledger(em, None)
    stats = StatsRegistry(clock=lambda: now[0])
    ledger.begin(strong, 10)  # fails at 1 s
    now[0] = 1.0
    ledger.end_attempt()
    ledger.begin(mid, 10)  # a failed first try, 1.0 -> 1.5 s, then a retry after backoff
    now[0] = 1.5
    ledger.end_attempt()
    now[0] = 1.7
    ledger.begin(mid, 10)
    now[0] = 1.9
    ledger.first_content(stats)
    # mid is charged its own failed try and backoff (0.9 s), not strong's second.
    mid_estimate = stats.get("mid").estimator.snapshot(1.9, 0.9)
    assert mid_estimate.samples == 1 and mid_estimate.ttft_ms == pytest.approx(900.0)
    assert stats.get("strong").estimator.samples == 0


async def test_a_hedge_loser_is_recorded_as_censored(fleet: Fleet, make_router: Make) -> None:
    r = make_router(options={"strong": {"ttft_ms": 60000}},
                    resilience=resumed(hedge={"enabled": True, "after_ms": 10}))
    events = await fleet.collect(r, task="best")
    assert isinstance(events[-1], DoneEvent) and events[-1].deployment == "mid"
    strong = r.stats.snapshot(r.loaded.deployments["strong"])
    assert strong.samples == 1  # its slow first token was not dropped: at least 10 ms
    assert strong.ttft_ms >= 10.0
    assert r.stats.inflight("strong") == 0 and r.stats.inflight("mid") == 0


async def test_a_ttft_is_learnt_at_the_load_its_attempt_was_sent_under(fleet: Fleet,
                                                                       make_router: Make
                                                                       ) -> None:
    """Two requests already in flight on every deployment when this one is sent: its first
    token is reported with those two, whatever the count is by then."""
    r = make_router()
    for dep in r.loaded.deployments:
        for _ in range(2):
            r.stats.attempt_started(dep)
    seen: list[tuple[str, int | None, bool]] = []
    observe = r.stats.observe_ttft

    def spy(deployment_id: str, ttft_ms: float, sent_beside: int | None = None,
            retried: bool = False) -> None:
        seen.append((deployment_id, sent_beside, retried))
        observe(deployment_id, ttft_ms, sent_beside, retried)

    r.stats.observe_ttft = spy  # type: ignore[method-assign]
    events = await fleet.collect(r, task="best")
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert seen == [(done.deployment, 2, False)]


def test_a_retried_ttft_is_unloaded_by_its_first_try_and_does_not_teach_the_slope(
        fleet: Fleet) -> None:
    from router.routing.stats import StatsRegistry

    r = fleet.router()
    mid = r.loaded.deployments["mid"]
    now = [0.0]
    em = Emitter("r")
    em.clock = lambda: now[0]
    ledger = Ledger(em, None)
    stats = StatsRegistry(clock=lambda: now[0])
    first = ledger.begin(mid, 10)  # sent beside 4 others, fails at 0.5 s
    first.sent_beside = 4
    now[0] = 0.5
    ledger.end_attempt()
    now[0] = 0.7
    ledger.begin(mid, 10).sent_beside = 0  # the retry, alone by then
    now[0] = 0.9
    ledger.first_content(stats)
    snap = stats.get("mid").estimator.snapshot(0.9, 0.9)
    assert snap.ttft_ms == pytest.approx(900.0 / (1 + 4 * stats.routing.load_penalty))
    assert stats.get("mid").load.weight(0.9) == 0.0


DOWN = {"error_rate": 1.0, "error_code": "overloaded"}


async def test_when_every_candidate_within_the_latency_budget_fails_one_over_it_answers(
        fleet: Fleet, make_router: Make) -> None:
    # `strong` (prior 900 ms) is over the budget; `fast` and `mid` are within it and down.
    r = make_router(options={"fast": DOWN, "mid": DOWN})
    events = await fleet.collect(r, task="quick", max_ttft_ms=500)
    route = events[0]
    assert isinstance(route, RouteEvent) and route.deployment == "fast"
    hops = [(f.from_deployment, f.to_deployment) for f in events
            if isinstance(f, FallbackEvent)]
    assert hops == [("fast", "mid"), ("mid", "strong")]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.deployment == "strong"
    assert text_of(events)


async def test_a_cost_cap_never_yields_to_a_failure(fleet: Fleet, make_router: Make) -> None:
    # The same, but `strong` is also over the caller's cost cap: the request fails.
    r = make_router(options={"fast": DOWN, "mid": DOWN})
    events = await fleet.collect(r, task="quick", max_ttft_ms=500, max_cost_usd=0.003)
    assert not any(isinstance(f, FallbackEvent) and f.to_deployment == "strong"
                   for f in events)
    end = events[-1]
    assert isinstance(end, ErrorEvent) and end.code == "overloaded"
