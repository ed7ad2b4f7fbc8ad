"""The Anthropic adapter: every recorded Anthropic transcript replayed through respx
(whole, re-chunked at random, byte by byte) against expected.json; request translation;
errors; cancellation; keep-alive draining; secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import SecretStr

from providers.anthropic import AnthropicProvider
from providers.anthropic_request import build_request
from providers.base import (
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    TextDelta,
    Tool,
    ToolCallDelta,
    UsageDelta,
)
from tests.providers.replay import (
    TRANSCRIPTS,
    Chunks,
    LenientResult,
    Result,
    cases,
    chunkings,
    load_expected,
    replay_every_chunking,
    replay_http,
)

EXPECTED = load_expected()
CASES = cases(EXPECTED, "anthropic")
URL = "https://api.anthropic.com/v1/messages"
KEY = "sk-ant-api03-TESTKEY-0123456789abcdef"
SETTINGS = ProviderSettings(name="anthropic", kind="anthropic", api_key=SecretStr(KEY),
                            api_key_env="ANTHROPIC_API_KEY")
REQUEST = ProviderRequest(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
                          max_tokens=256)


async def replay(
    pieces: list[bytes], request: ProviderRequest = REQUEST, status: int = 200,
    headers: dict[str, str] | None = None, settings: ProviderSettings = SETTINGS,
) -> tuple[Result, Chunks, respx.Route]:
    # Lenient: these tests have always read a call without argument text as `{}`.
    return await replay_http(AnthropicProvider, pieces, settings=settings, request=request,
                             url=URL, status=status, headers=headers,
                             result_type=LenientResult)


def normalized_usage(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    read = raw.get("cache_read_input_tokens") or 0
    created = raw.get("cache_creation_input_tokens") or 0
    return raw["input_tokens"] + read + created, raw["output_tokens"], read, 0


# --- transcripts --------------------------------------------------------------------------


def test_all_anthropic_transcripts_are_covered() -> None:
    assert len(CASES) == 11


@pytest.mark.parametrize("name", CASES)
async def test_transcript_normalizes_to_expected_under_any_chunking(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    expected = EXPECTED[name]["expected"]
    whole = await replay_every_chunking(replay, chunkings(data, seed=len(data)))
    assert whole.text == expected["text"]
    assert whole.reasoning == expected["reasoning"]
    assert whole.tool_calls == expected["tool_calls"]
    usage = whole.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
            usage.reasoning_tokens) == normalized_usage(expected["usage_raw_mapped"])
    if expected["errors"]:
        # An in-stream `error` event after HTTP 200: raised, mapped, no finish.
        assert whole.error is not None and whole.finish is None
        assert whole.error.code == "overloaded" and whole.error.retryable
    else:
        # The sdk-* fixtures lack the final newline: per the WHATWG rules the unterminated
        # `message_stop` is dropped, but `message_delta` already carried the stop reason
        # and usage, so the answer is provably complete and ends normally.
        assert whole.error is None
        assert whole.finish == expected["finish_reason_normalized"]
        assert isinstance(whole.deltas[-1], FinishDelta)


@pytest.mark.parametrize("name", ["anthropic/sdk-basic-text.sse",
                                  "anthropic/sdk-text-then-tool-use.sse"])
async def test_unterminated_stream_without_stop_reason_is_a_protocol_error(name: str) -> None:
    # The same stream cut before its message_delta: nothing says the answer is complete.
    data = (TRANSCRIPTS / name).read_bytes()
    data = data[: data.index(b"event: message_delta")]
    result, _, _ = await replay([data])
    assert result.error is not None and result.error.code == "protocol_error"
    assert result.finish is None


async def test_message_delta_without_usage_does_not_complete_an_unterminated_stream() -> None:
    data = (TRANSCRIPTS / "anthropic/sdk-basic-text.sse").read_bytes()
    data = data.replace(b',"usage":{"output_tokens":6}', b"")
    result, _, _ = await replay([data])
    assert result.error is not None and result.error.code == "protocol_error"


@pytest.mark.parametrize("name", ["anthropic/sdk-basic-text.sse",
                                  "anthropic/sdk-text-then-tool-use.sse"])
async def test_unterminated_fixture_completes_once_terminated(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes() + b"\n\n"
    result, _, _ = await replay([data])
    assert result.error is None
    assert result.finish == EXPECTED[name]["expected"]["finish_reason_normalized"]


async def test_deltas_are_emitted_per_event_not_buffered() -> None:
    data = (TRANSCRIPTS / "anthropic" / "vercel-text.sse").read_bytes()
    result, _, _ = await replay([data])
    texts = [d.text for d in result.deltas if isinstance(d, TextDelta)]
    assert texts == ["Hello", "! I", "'m doing well, thank you for asking",
                     ". How are you doing today?", " Is", " there anything I can help you with?"]
    assert isinstance(result.deltas[0], UsageDelta)  # input known at message_start


async def test_message_delta_overrides_input_tokens() -> None:
    data = (TRANSCRIPTS / "anthropic" / "vercel-message-delta-input-tokens.sse").read_bytes()
    result, _, _ = await replay([data])
    usages = [d for d in result.deltas if isinstance(d, UsageDelta)]
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [(43, 1), (61, 2)]


async def test_cache_tokens_count_as_input() -> None:
    data = (TRANSCRIPTS / "anthropic" / "pydantic-compaction-cache-padded-json.sse").read_bytes()
    result, _, _ = await replay([data])
    first = next(d for d in result.deltas if isinstance(d, UsageDelta))
    assert (first.input_tokens, first.cached_input_tokens) == (100 + 55096, 55096)


async def test_tool_index_is_ours_not_the_block_index() -> None:
    data = (TRANSCRIPTS / "anthropic" / "sdk-text-then-tool-use.sse").read_bytes()
    result, _, _ = await replay([data])
    assert {d.index for d in result.deltas if isinstance(d, ToolCallDelta)} == {0}


# --- stream lifecycle ---------------------------------------------------------------------


async def test_body_is_drained_after_message_stop_and_closed() -> None:
    data = (TRANSCRIPTS / "anthropic" / "vercel-text.sse").read_bytes()
    result, body, _ = await replay([data, b": trailing\n\n", b"event: ping\n"])
    assert result.finish == "stop"
    assert body.read_to_end and body.closed


async def test_closing_the_iterator_closes_the_response_at_once() -> None:
    data = (TRANSCRIPTS / "anthropic" / "vercel-text.sse").read_bytes()
    body = Chunks([data[:600], data[600:]])
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).respond(200, stream=body)
        stream = AnthropicProvider(SETTINGS, client=client).stream(REQUEST)
        first = await anext(stream)
        assert isinstance(first, UsageDelta)
        await stream.aclose()  # type: ignore[attr-defined]
    assert body.closed and not body.read_to_end


async def test_cut_stream_is_a_protocol_error() -> None:
    data = (TRANSCRIPTS / "anthropic" / "vercel-text.sse").read_bytes()
    result, _, _ = await replay([data[: data.index(b"event: message_delta")]])
    assert result.error is not None and result.error.code == "protocol_error"
    assert result.text.startswith("Hello! I'm doing well")


async def test_malformed_json_is_a_protocol_error() -> None:
    result, _, _ = await replay([b"event: message_start\ndata: {not json\n\n"])
    assert result.error is not None and result.error.code == "protocol_error"


async def test_connection_reset_mid_body() -> None:
    class Reset(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'event: ping\ndata: {"type": "ping"}\n\n'
            raise httpx.ReadError("Connection reset by peer")

    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).respond(200, stream=Reset())
        with pytest.raises(ProviderError) as info:
            async for _ in AnthropicProvider(SETTINGS, client=client).stream(REQUEST):
                pass
    assert info.value.code == "connection"


@pytest.mark.parametrize(
    ("status", "raw", "headers", "code", "retry_after"),
    [
        (529, (TRANSCRIPTS / "errors" / "anthropic-http-529-overloaded.body.json").read_bytes(),
         {"x-should-retry": "true"}, "overloaded", None),
        (429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}',
         {"retry-after": "20"}, "rate_limited", 20.0),
        (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid '
              b'x-api-key"}}', {}, "auth", None),
        (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is '
              b'too long: 210000 tokens > 200000 maximum"}}', {}, "context_length", None),
    ],
)
async def test_http_errors(status: int, raw: bytes, headers: dict[str, str], code: str,
                           retry_after: float | None) -> None:
    result, body, _ = await replay([raw], status=status, headers=headers)
    assert result.error is not None
    assert (result.error.code, result.error.status, result.error.retry_after) == (
        code, status, retry_after)
    assert body.closed


# --- request translation ------------------------------------------------------------------


def test_build_request_translates_openai_shaped_history() -> None:
    request = ProviderRequest(
        model="claude-sonnet-4-5",
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "25C"},
            {"role": "user", "content": [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": "It is "},
        ],
        max_tokens=100,
        temperature=0.2,
        stop=["END"],
        tools=[Tool("get_weather", "Weather by city",
                    {"type": "object", "properties": {"city": {"type": "string"}}})],
        tool_choice="get_weather",
        options={"thinking": {"type": "enabled", "budget_tokens": 1024}, "seed": 3},
    )
    body = build_request(request)
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": True,
        "system": "Be brief.",
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "tools": [{"name": "get_weather", "description": "Weather by city",
                   "input_schema": {"type": "object",
                                    "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "25C"},
                {"type": "text", "text": "And this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAAA"}},
            ]},
            # The prefill is continued natively; the API rejects trailing whitespace.
            {"role": "assistant", "content": [{"type": "text", "text": "It is"}]},
        ],
    }


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
])
def test_tool_choice_values(choice: str, wire: dict[str, str]) -> None:
    request = ProviderRequest(model="m", messages=[{"role": "user", "content": "x"}],
                              tools=[Tool("t", "d", {"type": "object"})], tool_choice=choice)
    assert build_request(request)["tool_choice"] == wire


def test_system_messages_in_history_join_the_system_prompt_and_max_tokens_default() -> None:
    request = ProviderRequest(model="m", system="A", messages=[
        {"role": "system", "content": "B"}, {"role": "user", "content": "x"}])
    body = build_request(request)
    assert body["system"] == "A\n\nB" and body["max_tokens"] == 4096
    assert "tools" not in body and "tool_choice" not in body


def test_empty_turns_are_dropped() -> None:
    request = ProviderRequest(model="m", messages=[
        {"role": "user", "content": "x"}, {"role": "assistant", "content": ""},
        {"role": "user", "content": "y"}])
    assert build_request(request)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]


async def test_plain_json_error_body_with_status_200_is_mapped() -> None:
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    result, _, _ = await replay([raw])
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("overloaded", True)


async def test_wire_request_headers_url_and_options() -> None:
    settings = ProviderSettings(
        name="anthropic", kind="anthropic", api_key=SecretStr(KEY),
        base_url="https://proxy.example.test/v1", headers={"x-team": "sales"},
        options={"anthropic_beta": ["a-1", "b-2"], "top_k": 5},
    )
    data = (TRANSCRIPTS / "anthropic" / "vercel-text.sse").read_bytes()
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        route = mock.post("https://proxy.example.test/v1/messages").respond(200, content=data)
        async for _ in AnthropicProvider(settings, client=client).stream(REQUEST):
            pass
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "a-1,b-2"
    assert sent.headers["x-team"] == "sales"
    body = orjson.loads(sent.content)
    assert body["top_k"] == 5 and body["stream"] is True and "anthropic_beta" not in body


async def test_missing_key_fails_before_any_network_call() -> None:
    settings = ProviderSettings(name="anthropic", kind="anthropic",
                                api_key_env="ANTHROPIC_API_KEY")
    result, _, route = await replay([b""], settings=settings)
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("auth", False)
    assert "ANTHROPIC_API_KEY" in result.error.message
    assert not route.called


async def test_owned_client_is_closed() -> None:
    provider = AnthropicProvider(SETTINGS)
    await provider.aclose()
    assert provider._client.is_closed


# --- secrets ------------------------------------------------------------------------------


async def test_key_never_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"type": "error", "error": {"type": "authentication_error",
                                                  "message": f"invalid x-api-key {KEY}"}})
    result, _, _ = await replay([echo.encode()], status=401)
    assert result.error is not None and result.error.code == "auth"
    provider = AnthropicProvider(SETTINGS, client=httpx.AsyncClient())
    texts = [repr(provider), str(provider), repr(SETTINGS), str(result.error),
             repr(result.error), caplog.text]
    await provider.aclose()
    assert all(KEY not in t for t in texts)


async def test_unexpected_event_shape_is_a_protocol_error() -> None:
    result, _, _ = await replay([b'event: content_block_delta\ndata: {"type":"content_block_delta"'
                                 b',"index":0}\n\n'])
    assert result.error is not None and result.error.code == "protocol_error"
