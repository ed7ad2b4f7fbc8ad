"""`POST /v1/responses`, driven by the official `openai` SDK (`client.responses`) over a
real loopback socket: what the SDK gets (text, reasoning, function calls, usage, errors)
must equal what the router's own events said for the same request, and the raw stream
must follow the Responses API's event grammar."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from router.config import parse_config
from router.core import Router
from router.server.app import create_app
from tests.server.conftest import RecordingRouter, uvicorn_on_loopback
from tests.server.test_openai_compat import CONFIG, KEY

TOOLS: list[Any] = [{"type": "function", "name": "lookup_lead",
                     "description": "Find a lead by query", "strict": False,
                     "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                    "required": ["query"]}}]


@pytest.fixture
async def router() -> AsyncIterator[RecordingRouter]:
    inner = Router(parse_config(CONFIG))
    yield RecordingRouter(inner, id_prefix="resp_")
    await inner.aclose()



@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


def _usage(u: Any) -> tuple[int, int, int, int, int]:
    return (u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens,
            u.output_tokens_details.reasoning_tokens, u.total_tokens)


def _expected_usage(router: RecordingRouter, response_id: str) -> tuple[int, ...]:
    u = router.done(response_id).usage
    return (u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens,
            u.input_tokens + u.output_tokens)


# --- non-streaming ------------------------------------------------------------------------


async def test_create_returns_the_routed_text_and_usage(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    res = await client.responses.create(model="chat", input="Qualify this lead: Acme",
                                        instructions="Be brief.")
    done = router.done(res.id)
    assert res.object == "response" and res.status == "completed"
    assert res.model == done.deployment == "fast"
    assert res.output_text == router.text(res.id) != ""
    assert [item.type for item in res.output] == ["message"]
    assert res.instructions == "Be brief."
    assert res.usage is not None and _usage(res.usage) == _expected_usage(router, res.id)
    assert router.last_kwargs["system"] == "Be brief."
    assert (res.model_extra or {})["x_router"]["cost_usd"] == pytest.approx(done.cost_usd)


async def test_max_output_tokens_ends_incomplete_and_reasoning_is_its_own_item(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    res = await client.responses.create(model="thinker", input="hi", max_output_tokens=5)
    assert res.status == "incomplete"
    assert res.incomplete_details is not None
    assert res.incomplete_details.reason == "max_output_tokens"
    reasoning, message = res.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.content is not None and reasoning.content[0].text.startswith("step 1")
    assert router.last_kwargs["max_tokens"] == 5
    assert res.usage is not None and res.usage.output_tokens_details.reasoning_tokens == 4


# --- streaming ----------------------------------------------------------------------------


async def test_stream_follows_the_event_grammar_and_carries_text_and_usage(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    stream = await client.responses.create(model="auto", input="Qualify this lead: Globex",
                                           stream=True)
    events = [ev async for ev in stream]
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    types = [ev.type for ev in events]
    deltas = types.count("response.output_text.delta")
    assert deltas > 1
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    rid = events[0].response.id  # type: ignore[union-attr]
    text = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
    assert text == router.text(rid) != ""
    done_text = next(ev for ev in events if ev.type == "response.output_text.done")
    assert done_text.text == text  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed" and final.output_text == text
    assert final.usage is not None and _usage(final.usage) == _expected_usage(router, rid)


async def test_sdk_stream_helper_accumulates_the_same_final_response(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    # `responses.stream()` rebuilds the response from the events and checks their indexes.
    async with client.responses.stream(model="thinker", input="think, then answer") as s:
        async for _ in s:
            pass
        final = await s.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == router.text(final.id) != ""


async def test_function_call_round_trip(
    client: openai.AsyncOpenAI, router: RecordingRouter
) -> None:
    stream = await client.responses.create(
        model="chat", input="find Acme", tools=TOOLS, stream=True,
        tool_choice={"type": "function", "name": "lookup_lead"})
    events = [ev async for ev in stream]
    types = [ev.type for ev in events]
    assert "response.function_call_arguments.delta" in types
    final = events[-1].response  # type: ignore[union-attr]
    done = router.done(final.id)
    (call,) = final.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, orjson.loads(call.arguments)) == (
        done.tool_calls[0].id, "lookup_lead", done.tool_calls[0].arguments)
    args = "".join(ev.delta for ev in events
                   if ev.type == "response.function_call_arguments.delta")
    args_done = next(ev for ev in events if ev.type == "response.function_call_arguments.done")
    assert args == args_done.arguments == call.arguments  # type: ignore[union-attr]
    # The next turn sends the call and its output back as items.
    res = await client.responses.create(
        model="chat", tools=TOOLS, input=[
            {"role": "user", "content": "find Acme"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id,
             "output": '{"lead": "Acme", "seats": 40}'}])
    assert res.status == "completed" and res.output_text == router.text(res.id) != ""
    sent = router.last_args[0]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function",
         "function": {"name": "lookup_lead", "arguments": call.arguments}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id,
                       "content": '{"lead": "Acme", "seats": 40}'}


async def test_raw_stream_names_each_event_and_needs_no_done_marker(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http, http.stream(
        "POST", "/v1/responses", headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "fast", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "hi"}]}], "stream": True},
    ) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        body = (await res.aread()).decode()
    frames = [f for f in body.split("\n\n") if f]
    for f in frames:
        event_line, data_line = f.split("\n")
        assert event_line.removeprefix("event: ") == orjson.loads(
            data_line.removeprefix("data: "))["type"]
    assert frames[-1].startswith("event: response.completed\n")


# --- errors -------------------------------------------------------------------------------


async def test_failure_before_the_first_token_is_an_http_error(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="limited", input="hi", stream=True)
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.create(model="gpt-nope", input="hi")
    assert info.value.body["param"] == "model"  # type: ignore[index]


async def test_failure_after_tokens_is_an_error_event_then_response_failed(
    base_url: str, client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.APIError):  # the SDK raises on the in-stream error event
        stream = await client.responses.create(model="cut", input="hello", stream=True)
        async for _ in stream:
            pass
    async with httpx.AsyncClient(base_url=base_url) as http:
        res = await http.post("/v1/responses", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "cut", "input": "hello", "stream": True})
    frames = [orjson.loads(f.split("data: ", 1)[1]) for f in res.text.split("\n\n") if f]
    assert [f["type"] for f in frames[-2:]] == ["error", "response.failed"]
    error, failed = frames[-2:]
    assert error["code"] == error["error"]["code"] and error["message"]
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["message"] == error["message"]
    assert "response.output_text.delta" in [f["type"] for f in frames]


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"conversation": "conv_1"}, "conversation"),
])
async def test_a_field_the_router_cannot_honour_is_a_400_naming_it(
    client: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "chat", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as info:
        await client.post("/responses", body=body, cast_to=httpx.Response)
    assert info.value.body["param"] == param  # type: ignore[index]


async def test_text_format_json_schema_is_structured_output(client: openai.AsyncOpenAI) -> None:
    # The test fleet has no `structured_output` deployment: a 400 naming the capability,
    # not a plain-text answer. top_p is a sampling parameter the simulator honours.
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="chat", input="hi", top_p=0.5, text={
            "format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert "structured_output" in str(info.value)
    res = await client.responses.create(model="chat", input="hi", top_p=0.5)
    assert res.status == "completed"


async def test_no_op_fields_are_accepted(client: openai.AsyncOpenAI) -> None:
    res = await client.responses.create(model="chat", input="hi", store=True, user="ann",
                                        truncation="disabled", parallel_tool_calls=True,
                                        text={"format": {"type": "text"}},
                                        reasoning={"effort": None},
                                        include=["reasoning.encrypted_content"])
    assert res.status == "completed"


async def test_unknown_v1_paths_and_methods_answer_json_in_the_api_shape(
    base_url: str,
) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "x-api-key": KEY}
    async with httpx.AsyncClient(base_url=base_url, headers=auth) as http:
        missing = await http.post("/v1/nope", json={})
        wrong_method = await http.get("/v1/responses")
        anthropic_missing = await http.post("/v1/messages/nope", json={})
        anthropic_method = await http.get("/v1/messages")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "Invalid URL (POST /v1/nope).",
                                        "type": "invalid_request_error", "param": None,
                                        "code": "not_found"}}
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert anthropic_missing.status_code == 404
    assert anthropic_missing.json()["type"] == "error"
    assert anthropic_missing.json()["error"]["type"] == "not_found_error"
    assert anthropic_method.status_code == 405
    assert anthropic_method.json()["error"]["type"] == "invalid_request_error"


async def test_the_whole_chain_to_an_openai_responses_upstream_over_real_sockets() -> None:
    """openai SDK -> /v1/responses -> router -> `openai_responses` adapter -> the loopback
    provider server speaking the Responses API: a function call, then the answer."""
    from router.testing import LoopbackProvider, Reply, ToolCall

    async with LoopbackProvider() as upstream:
        upstream.enqueue(Reply(text=(), tool_calls=(ToolCall("lookup_lead", {"query": "Acme"},
                                                             "call_up_1"),)),
                         Reply(text=("Acme", " has", " 40 seats.")))
        inner = Router(parse_config({
            "providers": {"up": {"kind": "openai_responses", "api_key": "sk-up",
                                 "base_url": upstream.base_url + "/v1"}},
            "deployments": [{"id": "resp-only", "provider": "up", "model": "gpt-r",
                             "capabilities": ["tools"],
                             "price": {"input_per_mtok": 1, "output_per_mtok": 2}}],
            "tasks": {"chat": {"candidates": ["resp-only"]}}, "defaults": {"task": "chat"},
            "server": CONFIG["server"]}))
        try:
            async with uvicorn_on_loopback(create_app(inner)) as (_, url), openai.AsyncOpenAI(
                    base_url=f"{url}/v1", api_key=KEY, max_retries=0) as client:
                first = await client.responses.create(model="chat", input="find Acme",
                                                      tools=TOOLS)
                (call,) = first.output
                assert call.type == "function_call" and call.call_id == "call_up_1"
                assert orjson.loads(call.arguments) == {"query": "Acme"}
                second = await client.responses.create(model="chat", tools=TOOLS, input=[
                    {"role": "user", "content": "find Acme"},
                    {"type": "function_call", "call_id": call.call_id, "name": call.name,
                     "arguments": call.arguments},
                    {"type": "function_call_output", "call_id": call.call_id,
                     "output": "40 seats"}])
                assert second.output_text == "Acme has 40 seats."
        finally:
            await inner.aclose()
        sent = upstream.requests[1].json
        assert sent["input"][1:] == [
            {"type": "function_call", "call_id": "call_up_1", "name": "lookup_lead",
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": "call_up_1", "output": "40 seats"}]
