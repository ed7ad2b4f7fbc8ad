"""The OpenAI-compatible endpoints, driven by the official `openai` SDK over a real loopback
socket: what the SDK gets (text, tool calls, usage, errors) must equal what the router's own
events said for the same request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import openai
import orjson
import pytest

from router.config import parse_config
from router.core import Router
from router.events import (
    Cost,
    DoneEvent,
    FallbackEvent,
    Latency,
    StartEvent,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from router.server.app import create_app
from tests.server.conftest import RecordingRouter, ScriptedRouter, script, uvicorn_on_loopback

KEY = "sk-test-openai-compat-0123456789"

CONFIG: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated", "options": {"seed": 3}}},
    "deployments": [
        {"id": "fast", "provider": "sim", "model": "sim-flash", "capabilities": ["tools"],
         "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
         "latency_prior": {"ttft_ms": 50, "tokens_per_s": 400}, "quality": 0.5,
         "options": {"ttft_ms": 2, "tokens_per_s": 4000}},
        {"id": "thinker", "provider": "sim", "model": "sim-pro",
         "capabilities": ["tools", "reasoning"],
         "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
         "latency_prior": {"ttft_ms": 400, "tokens_per_s": 50}, "quality": 0.9,
         "options": {"ttft_ms": 2, "tokens_per_s": 4000, "reasoning_tokens": 4}},
        {"id": "slow", "provider": "sim", "model": "sim-slow",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "latency_prior": {"ttft_ms": 900, "tokens_per_s": 20},
         "options": {"ttft_ms": 1, "tokens_per_s": 20, "output_tokens": 400}},
        {"id": "cut", "provider": "sim", "model": "sim-cut",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "latency_prior": {"ttft_ms": 900, "tokens_per_s": 20},
         "options": {"fail_after_tokens": 3}},
        {"id": "limited", "provider": "sim", "model": "sim-limited",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "latency_prior": {"ttft_ms": 900, "tokens_per_s": 20},
         "options": {"error_rate": 1.0, "error_code": "rate_limited"}},
        {"id": "stall", "provider": "sim", "model": "sim-stall",
         "price": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
         "latency_prior": {"ttft_ms": 1, "tokens_per_s": 4000},
         "options": {"stall_after_tokens": 3}},
        {"id": "thinks-long", "provider": "sim", "model": "sim-long",
         "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
         "latency_prior": {"ttft_ms": 900, "tokens_per_s": 20},
         "options": {"ttft_ms": 1500}},
    ],
    "tasks": {
        "chat": {"candidates": ["fast", "thinker"], "prefer": "latency",
                 "description": "interactive chat"},
        "deep": {"candidates": ["thinker"], "prefer": "quality"},
        "stally": {"candidates": ["stall", "fast"], "prefer": "latency"},
    },
    "defaults": {"task": "chat"},
    "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 1, "max_backoff_ms": 1},
                   "timeouts": {"ttft_s": 2, "idle_s": 0.3, "total_s": 10}},
    "server": {"api_keys": [{"name": "tester", "sha256": __import__("hashlib").sha256(
        KEY.encode()).hexdigest()}]},
}
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup_lead", "description": "Find a lead by query",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}]


@pytest.fixture
async def router() -> AsyncIterator[RecordingRouter]:
    inner = Router(parse_config(CONFIG))
    yield RecordingRouter(inner)
    await inner.aclose()



@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


def request_id_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


def _expected_usage(done: DoneEvent) -> dict[str, int]:
    u = done.usage
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens}


def _usage(usage: Any) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


# --- non-streaming ------------------------------------------------------------------------


async def test_completion_returns_the_routed_text_and_usage(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    res = await client.chat.completions.create(
        model="chat", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Qualify this lead: Acme"}])
    rid = request_id_of(res.id)
    done = router.done(rid)
    assert res.object == "chat.completion"
    assert res.model == done.deployment == "fast"
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == router.text(rid) != ""
    assert choice.finish_reason == done.finish_reason == "stop"
    assert res.usage is not None and _usage(res.usage) == _expected_usage(done)
    assert res.model_extra is not None
    assert res.model_extra["x_router"]["cost_usd"] == pytest.approx(done.cost_usd)


async def test_completion_with_forced_tool_returns_the_tool_call(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    res = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "find Acme"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup_lead"}})
    done = router.done(request_id_of(res.id))
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == len(done.tool_calls) == 1
    assert calls[0].id == done.tool_calls[0].id
    assert calls[0].function.name == done.tool_calls[0].name == "lookup_lead"
    assert orjson.loads(calls[0].function.arguments) == done.tool_calls[0].arguments


async def test_model_may_name_a_deployment_and_routing_options_ride_as_extra_fields(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    pinned = await client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert pinned.model == "thinker"
    assert pinned.choices[0].finish_reason == "length"
    assert pinned.usage is not None and pinned.usage.completion_tokens == 4 + 5  # reasoning too
    reasoning = pinned.choices[0].message.model_extra or {}
    assert reasoning.get("reasoning_content", "").startswith("step 1")
    # `prefer: quality` moves the chat task from the fast deployment to the strong one.
    quality = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}],
        extra_body={"prefer": "quality", "max_cost_usd": 1.0})
    assert quality.model == "thinker"
    route = router.events[request_id_of(quality.id)][0]
    assert route.type == "route" and route.deployment == "thinker"


# --- streaming ----------------------------------------------------------------------------


async def test_stream_chunks_text_and_usage_chunk(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Qualify this lead: Globex"}],
        stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    rid = request_id_of(chunks[0].id)
    done = router.done(rid)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == router.text(rid) != ""
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert _usage(usage_chunk.usage) == _expected_usage(done)
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_tool_call_fragments_accumulate_to_the_done_tool_calls(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "find Initech"}], tools=TOOLS,
        tool_choice="required", stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    rid = ""
    async for chunk in stream:
        rid = request_id_of(chunk.id)
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or ():
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            assert tc.function is not None
            call["name"] += tc.function.name or ""
            call["arguments"] += tc.function.arguments or ""
    done = router.done(rid)
    assert finish == "tool_calls"
    assert [(c["id"], c["name"], orjson.loads(c["arguments"])) for c in calls.values()] == [
        (t.id, t.name, t.arguments) for t in done.tool_calls]
    fragments = [e for e in router.events[rid] if isinstance(e, ToolCallEvent)]
    assert len(fragments) == 2  # streamed as fragments, not one piece


async def test_stream_without_include_usage_has_no_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hello"}], stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_raw_stream_ends_with_done_marker(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http, http.stream(
        "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["x-request-id"]
        body = (await res.aread()).decode()
    frames = body.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(f.startswith("data: ") for f in frames[:-1])


# --- errors -------------------------------------------------------------------------------


async def test_unknown_model_is_a_404_model_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_missing_messages_is_a_400_naming_the_param(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        res = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "chat"})
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert set(error) >= {"message", "type", "param", "code"}


async def test_no_route_before_streaming_is_an_http_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"max_cost_usd": 1e-12})
    assert info.value.code == "no_route"
    assert "max_cost_usd" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"


async def test_provider_rate_limit_before_first_token_is_an_http_429(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="limited", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["x-should-retry"] == "true"


async def test_an_exhausted_key_budget_is_a_429_the_sdk_does_not_retry() -> None:
    config = {**CONFIG, "budgets": [{"scope": "key", "limit_usd": 1e-9, "window": "day"}]}
    router = RecordingRouter(Router(parse_config(config)))
    try:
        async with uvicorn_on_loopback(create_app(router)) as (_, url), openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key=KEY, max_retries=2) as client:
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(
                    model="fast", messages=[{"role": "user", "content": "hi"}])
    finally:
        await router.aclose()
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert "key:tester" in info.value.message  # the key's budget scope was charged
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(router.events) == 1  # the SDK did not retry


async def test_failure_after_tokens_is_an_in_stream_error(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    stream = await client.chat.completions.create(
        model="cut", messages=[{"role": "user", "content": "hello"}], stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    rid = next(iter(router.events))
    assert text == router.text(rid) != ""  # the tokens before the failure arrived
    assert router.events[rid][-1].type == "error"
    assert isinstance(info.value.body, Mapping)
    assert info.value.body["code"] == "protocol_error"


async def test_wrong_key_is_refused_with_401(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong",
                                  max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


async def test_client_disconnect_closes_the_upstream_stream(
    client: openai.AsyncOpenAI, router: RecordingRouter, base_url: str
) -> None:
    provider = router.provider("sim")
    stream = await client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "write at length"}], stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert provider.open_streams == 1  # type: ignore[attr-defined]
    await stream.close()
    for _ in range(400):
        if provider.open_streams == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.005)
    assert provider.open_streams == 0  # type: ignore[attr-defined]
    rid = next(iter(router.events))
    assert not any(e.type in ("done", "error") for e in router.events[rid])
    assert "llm_router_active_streams 0.0" in await _metrics(base_url)


async def _metrics(base_url: str) -> str:
    async with httpx.AsyncClient(base_url=base_url) as http:
        res = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 200
    return res.text


async def test_compat_streams_are_counted_in_the_server_metrics(
    client: openai.AsyncOpenAI, base_url: str
) -> None:
    await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True)
    async for _ in stream:
        pass
    text = await _metrics(base_url)
    assert 'llm_router_requests_total{deployment="fast",outcome="stop"} 2.0' in text
    assert 'llm_router_ttft_seconds_count{deployment="fast"} 2.0' in text
    assert "llm_router_active_streams 0.0" in text


async def test_metadata_run_id_copies_the_events_to_the_run_channel(
    client: openai.AsyncOpenAI, router: RecordingRouter, base_url: str
) -> None:
    res = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}],
        metadata={"run_id": "agent-run-7"})
    types: list[str] = []
    async with httpx.AsyncClient(base_url=base_url) as http, http.stream(
        "GET", "/v1/runs/agent-run-7/events", headers={"Authorization": f"Bearer {KEY}"},
    ) as sse:
        assert sse.status_code == 200
        async for line in sse.aiter_lines():
            if line.startswith("event: "):
                types.append(line.removeprefix("event: "))
                if types[-1] == "done":
                    break
    assert types == [e.type for e in router.events[request_id_of(res.id)]]


async def test_idle_timeout_mid_stream_fails_over_with_continuation(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    # The first deployment goes silent after 3 tokens; the core's idle deadline fires in
    # the task that reads the stream and the answer continues on the next deployment.
    stream = await client.chat.completions.create(
        model="stally", messages=[{"role": "user", "content": "hello"}], stream=True)
    chunks = [c async for c in stream]
    rid = request_id_of(chunks[0].id)
    types = [e.type for e in router.events[rid]]
    assert "fallback" in types and types[-1] == "done"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == router.text(rid)
    assert {c.model for c in chunks} == {"stall", "fast"}


async def test_disconnect_before_the_first_token_closes_the_upstream(
    base_url: str, router: RecordingRouter
) -> None:
    provider: Any = router.provider("sim")
    async with httpx.AsyncClient(base_url=base_url) as http:
        request = asyncio.create_task(http.post(
            "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "thinks-long", "stream": True,
                  "messages": [{"role": "user", "content": "hi"}]}))
        for _ in range(400):
            if provider.open_streams == 1:
                break
            await asyncio.sleep(0.005)
        assert provider.open_streams == 1  # waiting for its first token
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
    for _ in range(100):  # 0.5 s: the first token is due only after 1.5 s
        if provider.open_streams == 0:
            break
        await asyncio.sleep(0.005)
    assert provider.open_streams == 0  # closed long before its first token was due
    assert "llm_router_active_streams 0.0" in await _metrics(base_url)


# --- models -------------------------------------------------------------------------------


async def test_models_lists_auto_tasks_and_deployments(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert ids == ["auto", "chat", "deep", "stally", "fast", "thinker", "slow", "cut",
                   "limited", "stall", "thinks-long"]
    kinds = {m.id: (m.model_extra or {}).get("kind") for m in page.data}
    assert kinds["chat"] == "task" and kinds["fast"] == "deployment"
    assert all(m.object == "model" for m in page.data)
    one = await client.models.retrieve("thinker")
    assert one.id == "thinker" and one.owned_by == "sim"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


# --- scripted event sequences -------------------------------------------------------------


def _start(dep: str) -> tuple[type[Any], dict[str, Any]]:
    return StartEvent, {"deployment": dep, "provider": "sim", "model": "m", "attempt": 1}


def _done(finish: str, calls: list[ToolCall]) -> tuple[type[Any], dict[str, Any]]:
    return DoneEvent, {"deployment": "thinker", "provider": "sim", "model": "m",
                       "finish_reason": finish, "tool_calls": calls,
                       "usage": Usage(input_tokens=30, cached_input_tokens=10,
                                      output_tokens=12, reasoning_tokens=2),
                       "cost_usd": 0.001, "cost": Cost(), "latency": Latency(total_ms=5.0),
                       "attempts": 2}


@contextlib.asynccontextmanager
async def scripted_client(*specs: tuple[type[Any], dict[str, Any]]
                          ) -> AsyncIterator[openai.AsyncOpenAI]:
    app = create_app(ScriptedRouter(script(*specs), CONFIG))
    async with uvicorn_on_loopback(app) as (_, url), openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


async def test_interleaved_parallel_tool_calls_accumulate_by_index() -> None:
    calls = [ToolCall(id="call_a", name="lookup", arguments={"q": "A"}),
             ToolCall(id="call_b", name="lookup", arguments={"q": "B"})]
    async with scripted_client(
        _start("thinker"),
        (TextEvent, {"delta": "Checking both."}),
        (ToolCallEvent, {"index": 0, "id": "call_a", "name": "lookup",
                         "arguments_delta": '{"q":'}),
        (ToolCallEvent, {"index": 1, "id": "call_b", "name": "lookup",
                         "arguments_delta": '{"q":"B"}'}),
        (ToolCallEvent, {"index": 0, "id": None, "name": None, "arguments_delta": '"A"}'}),
        _done("tool_calls", calls),
    ) as client, client.chat.completions.stream(
        model="chat", messages=[{"role": "user", "content": "A and B"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking both."
    assert [(c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in message.tool_calls or ()] == [
        ("call_a", "lookup", '{"q":"A"}'), ("call_b", "lookup", '{"q":"B"}')]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 10
    assert final.usage.completion_tokens_details is not None
    assert final.usage.completion_tokens_details.reasoning_tokens == 2


RESTART = (
    _start("fast"),
    (TextEvent, {"delta": "The par"}),
    (FallbackEvent, {"from_deployment": "fast", "to_deployment": "thinker",
                     "error": "protocol_error", "after_tokens": 1, "mode": "restart"}),
    _start("thinker"),
    (TextEvent, {"delta": "The whole answer."}),
    _done("stop", []),
)


async def test_a_restarted_answer_replaces_the_partial_one_when_not_streaming() -> None:
    async with scripted_client(*RESTART) as client:
        res = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].message.content == "The whole answer."
    assert res.model == "thinker"


async def test_a_restart_after_streamed_text_ends_the_stream_with_an_error() -> None:
    async with scripted_client(*RESTART) as client:
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = ""
        with pytest.raises(openai.APIError, match="cannot be retracted"):
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
    assert text == "The par"
