"""`Router.stream()` / `Router.complete()` end to end on the simulated fleet: the event
invariants over many seeded runs (property-based), the `done` event's accounting, typed
errors, routing seen from the stream, and cancellation closing the provider stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.base import ProviderRequest, ProviderSettings, TextDelta
from providers.simulated import SimulatedProvider
from router.core import Completion, EventStream, Router
from router.errors import AuthError, InvalidRequestError, NoRouteError, StreamError
from router.events import (
    EVENT_ADAPTER,
    DoneEvent,
    ErrorEvent,
    Event,
    FallbackEvent,
    ReasoningEvent,
    RouteEvent,
    StartEvent,
    TextEvent,
    decode_event,
    encode_event,
)

MakeRouter = Callable[..., Router]


# --- cancellation -----------------------------------------------------------------------------


async def _first_text(stream: EventStream) -> TextEvent:
    async for ev in stream:
        if isinstance(ev, TextEvent):
            return ev
    raise AssertionError("no text event")


async def test_aclose_closes_the_provider_stream_at_once(make_router: MakeRouter,
                                                          fleet: Any) -> None:
    r = make_router()
    provider = fleet.sim(r)
    stream = r.stream("Explain circuit breakers", model="strong")
    await _first_text(stream)
    assert provider.open_streams == 1
    await stream.aclose()
    assert provider.open_streams == 0


async def test_async_with_closes_the_provider_stream_on_exit(make_router: MakeRouter,
                                                             fleet: Any) -> None:
    r = make_router()
    provider = fleet.sim(r)
    async with r.stream("Explain circuit breakers", model="strong") as stream:
        async for ev in stream:
            if isinstance(ev, TextEvent):
                assert provider.open_streams == 1
                break
    assert provider.open_streams == 0


async def test_breaking_out_closes_the_provider_stream_once_the_loop_runs(
        make_router: MakeRouter, fleet: Any) -> None:
    # Without `aclose()` Python finalizes an abandoned async generator through the event
    # loop's asyncgen hook: the provider stream closes within a few loop turns, no GC needed.
    r = make_router()
    provider = fleet.sim(r)
    async for ev in r.stream("Explain circuit breakers", model="strong"):
        if isinstance(ev, TextEvent):
            break
    for _ in range(10):
        if provider.open_streams == 0:
            break
        await asyncio.sleep(0)
    assert provider.open_streams == 0


async def test_cancelling_the_consumer_task_closes_the_provider_stream(
        make_router: MakeRouter, fleet: Any) -> None:
    # A slow provider: the consumer is parked inside the provider's pacing sleep.
    r = make_router(options={"strong": {"tokens_per_s": 5}})
    provider = fleet.sim(r)
    started = asyncio.Event()

    async def consume() -> None:
        async for ev in r.stream("Explain circuit breakers", model="strong"):
            if isinstance(ev, TextEvent):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert provider.open_streams == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.open_streams == 0


# --- event invariants over many seeded runs -------------------------------------------------

TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Look it up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}
# `pair` tries mid first (higher quality), then fast: the fallback path of the fault runs.
PAIR = {"pair": {"candidates": ["mid", "fast"], "prefer": "quality"}}
FAILURE_CODES = ("overloaded", "rate_limited", "provider_error", "connection", "timeout")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A request on `pair` with an optional fault on mid: a failure before the first token
    (fallback to fast) or a cut after `k` text tokens (fast continues the answer)."""
    kind = draw(st.sampled_from(["none", "before_first_token", "cut"]))
    sc: dict[str, Any] = {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "prompt": draw(st.text(min_size=1, max_size=60).filter(str.strip)),
        "output_tokens": draw(st.integers(2 if kind == "cut" else 1, 120)),
        "max_tokens": draw(st.none() | st.integers(1, 150)),
        "shape": draw(st.sampled_from(["text", "reasoning", "tool"])),
        "fault": draw(st.sampled_from(FAILURE_CODES)) if kind == "before_first_token" else None,
        "cut_after": None,
    }
    if kind == "cut":
        # A cut before the end of a text answer and before max_tokens (else mid finishes).
        cut = draw(st.integers(1, sc["output_tokens"] - 1))
        sc.update(shape="text", cut_after=cut,
                  max_tokens=draw(st.none() | st.integers(cut + 1, 150)))
    # Whether the fallback takes a prefill: the continuation then goes as a final assistant
    # message instead of an instruction to continue.
    sc["fallback_prefill"] = draw(st.booleans())
    return sc


def _scenario_config(fleet: Any, sc: dict[str, Any]) -> dict[str, Any]:
    common: dict[str, Any] = {"output_tokens": sc["output_tokens"]}
    if sc["shape"] == "reasoning":
        common["reasoning_tokens"] = 5
    mid = dict(common)
    if sc["fault"] is not None:
        mid.update(error_rate=1.0, error_code=sc["fault"])
    if sc["cut_after"] is not None:
        mid.update(fail_after_tokens=sc["cut_after"])
    cfg: dict[str, Any] = fleet.config(seed=sc["seed"], tasks=PAIR,
                                       options={"mid": mid, "fast": common})
    if sc["fallback_prefill"]:
        cfg["deployments"][0]["capabilities"] = ["tools", "prefill"]
    return cfg


def _options(sc: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {"task": "pair", "max_tokens": sc["max_tokens"]}
    if sc["shape"] == "tool":
        opts.update(tools=[TOOL], tool_choice="lookup")
    return opts


def assert_stream_invariants(events: list[Event]) -> None:
    """What every consumer relies on, whatever happened in the stream."""
    assert [ev.seq for ev in events] == list(range(len(events)))
    terminal = [i for i, ev in enumerate(events) if ev.type in ("done", "error")]
    assert terminal == [len(events) - 1], "exactly one terminal event, and it is last"
    assert len({ev.request_id for ev in events}) == 1
    elapsed = [ev.elapsed_ms for ev in events]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    for ev in events:
        # The hot path builds events with model_construct: the schema must still hold.
        assert EVENT_ADAPTER.validate_python(ev.model_dump()) == ev
        assert decode_event(encode_event(ev)) == ev
        # ... and its JSON is the validated event's, key order included.
        assert encode_event(decode_event(encode_event(ev))) == encode_event(ev)


async def _run_scenario(fleet: Any, sc: dict[str, Any]) -> None:
    cfg = _scenario_config(fleet, sc)
    r = fleet.router(cfg)
    events = await fleet.collect(r, sc["prompt"], **_options(sc))
    assert_stream_invariants(events)
    assert isinstance(events[0], RouteEvent) and events[0].deployment == "mid"
    done = events[-1]
    assert isinstance(done, DoneEvent), done
    _check_failover(sc, events, done)
    served_by = r.loaded.deployments[done.deployment]
    assert done.model == served_by.model and done.provider == served_by.provider
    texts = [ev.delta for ev in events if isinstance(ev, TextEvent)]
    await _check_answer(sc, events, done)
    _check_usage_and_cost(sc, r, texts, done)

    # complete() on an identical fresh router returns the concatenated deltas.
    result = await fleet.router(cfg).complete(sc["prompt"], **_options(sc))
    assert result.text == "".join(texts)
    assert result.deployment == done.deployment and result.usage == done.usage
    assert result.finish_reason == done.finish_reason
    assert result.tool_calls == done.tool_calls
    reasoning = "".join(ev.delta for ev in events if isinstance(ev, ReasoningEvent))
    assert result.reasoning == reasoning
    assert (reasoning != "") == (sc["shape"] == "reasoning")


def _check_failover(sc: dict[str, Any], events: list[Event], done: DoneEvent) -> None:
    """mid serves unless it failed: then fast, after one `fallback` saying how."""
    fallbacks = [(f.from_deployment, f.to_deployment, f.error, f.after_tokens, f.mode)
                 for f in events if isinstance(f, FallbackEvent)]
    starts = [ev.deployment for ev in events if isinstance(ev, StartEvent)]
    if sc["fault"] is not None:
        assert fallbacks == [("mid", "fast", sc["fault"], 0, None)]
    elif sc["cut_after"] is not None:
        if not fallbacks:
            # What mid sent already counts as max_tokens: nothing is left to continue.
            assert sc["max_tokens"] is not None and done.finish_reason == "length"
            assert (done.deployment, done.attempts, starts) == ("mid", 1, ["mid"])
            return
        assert fallbacks == [("mid", "fast", "protocol_error", sc["cut_after"], "continue")]
    else:
        assert (done.deployment, done.attempts, fallbacks, starts) == ("mid", 1, [], ["mid"])
        return
    assert done.deployment == "fast" and starts == ["mid", "fast"] and done.attempts == 2


async def _check_answer(sc: dict[str, Any], events: list[Event], done: DoneEvent) -> None:
    """The text is exactly the simulated answer, cut at max_tokens, each token once (also
    across a continuation)."""
    n_answer, limit = sc["output_tokens"], sc["max_tokens"]
    texts = [ev.delta for ev in events if isinstance(ev, TextEvent)]
    if sc["shape"] == "tool":
        assert texts == [] and done.finish_reason == "tool_calls"
        # the arguments fit the tool's schema
        assert [(c.name, list(c.arguments)) for c in done.tool_calls] == [("lookup", ["query"])]
        assert isinstance(done.tool_calls[0].arguments["query"], str)
        return
    assert done.tool_calls == []
    text = "".join(texts)
    if sc["cut_after"] is not None:
        await _check_continued_answer(sc, events, done)
        return
    assert done.finish_reason == ("length" if limit is not None and limit < n_answer
                                  else "stop")
    assert len(texts) == min(n_answer, limit or n_answer)
    if sc["shape"] == "text":
        assert text == await _direct_answer(sc, limit or 400)


async def _check_continued_answer(sc: dict[str, Any], events: list[Event],
                                  done: DoneEvent) -> None:
    """After a cut, the next deployment continues: no token twice, none lost, and never more
    words than max_tokens (a continuation gets what is left, counted ~4 characters a token,
    which never undercounts a simulated word)."""
    at = next((i for i, ev in enumerate(events) if isinstance(ev, FallbackEvent)), None)
    if at is None:  # nothing was left of max_tokens to continue (see _check_failover)
        text = "".join(ev.delta for ev in events if isinstance(ev, TextEvent))
        assert (await _direct_answer(sc, 400)).startswith(text)
        return
    before = "".join(ev.delta for ev in events[:at] if isinstance(ev, TextEvent))
    after = "".join(ev.delta for ev in events[at:] if isinstance(ev, TextEvent))
    full = await _direct_answer(sc, 400)
    # (A continuation with a token or so left may produce only the whitespace the splice
    # drops: then the answer ends there, at max_tokens.)
    assert full.startswith(before) and (after or done.finish_reason == "length")
    rest = full[len(before):]
    # An instructed continuation may repeat the end of the partial answer; the router trims
    # a repeat of >= 8 characters of its tail at the seam (so an answer that really repeats
    # itself there loses that repeat). A prefill continuation is joined as is.
    seams = [""] if sc["fallback_prefill"] else [""] + [
        before[i:] for i in range(len(before) - 7) if rest.startswith(before[i:])]
    assert any(rest[len(seam):].startswith(after) for seam in seams), (before, after, full)
    if sc["max_tokens"] is not None:
        assert len((before + after).split()) <= sc["max_tokens"]
    else:
        assert done.finish_reason == "stop"


def _check_usage_and_cost(sc: dict[str, Any], r: Router, texts: list[str],
                          done: DoneEvent) -> None:
    usage = done.usage
    assert done.cost.total_usd == pytest.approx(done.cost_usd)
    assert done.cost.input_usd + done.cost.output_usd == pytest.approx(done.cost_usd)
    if sc["cut_after"] is not None:
        # The cut attempt reported nothing: its tokens are counted and marked estimated;
        # every token is billed at mid's or fast's price.
        assert usage.estimated and usage.output_tokens >= len("".join(texts).split())
        bounds = [(usage.input_tokens * r.loaded.deployments[d].price.input_per_mtok
                   + usage.output_tokens * r.loaded.deployments[d].price.output_per_mtok) / 1e6
                  for d in ("mid", "fast")]
        assert min(bounds) * (1 - 1e-9) <= done.cost_usd <= max(bounds) * (1 + 1e-9)
        return
    # Usage is what the provider reported; cost is usage at the serving deployment's prices
    # (a failed attempt produced and reported nothing, so it costs nothing).
    n_reasoning = 5 if sc["shape"] == "reasoning" else 0
    n_tool = 2 if sc["shape"] == "tool" else 0
    assert usage.output_tokens == len(texts) + n_reasoning + n_tool
    assert usage.reasoning_tokens == n_reasoning
    assert not usage.estimated and usage.input_tokens > 0
    price = r.loaded.deployments[done.deployment].price
    expected = (usage.input_tokens * price.input_per_mtok
                + usage.output_tokens * price.output_per_mtok) / 1e6
    assert done.cost_usd == pytest.approx(expected, rel=1e-9)


async def _direct_answer(sc: dict[str, Any], max_tokens: int) -> str:
    """The answer drained from the simulated provider directly, without the router."""
    provider = SimulatedProvider(ProviderSettings(name="sim", kind="simulated",
                                                  options={"seed": sc["seed"]}))
    request = ProviderRequest(model="sim-flash", max_tokens=max_tokens,
                              messages=[{"role": "user", "content": sc["prompt"]}],
                              options={"output_tokens": sc["output_tokens"]})
    return "".join([d.text async for d in provider.stream(request) if isinstance(d, TextDelta)])


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sc=scenarios())
def test_event_invariants_hold_over_seeded_simulated_runs(fleet: Any, sc: dict[str, Any]
                                                          ) -> None:
    asyncio.run(_run_scenario(fleet, sc))


# --- done, complete() and typed errors -------------------------------------------------------


async def test_done_reports_latency_and_the_whole_request(make_router: MakeRouter,
                                                          fleet: Any) -> None:
    r = make_router(options={"fast": {"ttft_ms": 30, "output_tokens": 20}})
    events = await fleet.collect(r, "Summarize this", model="fast", request_id="req-1")
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert {ev.request_id for ev in events} == {"req-1"}
    assert done.latency.ttft_ms is not None and done.latency.ttft_ms >= 30
    assert done.latency.ttft_ms <= done.latency.total_ms == pytest.approx(done.elapsed_ms)
    assert done.latency.tokens_per_s is not None and done.latency.tokens_per_s > 0
    assert (done.deployment, done.provider, done.model, done.attempts) == (
        "fast", "sim", "sim-flash", 1)
    assert done.usage.output_tokens == 20


async def test_complete_returns_the_done_fields(make_router: MakeRouter) -> None:
    r = make_router()
    result = await r.complete([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "hi"}], model="mid")
    assert isinstance(result, Completion)
    assert result.deployment == "mid" and result.model == "sim-standard"
    assert result.text and result.finish_reason == "stop" and result.attempts == 1
    assert result.cost_usd > 0 and result.usage.output_tokens > 0


async def test_stream_and_event_stream_share_the_request_id(make_router: MakeRouter) -> None:
    r = make_router()
    stream = r.stream("hi")
    events = [ev async for ev in stream]
    assert {ev.request_id for ev in events} == {stream.request_id}
    assert len(stream.request_id) >= 16


async def test_no_route_names_every_exclusion_and_raises_no_route_error(
        make_router: MakeRouter, fleet: Any) -> None:
    r = make_router()
    events = await fleet.collect(r, "hi", max_cost_usd=1e-9)
    assert [ev.type for ev in events] == ["route", "error"]
    route, err = events
    assert isinstance(route, RouteEvent) and isinstance(err, ErrorEvent)
    assert route.deployment is None and route.reason == "no eligible candidate"
    assert all(not c.eligible and c.reason and c.reason.startswith("max_cost_usd")
               for c in route.candidates)
    assert err.code == "no_route" and not err.retryable and err.suggestion
    for dep in ("mid", "fast", "strong"):
        assert f"{dep}: max_cost_usd: estimated $" in err.message
    with pytest.raises(NoRouteError) as caught:
        await r.complete("hi", max_cost_usd=1e-9)
    assert caught.value.event.code == "no_route" and caught.value.code == "no_route"


@pytest.mark.parametrize(("options", "message"), [
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"prefer": "fastest"}, "prefer: Input should be 'cost', 'latency'"),
    ({"max_latency_ms": -1}, "max_latency_ms: Input should be greater than 0"),
    # Once silently ignored (NaN compares false with every cost) or an overflow.
    ({"max_cost_usd": float("nan")}, "max_cost_usd: Input should be a finite number"),
    ({"max_cost_usd": float("inf")}, "max_cost_usd: Input should be a finite number"),
    ({"max_cost_usd": 1e308}, "max_cost_usd: Input should be less than or equal to"),
    ({"temperature": float("nan")}, "temperature: Input should be a finite number"),
    ({"stop": 5}, "stop: Input should be a valid string"),
    ({"tools": [{"description": "no name"}]}, "tools[0]: expected a tool with a name"),
])
async def test_bad_requests_end_with_one_error_event(
        make_router: MakeRouter, fleet: Any, options: dict[str, Any], message: str) -> None:
    r = make_router()
    events = await fleet.collect(r, "hi", **options)
    assert len(events) == 1
    err = events[0]
    assert isinstance(err, ErrorEvent) and err.seq == 0
    assert err.code == "bad_request" and message in err.message
    with pytest.raises(InvalidRequestError):
        await r.complete("hi", **options)
    assert fleet.sim(r).calls == 0


async def test_empty_prompt_is_a_bad_request(make_router: MakeRouter) -> None:
    with pytest.raises(InvalidRequestError, match="the prompt is empty"):
        await make_router().complete("   ")


async def test_client_error_of_a_pinned_model_raises_its_typed_error(make_router: MakeRouter,
                                                             fleet: Any) -> None:
    r = make_router(options={"mid": {"error_rate": 1.0, "error_code": "auth"}})
    events = await fleet.collect(r, "hi", model="mid")
    err = events[-1]
    assert isinstance(err, ErrorEvent)
    assert (err.code, err.deployment, err.status, err.retryable) == ("auth", "mid", 401, False)
    assert not any(isinstance(ev, FallbackEvent) for ev in events)
    with pytest.raises(AuthError):
        await r.complete("hi", model="mid")


async def test_auth_failure_is_not_hidden_by_other_candidates(make_router: MakeRouter,
                                                              fleet: Any) -> None:
    r = make_router(options={"strong": {"error_rate": 1.0, "error_code": "auth"}},
                    tasks={"strong_first": {"candidates": ["strong", "fast"],
                                            "prefer": "quality"}})
    events = await fleet.collect(r, "hi", task="strong_first")
    assert [ev.type for ev in events] == ["route", "start", "error"]
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "auth"
    assert fleet.sim(r).calls == 1


async def test_pinned_model_is_never_replaced(make_router: MakeRouter, fleet: Any) -> None:
    r = make_router(options={"mid": {"error_rate": 1.0, "error_code": "overloaded"}})
    events = await fleet.collect(r, "hi", model="mid")
    route = events[0]
    assert isinstance(route, RouteEvent)
    assert route.reason == "pinned model mid"
    assert [c.deployment for c in route.candidates] == ["mid"]
    assert {ev.deployment for ev in events if isinstance(ev, StartEvent)} == {"mid"}
    err = events[-1]
    assert isinstance(err, ErrorEvent) and err.code == "overloaded" and err.retryable
    with pytest.raises(StreamError) as caught:
        await r.complete("hi", model="mid")
    assert caught.value.code == "overloaded"


async def test_cut_stream_is_an_error_and_is_counted_against_the_deployment(
        make_router: MakeRouter, fleet: Any) -> None:
    r = make_router(options={"fast": {"fail_after_tokens": 3}})
    events = await fleet.collect(r, "hi", model="fast")
    assert [ev.type for ev in events[2:5]] == ["text"] * 3
    err = events[-1]
    assert isinstance(err, ErrorEvent) and err.code == "protocol_error"
    health = r.health()["fast"]
    assert (health["requests"], health["failures"], health["last_error"]) == (
        1, 1, "protocol_error")


async def test_observed_latency_changes_the_next_route(make_router: MakeRouter,
                                                       fleet: Any) -> None:
    # Priors say fast (120 ms TTFT, 400 tok/s) beats strong (900 ms, 50 tok/s); strong
    # actually answers instantly, and once observed it wins on latency.
    r = make_router()
    before = r.route("hi", task="quick")
    assert before.chosen is not None and before.chosen.deployment.id == "fast"
    await r.complete("hi", model="strong")
    assert r.health()["strong"]["observed"]
    after = r.route("hi", task="quick")
    assert after.chosen is not None and after.chosen.deployment.id == "strong"
    assert after.chosen.ttft_ms < 120


async def test_router_context_manager_closes_its_providers(fleet: Any) -> None:
    closed: list[str] = []

    class Recording:
        settings = None

        def stream(self, request: Any) -> Any:
            raise NotImplementedError

        async def aclose(self) -> None:
            closed.append("sim")

    async with fleet.router() as r:
        r.set_provider("sim", Recording())
    assert closed == ["sim"]


async def test_continuation_gets_what_is_left_of_max_tokens(make_router: MakeRouter,
                                                             fleet: Any) -> None:
    options = {"mid": {"output_tokens": 60, "fail_after_tokens": 5},
               "fast": {"output_tokens": 60}}
    r = make_router(tasks=PAIR, options=options)
    events = await fleet.collect(r, "Explain circuit breakers", task="pair", max_tokens=30)
    assert any(isinstance(ev, FallbackEvent) and ev.mode == "continue" for ev in events)
    text = "".join(ev.delta for ev in events if isinstance(ev, TextEvent))
    full = await make_router(tasks=PAIR, options=options).complete(
        "Explain circuit breakers", model="fast")
    # Simulated tokens are words: the caller asked for at most 30 of them.
    assert full.text.startswith(text) and 5 < len(text.split()) <= 30
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "length"


async def test_a_short_last_continuation_is_not_mistaken_for_a_repeat(
        make_router: MakeRouter, fleet: Any) -> None:
    # mid is cut 2 words before the end with 1 token of max_tokens left: fast's one-word
    # continuation also occurs earlier in the answer, and must still reach the caller.
    options = {"mid": {"output_tokens": 48, "fail_after_tokens": 46},
               "fast": {"output_tokens": 48}}
    r = make_router(seed=0, tasks=PAIR, options=options)
    events = await fleet.collect(r, "0", task="pair", max_tokens=83)
    at = next(i for i, ev in enumerate(events) if isinstance(ev, FallbackEvent))
    after = [ev.delta for ev in events[at:] if isinstance(ev, TextEvent)]
    assert len(after) == 1 and after[0].strip()
    text = "".join(ev.delta for ev in events if isinstance(ev, TextEvent))
    full = await make_router(seed=0, tasks=PAIR, options=options).complete("0", model="fast")
    assert full.text.startswith(text) and len(text.split()) == 47


async def test_no_fallback_is_announced_when_max_tokens_is_already_used_up(
        make_router: MakeRouter, fleet: Any) -> None:
    # mid is cut after 3 words ("For caps agent ", counted as 5 tokens) of the 4 asked for:
    # nothing is left for a continuation.
    r = make_router(tasks=PAIR, options={"mid": {"output_tokens": 60, "fail_after_tokens": 3}})
    events = await fleet.collect(r, "Explain circuit breakers", task="pair", max_tokens=4)
    assert_stream_invariants(events)
    assert [ev.type for ev in events] == ["route", "start"] + ["text"] * 3 + ["done"]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert (done.deployment, done.finish_reason, done.attempts) == ("mid", "length", 1)
    assert fleet.sim(r).calls == 1


# --- spending caps ---------------------------------------------------------------------------


async def test_max_cost_usd_stops_the_stream_at_the_cap(
        make_router: MakeRouter, fleet: Any) -> None:
    # The route estimate (20 output tokens) fits the cap; the answer (400 tokens) does not.
    r = make_router(options={"strong": {"output_tokens": 400}},
                    tasks={"terse": {"candidates": ["strong"], "expected_output_tokens": 20}})
    cap = 0.001
    events = await fleet.collect(r, "hi", task="terse", max_cost_usd=cap)
    assert_stream_invariants(events)
    done = events[-1]
    assert isinstance(done, DoneEvent), done
    assert done.finish_reason == "budget"
    # The cap holds to within one chunk (the next chunk's size is unknown until it
    # arrives); the longest simulated word counts 3 tokens at $15/M.
    assert cap * 0.9 < done.cost_usd <= cap + 3 * 15e-6
    texts = [ev for ev in events if isinstance(ev, TextEvent)]
    assert 0 < len(texts) < 400
    assert fleet.sim(r).open_streams == 0


async def test_route_event_marks_the_chosen_and_eligible_candidates(
        make_router: MakeRouter, fleet: Any) -> None:
    r = make_router()
    route = (await fleet.collect(r, "hi", task="cheap", max_ttft_ms=500))[0]
    assert isinstance(route, RouteEvent)
    assert {c.deployment: (c.eligible, c.reason) for c in route.candidates} == {
        "strong": (False, "max_ttft_ms: estimated 900 ms > 500 ms"),
        "mid": (True, "eligible"),
        "fast": (True, "chosen"),
    }
    assert (route.deployment, route.provider, route.model) == ("fast", "sim", "sim-flash")
    chosen = next(c for c in route.candidates if c.deployment == "fast")
    assert (route.estimated_cost_usd, route.estimated_ttft_ms, route.estimated_latency_ms) == (
        chosen.estimated_cost_usd, chosen.estimated_ttft_ms, chosen.estimated_latency_ms)


async def test_concurrent_streams_keep_their_own_numbering_and_all_close(
        make_router: MakeRouter, fleet: Any) -> None:
    # Paced streams interleave on the loop: each keeps its own request_id and seq.
    r = make_router(options={name: {"tokens_per_s": 5000, "output_tokens": 15}
                             for name in ("fast", "mid", "strong")})
    prompts = [f"question {i}" for i in range(40)]
    results = await asyncio.gather(*(fleet.collect(r, p) for p in prompts))
    for events in results:
        assert_stream_invariants(events)
        assert isinstance(events[-1], DoneEvent)
    assert len({events[0].request_id for events in results}) == len(prompts)
    assert fleet.sim(r).open_streams == 0 and fleet.sim(r).calls == len(prompts)


async def test_the_route_event_explains_each_estimate_and_load_returns_to_zero(
        make_router: MakeRouter, fleet: Any) -> None:
    r = make_router()
    events = await fleet.collect(r, "hi", task="quick")
    route = events[0]
    assert isinstance(route, RouteEvent)
    for cand in route.candidates:
        assert cand.estimate is not None
        assert cand.estimate.quantile == 0.9 and cand.estimate.samples == 0
        assert cand.estimate.level == 0.9  # no evidence: no allowance either
        assert cand.estimate.age_s is None and not cand.estimate.explore
        # Nothing measured: the config's load penalty stands for its load sensitivity.
        assert cand.estimate.load_slope == r.loaded.config.routing.load_penalty
    served = route.deployment
    assert served is not None
    assert r.stats.inflight(served) == 0  # counted at the attempt's start, freed at its end
    estimate = r.health()[served]["estimate"]
    assert estimate["samples"] == 1 and estimate["inflight"] == 0
    assert estimate["load_slope"] == r.loaded.config.routing.load_penalty  # one load seen
    # One sample: the budget quantile is read one standard error lower (0.9 - 0.3).
    assert estimate["level"] == pytest.approx(0.6)
    again = (await fleet.collect(r, "hi", task="quick"))[0]
    assert isinstance(again, RouteEvent)
    mine = next(c for c in again.candidates if c.deployment == served)
    assert mine.estimate is not None and mine.estimate.samples == 1


def test_a_vendor_key_set_after_the_router_was_built_makes_its_deployment_available(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from router.config import parse_config

    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    r = Router(parse_config({
        "version": 1, "providers": {"oa": {"kind": "openai_compatible", "vendor": "deepseek"}},
        "deployments": [{"id": "gpt", "provider": "oa", "model": "gpt-x",
                         "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}))
    dep = r.loaded.deployments["gpt"]
    assert r.unavailable_reason(dep) == "missing_api_key: set DEEPSEEK_API_KEY"
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-later")
    assert r.unavailable_reason(dep) is None  # read from the environment at each use
    assert r.provider_settings("oa").api_key is not None
    monkeypatch.setenv("DEEPSEEK_API_KEY", "")
    assert r.unavailable_reason(dep) == "missing_api_key: set DEEPSEEK_API_KEY"



async def test_stream_passes_each_argument_to_its_own_field(make_router: MakeRouter) -> None:
    # `Router.stream` builds `StreamParams` positionally: a swap of two arguments of one type
    # would pass the type checker, not this.
    import dataclasses

    from router.request import StreamParams

    r = make_router()
    seen: list[StreamParams] = []
    r._run_stream = lambda ctx, params, rid: seen.append(params) or _no_events()
    given: dict[str, Any] = {
        "task": "t", "model": "m", "prefer": "cost", "max_ttft_ms": 1.0,
        "max_latency_ms": 2.0, "max_cost_usd": 3.0, "max_tokens": 4, "temperature": 0.5,
        "system": "s", "tools": [{"name": "x"}], "tool_choice": "auto", "stop": "END",
        "metadata": {"user": "u"}, "response_format": {"type": "text"},
        "params": {"seed": 1}}
    r.stream("hi", **given)
    assert [f.name for f in dataclasses.fields(StreamParams)][1:] == list(given)
    assert seen == [StreamParams("hi", **given)]


async def _no_events() -> AsyncIterator[Any]:
    return
    yield
