"""The Vercel AI SDK (Node) against the router: `@ai-sdk/openai-compatible` and
`@ai-sdk/openai`'s `.chat()` on `/v1/chat/completions`, `@ai-sdk/openai`'s default on
`/v1/responses` (with `store` left at its default, true: the second step refers to the
first step's output by `item_reference`), `@ai-sdk/anthropic` on
`/v1/messages`; streamed text, a two-step tool round trip and `generateObject`, in front of
the simulated fleet and of the loopback provider server."""

from __future__ import annotations

from typing import Any

import pytest

from router.testing import LoopbackProvider, Reply, ToolCall
from tests.clients.conftest import (
    NODE_DIR,
    loopback_fleet,
    node_env,
    router_server,
    run_client,
    simulated_fleet,
)

PROVIDERS = ["compatible", "openai-chat", "openai-responses", "anthropic"]
OSLO = {"city": "Oslo", "unit": "celsius", "temperature": 3.5, "sunny": False}


async def vercel(provider: str, scenario: str, base_url: str, model: str) -> dict[str, Any]:
    node = node_env()
    return await run_client([node, str(NODE_DIR / "vercel_clients.mjs"), provider, scenario,
                             base_url, model])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_vercel_on_the_simulated_fleet(provider: str) -> None:
    async with router_server(simulated_fleet()) as base:
        text = await vercel(provider, "text", base, "general")
        tool = await vercel(provider, "tool", base, "general")
        obj = await vercel(provider, "structured", base, "general")
    assert text["text"].strip()
    assert tool["tool_calls"] == [{"city": "Paris"}]
    assert "sunny and 21 degrees in Paris" in tool["text"]
    if provider == "openai-responses":
        assert tool["item_references"] >= 1  # resolved by the router, not sent again
    assert set(obj["object"]) == set(OSLO) and obj["object"]["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_vercel_through_the_loopback_provider(
        provider: str, loopback: LoopbackProvider) -> None:
    # The OpenAI-compatible SDKs reach an OpenAI-wire upstream, the Anthropic one an
    # Anthropic upstream (where structured output is the forced `json_answer` tool).
    task = "claude" if provider == "anthropic" else "general"
    structured = (Reply(text=(), tool_calls=(ToolCall("json_answer", OSLO),))
                  if provider == "anthropic" else
                  Reply(text=('{"city": "Oslo", "unit": "celsius", ',
                              '"temperature": 3.5, "sunny": false}')))
    loopback.enqueue(Reply(text=("Hello", " from", " upstream.")),
                     Reply(text=(), tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
                     Reply(text=("It is sunny", " in Paris.")),
                     structured)
    async with router_server(loopback_fleet(loopback.base_url)) as base:
        text = await vercel(provider, "text", base, task)
        tool = await vercel(provider, "tool", base, task)
        obj = await vercel(provider, "structured", base, task)
    assert text["text"] == "Hello from upstream."
    assert tool["tool_calls"] == [{"city": "Paris"}]
    assert tool["text"] == "It is sunny in Paris."
    if provider == "openai-responses":
        assert tool["item_references"] >= 1
    assert obj["object"] == OSLO
