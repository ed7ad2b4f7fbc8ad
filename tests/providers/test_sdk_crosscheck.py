"""Cross-check: the official `anthropic` and `openai` SDKs parse the same recorded bytes
(through a mock transport, no network); their text, tool calls and usage must equal ours.

Usage is compared after our documented normalization (Anthropic input includes cache
read/creation; an xAI-style `completion_tokens` that excludes reasoning gets it added).
Known, deliberate differences are asserted explicitly rather than skipped:
- the SDKs flush an unterminated final event at EOF (the anthropic `sdk-*` fixtures); the
  WHATWG rules drop it, so we end those streams with `protocol_error` after the same deltas;
- the openai SDK does not read Groq's `x_groq.usage`; we do.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import respx
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import SecretStr

from providers.anthropic import AnthropicProvider
from providers.base import Delta, ProviderError, ProviderRequest, ProviderSettings
from providers.openai import OpenAIProvider
from tests.providers.replay import (
    TRANSCRIPTS,
    LenientResult,
    Result,
    cases,
    collect,
    load_expected,
)

EXPECTED = load_expected()
ANTHROPIC = cases(EXPECTED, "anthropic")
OPENAI = cases(EXPECTED, "openai")
KEY = "test-key-0123456789"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def _transport(data: bytes) -> httpx2.MockTransport:
    return httpx2.MockTransport(
        lambda _: httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})
    )


async def ours(kind: str, url: str, data: bytes) -> tuple[list[Delta], ProviderError | None]:
    settings = ProviderSettings(name=kind, kind=kind, api_key=SecretStr(KEY))
    cls = AnthropicProvider if kind == "anthropic" else OpenAIProvider
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(url).respond(200, content=data)
        result = await collect(cls(settings, client=client),
                               ProviderRequest(model="m", messages=MESSAGES, max_tokens=64),
                               Result())
    return result.deltas, result.error


def summary(deltas: list[Delta]) -> tuple[str, list[tuple[Any, ...]], tuple[int, ...] | None]:
    result = LenientResult(deltas)  # the SDKs read a call without input as {}
    text = result.text
    tools = [(c["id"], c["name"], c["arguments"]) for c in result.tool_calls]
    usage = result.usage
    numbers = None if usage is None else (usage.input_tokens, usage.output_tokens,
                                          usage.cached_input_tokens, usage.reasoning_tokens)
    return text, tools, numbers


# --- anthropic ----------------------------------------------------------------------------


async def anthropic_sdk(data: bytes) -> tuple[Any, Exception | None]:
    client = anthropic.AsyncAnthropic(api_key=KEY, max_retries=0,
                                      http_client=httpx2.AsyncClient(transport=_transport(data)))
    error: Exception | None = None
    async with client.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as stream:
        try:
            async for _ in stream:
                pass
        except anthropic.APIError as exc:
            error = exc
        snapshot = stream.current_message_snapshot
    await client.close()
    return snapshot, error


@pytest.mark.parametrize("name", ANTHROPIC)
async def test_anthropic_sdk_agrees(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    snapshot, sdk_error = await anthropic_sdk(data)
    deltas, error = await ours("anthropic", "https://api.anthropic.com/v1/messages", data)
    text, tools, usage = summary(deltas)
    assert text == "".join(b.text for b in snapshot.content if b.type == "text")
    assert tools == [(b.id, b.name, b.input) for b in snapshot.content if b.type == "tool_use"]
    u = snapshot.usage
    read, created = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    assert usage == (u.input_tokens + read + created, u.output_tokens, read, 0)
    if sdk_error is not None:  # the in-stream error event: both fail
        assert error is not None and error.code == "overloaded"
    else:
        # Unterminated final message_stop: the SDK flushes it; we end normally because the
        # message_delta before it carried the stop reason and usage. Both agree: complete.
        assert error is None


# --- openai -------------------------------------------------------------------------------


async def openai_sdk(data: bytes) -> tuple[Any, Exception | None]:
    client = openai.AsyncOpenAI(api_key=KEY, max_retries=0,
                                http_client=httpx2.AsyncClient(transport=_transport(data)))
    state = ChatCompletionStreamState()
    error: Exception | None = None
    seen = False
    try:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for chunk in stream:
            state.handle_chunk(chunk)
            seen = True
    except openai.APIError as exc:
        error = exc
    await client.close()
    return (state.current_completion_snapshot if seen else None), error


def normalize_openai_usage(usage: Any) -> tuple[int, ...] | None:
    if usage is None:
        return None
    cached = (usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens) or 0
    reasoning = (usage.completion_tokens_details
                 and usage.completion_tokens_details.reasoning_tokens) or 0
    output = usage.completion_tokens
    if reasoning and usage.total_tokens == usage.prompt_tokens + output + reasoning:
        output += reasoning
    return usage.prompt_tokens, output, cached, reasoning


@pytest.mark.parametrize("name", OPENAI)
async def test_openai_sdk_agrees(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    snapshot, sdk_error = await openai_sdk(data)
    deltas, error = await ours("openai", "https://api.openai.com/v1/chat/completions", data)
    text, tools, usage = summary(deltas)
    message = snapshot.choices[0].message if snapshot and snapshot.choices else None
    assert text == ((message and message.content) or "")
    sdk_tools = [(c.id, c.function.name, json.loads(c.function.arguments or "{}"))
                 for c in (message and message.tool_calls) or []]
    assert tools == sdk_tools
    assert (sdk_error is None) == (error is None)  # in-stream errors fail both
    if sdk_error is not None:
        return  # the SDK raises at the error chunk before keeping its usage
    sdk_usage = normalize_openai_usage(snapshot.usage)
    if sdk_usage is None:  # Groq's x_groq.usage is invisible to the SDK
        assert "x_groq" in data.decode() and usage is not None
    else:
        assert usage == sdk_usage
