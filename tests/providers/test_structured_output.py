"""Structured output and sampling parameters on each wire, over a real loopback socket: what
each adapter puts in the upstream body, and (Anthropic's forced tool) how the answer comes
back as text."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from providers.base import PROVIDER_PARAMS, FinishDelta, TextDelta, ToolCallDelta
from router.testing import LoopbackProvider, Reply, ToolCall
from tests.providers.test_loopback import REQUEST, run

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA,
                                                 "strict": True}}
VALUES: dict[str, Any] = {"seed": 7, "top_p": 0.5, "top_k": 20, "frequency_penalty": 0.25,
                          "presence_penalty": -0.5, "user": "u-1", "parallel_tool_calls": False}


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider() as server:
        yield server


def request_for(protocol: str, **kw: Any) -> Any:
    kind = {"openai": "openai"}.get(protocol, protocol)
    params = {k: v for k, v in VALUES.items() if k in PROVIDER_PARAMS[kind]}
    return dataclasses.replace(REQUEST, response_format=FORMAT, params=params, **kw)


async def sent_body(srv: LoopbackProvider, protocol: str, reply: Reply | None = None,
                    **kw: Any) -> dict[str, Any]:
    srv.enqueue(reply or Reply(text=('{"city": ', '"Oslo"}')))
    result = await run(srv, protocol, request_for(protocol, **kw))
    assert result.error is None, result.error
    body = srv.requests[-1].json
    assert isinstance(body, dict)
    return body


async def test_openai_sends_response_format_and_parameters_natively(
        srv: LoopbackProvider) -> None:
    body = await sent_body(srv, "openai")
    assert body["response_format"] == FORMAT
    assert {k: body[k] for k in PROVIDER_PARAMS["openai"]} == {
        k: VALUES[k] for k in PROVIDER_PARAMS["openai"]}
    assert "top_k" not in body  # not an OpenAI parameter: routing never sends it here


async def test_gemini_asks_for_json_with_the_schema(srv: LoopbackProvider) -> None:
    generation = (await sent_body(srv, "gemini"))["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseJsonSchema"] == SCHEMA
    assert (generation["seed"], generation["topP"], generation["topK"],
            generation["frequencyPenalty"], generation["presencePenalty"]) == (
        7, 0.5, 20, 0.25, -0.5)


async def test_ollama_sends_the_schema_as_format(srv: LoopbackProvider) -> None:
    body = await sent_body(srv, "ollama")
    assert body["format"] == SCHEMA
    assert {k: body["options"][k] for k in ("seed", "top_p", "top_k")} == {
        "seed": 7, "top_p": 0.5, "top_k": 20}
    json_object = dataclasses.replace(request_for("ollama"),
                                      response_format={"type": "json_object"})
    srv.enqueue(Reply(text=("{}",)))
    await run(srv, "ollama", json_object)
    assert srv.requests[-1].json["format"] == "json"


async def test_anthropic_forces_an_answer_tool_and_streams_its_input_as_text(
        srv: LoopbackProvider) -> None:
    reply = Reply(text=(), tool_calls=(ToolCall("json_answer", {"city": "Oslo"}),))
    srv.enqueue(reply)
    result = await run(srv, "anthropic", request_for("anthropic"))
    body = srv.requests[-1].json
    assert body["tools"][-1]["name"] == "json_answer"
    assert body["tools"][-1]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer",
                                   "disable_parallel_tool_use": True}
    assert (body["top_p"], body["top_k"], body["metadata"]) == (0.5, 20, {"user_id": "u-1"})
    assert result.error is None
    assert not any(isinstance(d, ToolCallDelta) for d in result.deltas)
    text = "".join(d.text for d in result.deltas if isinstance(d, TextDelta))
    assert orjson.loads(text) == {"city": "Oslo"}, result.deltas
    assert result.deltas[-1] == FinishDelta("stop")
