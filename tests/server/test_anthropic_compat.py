"""The Anthropic-compatible endpoint, driven by the official `anthropic` SDK over a real
loopback socket (what it gets must equal the router's own events for the same request), and
the request translation into `Router.stream`'s OpenAI-shaped input."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from router.config import parse_config
from router.core import Router
from router.events import (
    Cost,
    DoneEvent,
    Latency,
    ReasoningEvent,
    StartEvent,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from router.request import StreamParams, prepare
from router.server.anthropic_request import MessagesBody, stream_kwargs, to_openai_messages
from router.server.app import create_app
from router.server.compat import RequestProblem, parse_body
from tests.server.conftest import RecordingRouter, ScriptedRouter, script, uvicorn_on_loopback

KEY = "sk-ant-test-compat-0123456789"

CONFIG: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated", "options": {"seed": 5}}},
    "deployments": [
        {"id": "fast", "provider": "sim", "model": "sim-flash", "capabilities": ["tools"],
         "price": {"input_per_mtok": 0.1, "cached_input_per_mtok": 0.01,
                   "output_per_mtok": 0.4},
         "latency_prior": {"ttft_ms": 50, "tokens_per_s": 400},
         "options": {"ttft_ms": 2, "tokens_per_s": 4000}},
        {"id": "thinker", "provider": "sim", "model": "sim-pro",
         "capabilities": ["tools", "reasoning"],
         "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
         "latency_prior": {"ttft_ms": 400, "tokens_per_s": 50},
         "options": {"ttft_ms": 2, "tokens_per_s": 4000, "reasoning_tokens": 3}},
        {"id": "cut", "provider": "sim", "model": "sim-cut",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "options": {"fail_after_tokens": 2}},
        {"id": "limited", "provider": "sim", "model": "sim-limited",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "options": {"error_rate": 1.0, "error_code": "rate_limited"}},
        {"id": "stall", "provider": "sim", "model": "sim-stall",
         "price": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
         "latency_prior": {"ttft_ms": 1, "tokens_per_s": 4000},
         "options": {"stall_after_tokens": 3}},
    ],
    "tasks": {"chat": {"candidates": ["fast", "thinker"], "prefer": "latency"},
              "stally": {"candidates": ["stall", "fast"], "prefer": "latency"}},
    "defaults": {"task": "chat"},
    "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 1, "max_backoff_ms": 1},
                   "timeouts": {"ttft_s": 2, "idle_s": 0.3, "total_s": 10}},
    "server": {"api_keys": [{"name": "ant", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
}
TOOL = {"name": "lookup_lead", "description": "Find a lead",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}


@pytest.fixture
async def router() -> AsyncIterator[RecordingRouter]:
    inner = Router(parse_config(CONFIG))
    yield RecordingRouter(inner, id_prefix="msg_")
    await inner.aclose()



@pytest.fixture
async def client(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0) as c:
        yield c


def _usage(done: DoneEvent) -> tuple[int, int]:
    return done.usage.input_tokens - done.usage.cached_input_tokens, done.usage.output_tokens


# --- through the SDK ----------------------------------------------------------------------


async def test_message_returns_the_routed_text_and_usage(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    msg = await client.messages.create(
        model="chat", max_tokens=200, system="Be brief.",
        messages=[{"role": "user", "content": "Qualify this lead: Acme"}])
    done = router.done(msg.id)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == done.deployment == "fast"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == router.text(msg.id) != ""  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == _usage(done)
    assert router.last_kwargs["system"] == "Be brief."


async def test_stream_helper_yields_the_text_and_final_usage(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    async with client.messages.stream(
        model="auto", max_tokens=200,
        messages=[{"role": "user", "content": "Qualify this lead: Globex"}],
    ) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    done = router.done(final.id)
    assert "".join(pieces) == router.text(final.id) != ""
    assert len(pieces) > 1  # streamed, not delivered whole
    assert final.content[0].text == "".join(pieces)  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == _usage(done)


async def test_raw_stream_follows_the_messages_event_order(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    stream = await client.messages.create(
        model="thinker", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": "think first"}])
    events = [ev async for ev in stream]
    types = [ev.type for ev in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    starts = [ev for ev in events if ev.type == "content_block_start"]
    assert [(ev.index, ev.content_block.type) for ev in starts] == [(0, "thinking"), (1, "text")]
    stops = [ev.index for ev in events if ev.type == "content_block_stop"]
    assert stops == [0, 1]
    msg_id = events[0].message.id  # type: ignore[union-attr]
    thinking = "".join(ev.delta.thinking for ev in events  # type: ignore[union-attr]
                       if ev.type == "content_block_delta" and ev.delta.type == "thinking_delta")
    reasoning = "".join(e.delta for e in router.of(msg_id) if isinstance(e, ReasoningEvent))
    assert thinking == reasoning == "step 1 step 2 step 3 "
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert delta.usage.output_tokens == router.done(msg_id).usage.output_tokens  # type: ignore[union-attr]


async def test_stream_tool_use_accumulates_to_the_done_tool_calls(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    async with client.messages.stream(
        model="chat", max_tokens=200, tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "find Initech"}],
    ) as stream:
        final = await stream.get_final_message()
    done = router.done(final.id)
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        (t.id, t.name, t.arguments) for t in done.tool_calls]
    assert uses[0].input == {"query": "Initech"}  # the simulator draws it from the prompt


async def test_tool_result_turn_round_trips(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    msg = await client.messages.create(
        model="fast", max_tokens=400, tools=[TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "find Initech"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking it up."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup_lead",
                 "input": {"query": "Initech"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "Initech: 200 staff"}]}]},
        ])
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].text == router.text(msg.id) != ""  # type: ignore[union-attr]
    # The router received the turn in the OpenAI chat shape.
    assert [m["role"] for m in router.last_args[0]] == ["user", "assistant", "tool"]
    assert router.last_args[0][2] == {"role": "tool", "tool_call_id": "toolu_1",
                                      "content": "Initech: 200 staff"}


async def test_idle_timeout_mid_stream_continues_on_the_next_deployment(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    async with client.messages.stream(
        model="stally", max_tokens=400, messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    types = [e.type for e in router.of(final.id)]
    assert "fallback" in types and types[-1] == "done"
    assert "".join(pieces) == router.text(final.id)
    assert final.stop_reason == "end_turn"


async def test_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await client.messages.create(model="claude-nonexistent", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_unsupported_block_is_a_400_naming_where(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model="chat", max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}])
    assert "messages.0.content.0.type" in info.value.message


async def test_rate_limit_before_first_token_is_an_http_429(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="limited", max_tokens=10, stream=True,
                                     messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_failure_after_tokens_is_an_error_event(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    text = ""
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(
            model="cut", max_tokens=50, messages=[{"role": "user", "content": "hello"}],
        ) as stream:
            async for piece in stream.text_stream:
                text += piece
    (events,) = router.events.values()
    assert text == "".join(e.delta for e in events if isinstance(e, TextEvent)) != ""
    assert events[-1].type == "error"
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_bearer_auth_works_and_a_wrong_key_is_refused(base_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=base_url, auth_token=KEY, api_key=None,
                                        max_retries=0) as bearer:
        msg = await bearer.messages.create(model="fast", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
        assert msg.content
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-wrong",
                                        max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.create(model="fast", max_tokens=5,
                                        messages=[{"role": "user", "content": "hi"}])


async def test_count_tokens_is_the_routers_input_estimate(
    client: anthropic.AsyncAnthropic, router: RecordingRouter
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Qualify this lead: Acme"}]
    count = await client.messages.count_tokens(model="chat", system="Be brief.",
                                               messages=messages)
    prepared = prepare(StreamParams(input=messages, task="chat", system="Be brief."),
                       router.loaded)
    assert count.input_tokens == prepared.constraints.input_tokens > 0


async def test_message_start_reports_the_input_estimate_not_zero(
    client: anthropic.AsyncAnthropic,
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Qualify this lead: Acme"}]
    count = await client.messages.count_tokens(model="chat", system="Be brief.",
                                               messages=messages)
    stream = await client.messages.create(model="chat", system="Be brief.", max_tokens=50,
                                          messages=messages, stream=True)
    events = [ev async for ev in stream]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == count.input_tokens > 0


async def test_models_list_in_the_anthropic_shape(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert ids == ["auto", "chat", "stally", "fast", "thinker", "cut", "limited", "stall"]
    assert all(m.type == "model" for m in page.data)
    assert (await client.models.retrieve("fast")).display_name.startswith("fast (deployment")
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-nonexistent")


# --- translation --------------------------------------------------------------------------


def test_messages_translate_to_the_openai_chat_shape() -> None:
    out = to_openai_messages([
        {"role": "user", "content": "find Initech"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "Initech"}},
            {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "and also"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "200 staff"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "timeout"}]},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBO"}}]},
    ])
    assert out == [
        {"role": "user", "content": "find Initech"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q":"Initech"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "200 staff"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"},
        {"role": "user", "content": [
            {"type": "text", "text": "and also"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
    ]


def _kwargs(body: dict[str, Any], router: Router, scope_key: str | None) -> dict[str, Any]:
    checked = parse_body(MessagesBody, {"messages": [{"role": "user", "content": "hi"}], **body})
    return stream_kwargs(checked, router, scope_key)


def test_request_fields_map_onto_stream_arguments() -> None:
    router = Router(parse_config(CONFIG))
    kwargs = _kwargs({
        "model": "chat", "max_tokens": 64, "temperature": 0.2, "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        "tools": [TOOL], "tool_choice": {"type": "tool", "name": "lookup_lead"},
        "max_latency_ms": 900, "prefer": "cost", "metadata": {"user_id": "u1"},
    }, router, "team-a")
    assert kwargs == {
        "task": "chat", "max_tokens": 64, "temperature": 0.2, "stop": ["END"],
        "system": "Be brief.", "tools": [TOOL], "tool_choice": "lookup_lead",
        "max_latency_ms": 900, "prefer": "cost",
        "metadata": {"user_id": "u1", "key": "team-a"},
        "params": {"user": "u1"},  # metadata.user_id is also the sampling parameter `user`
    }
    assert _kwargs({"model": "fast", "tool_choice": {"type": "any"}}, router,
                   None) == {"model": "fast", "tool_choice": "required"}
    with pytest.raises(RequestProblem, match="max_cost_usd"):
        _kwargs({"model": "chat", "max_cost_usd": "cheap"}, router, None)


# --- scripted event sequences -------------------------------------------------------------


PARALLEL_TOOLS = script(
    (StartEvent, {"deployment": "fast", "provider": "sim", "model": "sim-flash", "attempt": 1}),
    (TextEvent, {"delta": "Checking both."}),
    (ToolCallEvent, {"index": 0, "id": "call_a", "name": "lookup", "arguments_delta": '{"q":'}),
    (ToolCallEvent, {"index": 1, "id": "call_b", "name": "lookup",
                     "arguments_delta": '{"q":"B"}'}),
    (ToolCallEvent, {"index": 0, "id": None, "name": None, "arguments_delta": '"A"}'}),
    (DoneEvent, {"deployment": "fast", "provider": "sim", "model": "sim-flash",
                 "finish_reason": "tool_calls",
                 "tool_calls": [ToolCall(id="call_a", name="lookup", arguments={"q": "A"}),
                                ToolCall(id="call_b", name="lookup", arguments={"q": "B"})],
                 "usage": Usage(input_tokens=30, cached_input_tokens=10, output_tokens=12),
                 "cost_usd": 0.001, "cost": Cost(), "latency": Latency(total_ms=5.0),
                 "attempts": 1}),
)


async def test_interleaved_parallel_tool_calls_reach_the_sdk_as_separate_blocks() -> None:
    app = create_app(ScriptedRouter(PARALLEL_TOOLS, CONFIG))
    async with uvicorn_on_loopback(app) as (_, url), anthropic.AsyncAnthropic(
        base_url=url, api_key=KEY, max_retries=0
    ) as client, client.messages.stream(
        model="chat", max_tokens=100, messages=[{"role": "user", "content": "A and B"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking both."  # type: ignore[union-attr]
    assert [(b.id, b.input) for b in final.content[1:]] == [  # type: ignore[union-attr]
        ("call_a", {"q": "A"}), ("call_b", {"q": "B"})]
    assert final.stop_reason == "tool_use"
    # Anthropic counts cache reads apart from input tokens.
    assert final.usage.input_tokens == 20 and final.usage.cache_read_input_tokens == 10
