"""The fault matrix of issue 4 over real sockets: for each wire format (OpenAI-compatible,
Anthropic, Ollama) a router with a primary and a fallback deployment on the loopback
provider server, and one scripted fault per case. Each case checks the events in order,
the attempts the server saw, the wall time, exactly one terminal event (last), the text
(the whole answer, once, when rescued), usage and cost, and that no connection, response
or task outlives the stream."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from router.config import parse_config
from router.core import Router
from router.events import DoneEvent, ErrorEvent, Event, FallbackEvent, RetryEvent
from router.resilience.continuation import CONTINUE_INSTRUCTION
from router.resilience.policies import Resilience
from router.testing import LoopbackProvider, Reply

WIRES = ("openai", "openai_responses", "anthropic", "ollama")
ANSWER = "Hello from the loopback server, streaming a complete answer."
PIECES = Reply.from_text(ANSWER).text  # one word a chunk, leading spaces kept
FULL = Reply(text=PIECES)
TTFT_S = 0.5
IDLE_S = 0.5


def rest(after: int) -> Reply:
    """The continuation a fallback streams after `after` pieces were sent."""
    return Reply(text=PIECES[after:])


def config(wire: str, base_url: str) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "openai": {"kind": "openai_compatible", "base_url": base_url + "/v1",
                   "api_key": "sk-test"},
        "openai_responses": {"kind": "openai_responses", "base_url": base_url + "/v1",
                             "api_key": "sk-test"},
        "anthropic": {"kind": "anthropic", "base_url": base_url, "api_key": "sk-ant-test"},
        "ollama": {"kind": "ollama", "base_url": base_url},
    }[wire]
    price = {"input_per_mtok": 1.0, "output_per_mtok": 4.0}
    prior = {"ttft_ms": 100, "tokens_per_s": 100}
    return {
        "version": 1,
        "providers": {"lb": provider},
        "deployments": [
            {"id": "primary", "provider": "lb", "model": "primary", "price": price,
             "context_window": 8000, "latency_prior": prior, "quality": 0.9},
            {"id": "fallback", "provider": "lb", "model": "fallback", "price": price,
             "context_window": 100000, "latency_prior": prior, "quality": 0.5,
             "capabilities": ["prefill"]},
        ],
        "tasks": {"t": {"candidates": ["primary", "fallback"], "prefer": "quality"}},
        "defaults": {"task": "t", "max_tokens": 200},
        "resilience": {
            "retry": {"attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 1500},
            "breaker": {"fail_max": 2, "reset_timeout_s": 30},
            "timeouts": {"connect_s": 2, "ttft_s": TTFT_S, "idle_s": IDLE_S, "total_s": 10},
        },
    }


@dataclass
class Case:
    primary: list[Reply]
    fallback: list[Reply] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # event types, runs of text as "text"
    seen: tuple[int, int] = (1, 0)  # requests the server saw: primary, fallback
    rescued: bool = True
    error: str | None = None  # the code of the terminal error, when not rescued
    fallback_error: str | None = None
    after_tokens: int = 0
    max_wall_s: float = 1.5
    complete_on: tuple[str, ...] = ()  # wires on which the primary's answer is complete


OK = ["route", "start", "text", "done"]
RETRIED = ["route", "start", "retry", "start", "text", "done"]
FELL_BACK = ["route", "start", "fallback", "start", "text", "done"]
CONTINUED = ["route", "start", "text", "fallback", "start", "text", "done"]

CASES: dict[str, Case] = {
    "429 with Retry-After": Case([Reply.rate_limited(retry_after=0.05), FULL], kinds=RETRIED,
                                 seen=(2, 0)),
    "429 without Retry-After": Case([Reply.rate_limited(), FULL], kinds=RETRIED, seen=(2, 0)),
    "500 once": Case([Reply.server_error(), FULL], kinds=RETRIED, seen=(2, 0)),
    "503 persistent": Case([Reply.unavailable()] * 2, [FULL],
                           kinds=["route", "start", "retry", "start", "fallback", "start",
                                  "text", "done"], seen=(2, 1), fallback_error="overloaded"),
    "529 overloaded": Case([Reply.overloaded(), FULL], kinds=RETRIED, seen=(2, 0)),
    "reset before headers": Case([Reply.reset(), FULL], kinds=RETRIED, seen=(2, 0)),
    "no response": Case([Reply.no_response()], [FULL], kinds=FELL_BACK, seen=(1, 1),
                        fallback_error="timeout"),
    "slow first token": Case([FULL.slow(5.0)], [FULL], kinds=FELL_BACK, seen=(1, 1),
                             fallback_error="timeout"),
    "cut after 3 tokens": Case([FULL.cut(3)], [rest(3)], kinds=CONTINUED, seen=(1, 1),
                               after_tokens=3),
    "stall": Case([FULL.stall(3)], [rest(3)], kinds=CONTINUED, seen=(1, 1),
                  fallback_error="timeout", after_tokens=3),
    "stall with keep-alives": Case([FULL.stall(3, keepalive_s=0.05)], [rest(3)],
                                   kinds=CONTINUED, seen=(1, 1), fallback_error="timeout",
                                   after_tokens=3),
    "malformed chunk": Case([FULL.malformed(3)], [rest(3)], kinds=CONTINUED, seen=(1, 1),
                            fallback_error="protocol_error", after_tokens=3),
    # Finish reason and usage arrived, only the marker is lost: complete where the wire
    # carries both before its marker (re-serving would pay twice), a failover elsewhere.
    "missing terminal marker": Case([FULL.without_terminal()], [rest(len(PIECES))],
                                    kinds=["route", "start", "text", "fallback", "start",
                                           "done"], seen=(1, 1),
                                    fallback_error="protocol_error", after_tokens=len(PIECES),
                                    complete_on=("openai", "anthropic")),
    "missing finish and marker": Case([FULL.without_finish()], [rest(len(PIECES))],
                                      kinds=["route", "start", "text", "fallback", "start",
                                             "done"], seen=(1, 1),
                                      fallback_error="protocol_error",
                                      after_tokens=len(PIECES)),
    "in-stream error": Case([FULL.stream_error(3)], [rest(3)], kinds=CONTINUED, seen=(1, 1),
                            after_tokens=3),
    "401": Case([Reply.unauthorized()], kinds=["route", "start", "error"], rescued=False,
                error="auth"),
    "400 context length": Case([Reply.context_length()], [FULL], kinds=FELL_BACK,
                               seen=(1, 1), fallback_error="context_length"),
    "400 content filter": Case([Reply.content_filter()], kinds=["route", "start", "error"],
                               rescued=False, error="content_filter"),
    "fallback rejects prefill": Case(
        [FULL.cut(3)], [Reply.http_error(400, "bad_request"), rest(3)],
        kinds=["route", "start", "text", "fallback", "start", "start", "text", "done"],
        seen=(1, 2), after_tokens=3),
}


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider(default=FULL) as server:
        yield server


def compress(events: list[Event]) -> list[str]:
    kinds: list[str] = []
    for ev in events:
        if ev.type not in ("text",) or not kinds or kinds[-1] != ev.type:
            kinds.append(ev.type)
    return kinds


async def settle(srv: LoopbackProvider, router: Router) -> None:
    """After a stream: no response still being written; after closing the router: no
    connection and no task left."""
    await eventually(lambda: srv.active_streams == 0)
    await router.aclose()
    await srv.wait_idle(2)
    me = asyncio.current_task()
    await eventually(lambda: not [t for t in asyncio.all_tasks() if t is not me and not t.done()])


async def eventually(condition: Callable[[], bool], within_s: float = 2.0) -> None:
    """Poll `condition` (the server notices a hang-up asynchronously)."""
    for _ in range(int(within_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def make_router(wire: str, srv: LoopbackProvider) -> Router:
    return Router(parse_config(config(wire, srv.base_url), "matrix.yaml", env={}))


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("name", list(CASES))
async def test_fault(srv: LoopbackProvider, wire: str, name: str) -> None:
    case = CASES[name]
    if wire in case.complete_on:
        case = replace(case, fallback=[], kinds=OK, seen=(1, 0))
    srv.enqueue(*case.primary, model="primary")
    srv.enqueue(*case.fallback, model="fallback")
    router = make_router(wire, srv)
    t0 = time.perf_counter()
    events = [ev async for ev in router.stream("Say hello")]
    wall = time.perf_counter() - t0
    try:
        assert compress(events) == case.kinds, events
        assert [ev.seq for ev in events] == list(range(len(events)))
        terminal = [ev for ev in events if isinstance(ev, DoneEvent | ErrorEvent)]
        assert len(terminal) == 1 and terminal[0] is events[-1]
        seen = (len(srv.requests_for(model="primary")), len(srv.requests_for(model="fallback")))
        assert seen == case.seen
        assert wall < case.max_wall_s
        text = "".join(ev.delta for ev in events if ev.type == "text")
        if case.rescued:
            done = events[-1]
            assert isinstance(done, DoneEvent)
            assert text == ANSWER
            assert done.usage.output_tokens > 0 and done.usage.input_tokens > 0
            assert done.cost_usd > 0 and done.cost.total_usd == pytest.approx(done.cost_usd)
            assert done.attempts == sum(1 for ev in events if ev.type == "start")
        else:
            err = events[-1]
            assert isinstance(err, ErrorEvent)
            assert err.code == case.error and err.suggestion
            assert err.deployment == "primary" and err.status == 400 + (err.code == "auth")
        for fb in (ev for ev in events if isinstance(ev, FallbackEvent)):
            assert (fb.from_deployment, fb.to_deployment) == ("primary", "fallback")
            assert fb.after_tokens == case.after_tokens
            assert fb.mode == ("continue" if case.after_tokens else None)
            if case.fallback_error:
                assert fb.error == case.fallback_error
        for retry in (ev for ev in events if isinstance(ev, RetryEvent)):
            assert retry.deployment == "primary" and retry.attempt == 2
            assert 0 <= retry.delay_ms <= 1500
    finally:
        await settle(srv, router)


@pytest.mark.parametrize("wire", WIRES)
async def test_slow_first_token_fails_over_within_ttft(srv: LoopbackProvider, wire: str) -> None:
    srv.enqueue(FULL.slow(5.0), model="primary")
    router = make_router(wire, srv)
    fallback_at = None
    t0 = time.perf_counter()
    async for ev in router.stream("Say hello"):
        if ev.type == "fallback":
            fallback_at = time.perf_counter() - t0
    assert fallback_at is not None and TTFT_S <= fallback_at < TTFT_S + 0.25
    await settle(srv, router)


@pytest.mark.parametrize("wire", WIRES)
async def test_continuation_requests_carry_the_partial_answer(srv: LoopbackProvider,
                                                              wire: str) -> None:
    """Prefill first (the fallback has the capability); after its 400, the explicit
    instruction — and the 400 is remembered for the next rescue."""
    srv.enqueue(FULL.cut(3), FULL.cut(3), model="primary")
    srv.enqueue(Reply.http_error(400, "bad_request"), rest(3), rest(3), model="fallback")
    router = make_router(wire, srv)
    for _ in range(2):
        events = [ev async for ev in router.stream("Say hello")]
        assert "".join(ev.delta for ev in events if ev.type == "text") == ANSWER
    bodies = [r.json for r in srv.requests_for(model="fallback")]
    assert len(bodies) == 3  # prefill refused once, then instruct twice
    partial = "".join(PIECES[:3])
    assert _last_message_text(bodies[0]) == partial.rstrip()
    for body in bodies[1:]:
        assert _last_message_text(body) == CONTINUE_INSTRUCTION
        assert partial in str(body)
    assert router.resilience.refusals() == {"fallback": ["prefill"]}
    await settle(srv, router)


def _last_message_text(body: Any) -> str:
    content = (body["messages"] if "messages" in body else body["input"])[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("wire", WIRES)
async def test_primary_down_then_recovers(srv: LoopbackProvider, wire: str) -> None:
    """The breaker opens after fail_max failures, traffic goes to the fallback without
    touching the primary, a probe after reset_timeout_s finds it back, and it serves again."""
    router = make_router(wire, srv)
    clock = FakeClock()
    router.resilience = Resilience(router.loaded, clock=clock)
    srv.set_default(Reply.unavailable(), model="primary")
    served: list[str] = []

    async def one() -> list[Event]:
        events = [ev async for ev in router.stream("Say hello")]
        done = events[-1]
        assert isinstance(done, DoneEvent)
        assert "".join(ev.delta for ev in events if ev.type == "text") == ANSWER
        served.append(done.deployment)
        return events

    await one()  # 2 attempts on primary (retry), then the fallback
    assert router.health()["primary"]["breaker"]["state"] == "open"
    events = await one()
    route = events[0]
    assert route.type == "route"
    assert [(c.deployment, c.reason) for c in route.candidates] == [
        ("primary", "circuit_open"), ("fallback", "chosen")]
    assert len(srv.requests_for(model="primary")) == 2
    srv.set_default(FULL, model="primary")
    clock.now += timedelta(seconds=31)
    await one()  # the probe
    assert router.health()["primary"]["breaker"]["state"] == "closed"
    await one()
    assert served == ["fallback", "fallback", "primary", "primary"]
    assert len(srv.requests_for(model="primary")) == 4
    await settle(srv, router)


@pytest.mark.parametrize("wire", WIRES)
async def test_leaving_mid_stream_closes_the_upstream(srv: LoopbackProvider, wire: str) -> None:
    srv.enqueue(Reply(text=PIECES, token_delay_s=0.05), model="primary")
    router = make_router(wire, srv)
    stream = router.stream("Say hello")
    seen = []
    async for ev in stream:
        seen.append(ev.type)
        if ev.type == "text":
            break
    await stream.aclose()
    assert seen == ["route", "start", "text"]
    # Leaving is not the provider's fault: nothing counts against its breaker.
    assert router.health()["primary"]["breaker"]["fail_counter"] == 0
    await settle(srv, router)


@pytest.mark.parametrize("wire", WIRES)
async def test_hedge_wins_and_the_loser_is_closed(srv: LoopbackProvider, wire: str) -> None:
    data = config(wire, srv.base_url)
    data["resilience"]["hedge"] = {"enabled": True, "after_ms": 50}
    data["resilience"]["timeouts"]["ttft_s"] = 5
    router = Router(parse_config(data, "hedge.yaml", env={}))
    srv.enqueue(FULL.slow(3.0), model="primary")
    t0 = time.perf_counter()
    events = [ev async for ev in router.stream("Say hello")]
    wall = time.perf_counter() - t0
    starts = [(ev.deployment, ev.hedge) for ev in events if ev.type == "start"]
    assert starts == [("primary", False), ("fallback", True)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.deployment == "fallback" and done.attempts == 2
    assert "".join(ev.delta for ev in events if ev.type == "text") == ANSWER
    # The loser's prompt is counted: more input than the winner's alone.
    assert done.usage.input_tokens > 12 and done.usage.estimated
    assert wall < 1.0
    await settle(srv, router)




async def test_a_provider_that_refuses_connections_fails_over(srv: LoopbackProvider) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    data = config("openai", srv.base_url)
    data["providers"]["down"] = {"kind": "openai_compatible", "api_key": "sk-test",
                                 "base_url": f"http://127.0.0.1:{dead}/v1"}
    data["deployments"][0]["provider"] = "down"
    router = Router(parse_config(data, "down.yaml", env={}))
    events = [ev async for ev in router.stream("Say hello")]
    assert compress(events) == ["route", "start", "retry", "start", "fallback", "start", "text",
                                "done"]
    fb = next(ev for ev in events if isinstance(ev, FallbackEvent))
    assert fb.error == "connection"
    assert "".join(ev.delta for ev in events if ev.type == "text") == ANSWER
    await settle(srv, router)
