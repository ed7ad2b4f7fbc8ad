"""pydantic-ai, langchain-openai, litellm, instructor and the openai SDK, unchanged but for
their base URL, against the router's OpenAI-compatible endpoint on a loopback port: a
streamed text answer, a tool round trip and structured output, in front of the simulated
fleet (the offline default, behaving like a model) and of the loopback provider server
(scripted upstream replies, so the exact answer is known)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.testing import LoopbackProvider, Reply, ToolCall
from tests.clients.conftest import (
    CLIENT_ENV,
    HERE,
    loopback_fleet,
    python_env,
    router_server,
    run_client,
    simulated_fleet,
)

SCRIPT = str(HERE / "py_clients.py")
TOOL_CLIENTS = ["openai", "pydantic_ai", "langchain", "litellm"]
STRUCTURED_CLIENTS = [*TOOL_CLIENTS, "instructor", "instructor_json"]
TEXT_CLIENTS = [*TOOL_CLIENTS, "instructor"]
UNITS = {"celsius", "fahrenheit"}
OSLO = {"city": "Oslo", "unit": "celsius", "temperature": 3.5, "sunny": False}
# How each client asks for structured output decides what the upstream must answer: a JSON
# text (response_format) or a call of the client's own output tool.
OUTPUT_TOOL = {"pydantic_ai": "final_result", "instructor": "Weather"}


async def client(name: str, scenario: str, base_url: str) -> dict[str, Any]:
    python = python_env(CLIENT_ENV[name])
    return await run_client([str(python), SCRIPT, name, scenario, base_url, "general"])


# --- the simulated fleet ----------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXT_CLIENTS)
async def test_streamed_text_on_the_simulated_fleet(name: str) -> None:
    async with router_server(simulated_fleet()) as base:
        out = await client(name, "text", base)
    assert out["text"].strip()


@pytest.mark.parametrize("name", TOOL_CLIENTS)
async def test_tool_round_trip_on_the_simulated_fleet(name: str) -> None:
    async with router_server(simulated_fleet()) as base:
        out = await client(name, "tool", base)
    # The simulated model called the tool on its own (tool_choice auto) with the city from
    # the question, and answered with the result.
    assert out["tool_calls"] == [{"city": "Paris"}]
    assert "sunny and 21 degrees in Paris" in out["text"]


@pytest.mark.parametrize("name", STRUCTURED_CLIENTS)
async def test_structured_output_on_the_simulated_fleet(name: str) -> None:
    async with router_server(simulated_fleet()) as base:
        out = await client(name, "structured", base)
    obj = out["object"]
    assert set(obj) == {"city", "unit", "temperature", "sunny"} and obj["unit"] in UNITS


# --- the loopback provider server -------------------------------------------------------------


@pytest.mark.parametrize("name", TEXT_CLIENTS)
async def test_streamed_text_through_the_loopback_provider(
        name: str, loopback: LoopbackProvider) -> None:
    if name == "instructor":  # its streaming: partial objects from a streamed tool call
        loopback.set_default(Reply(text=(), tool_calls=(ToolCall("Weather", OSLO),)))
    else:
        loopback.set_default(Reply(text=("Hello", " from", " upstream.")))
    async with router_server(loopback_fleet(loopback.base_url)) as base:
        out = await client(name, "text", base)
    if name == "instructor":
        assert json.loads(out["text"]) == OSLO
    else:
        assert out["text"] == "Hello from upstream."


@pytest.mark.parametrize("name", TOOL_CLIENTS)
async def test_tool_round_trip_through_the_loopback_provider(
        name: str, loopback: LoopbackProvider) -> None:
    loopback.enqueue(Reply(text=(), tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
                     Reply(text=("It is sunny", " in Paris.")))
    async with router_server(loopback_fleet(loopback.base_url)) as base:
        out = await client(name, "tool", base)
    assert out["tool_calls"] == [{"city": "Paris"}]
    assert out["text"] == "It is sunny in Paris."
    second = loopback.requests[1].json
    tool_turn = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_turn and "sunny and 21 degrees in Paris" in str(tool_turn[0]["content"])


@pytest.mark.parametrize("name", STRUCTURED_CLIENTS)
async def test_structured_output_through_the_loopback_provider(
        name: str, loopback: LoopbackProvider) -> None:
    tool = OUTPUT_TOOL.get(name)
    if tool is not None:
        loopback.set_default(Reply(text=(), tool_calls=(ToolCall(tool, OSLO),)))
    else:
        loopback.set_default(Reply(text=('{"city": "Oslo", "unit": ', '"celsius", ',
                                         '"temperature": 3.5, "sunny": false}')))
    async with router_server(loopback_fleet(loopback.base_url)) as base:
        out = await client(name, "structured", base)
    assert out["object"] == OSLO
    sent = loopback.requests[0].json
    if tool is None:  # the client asked for JSON: the upstream was asked for it too
        assert sent["response_format"]["type"] in ("json_schema", "json_object")
