"""The OpenAI(-compatible) adapter: every recorded Chat Completions transcript (OpenAI,
Azure, DeepSeek, Groq, vLLM, OpenRouter, xAI) replayed through respx (whole, re-chunked at
random, byte by byte) against expected.json; request translation; vendor flags; errors;
terminal marker; lifecycle; secrets."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import SecretStr

from providers.base import (
    FinishDelta,
    ProviderRequest,
    ProviderSettings,
    TextDelta,
    Tool,
    ToolCallDelta,
    UsageDelta,
)
from providers.openai import OpenAIProvider, _build_request
from tests.providers.replay import (
    TRANSCRIPTS,
    Chunks,
    Result,
    cases,
    load_expected,
    replay_every_chunking,
    replay_http,
)
from tests.providers.replay import chunkings as shared_chunkings

EXPECTED = load_expected()
CASES = cases(EXPECTED, "openai")
RESPONSES_API = cases(EXPECTED, "responses")
URL = "https://api.openai.com/v1/chat/completions"
KEY = "sk-proj-TESTKEY-0123456789abcdefghij"
SETTINGS = ProviderSettings(name="openai", kind="openai", api_key=SecretStr(KEY),
                            api_key_env="OPENAI_API_KEY")
REQUEST = ProviderRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                          max_tokens=256)


def chunkings(data: bytes, seed: int) -> dict[str, list[bytes]]:
    # Byte by byte through the whole HTTP stack: every file up to 20 KB; the few big
    # ones (up to 278 KB) in 3-byte steps to keep the suite fast (test_sse covers them
    # byte by byte at the decoder).
    return shared_chunkings(data, seed, cuts=60, step=1 if len(data) <= 20_000 else 3)


async def replay(
    pieces: list[bytes], request: ProviderRequest = REQUEST, status: int = 200,
    headers: dict[str, str] | None = None, settings: ProviderSettings = SETTINGS,
    url: str = URL,
) -> tuple[Result, Chunks, respx.Route]:
    return await replay_http(OpenAIProvider, pieces, settings=settings, request=request,
                             url=url, status=status, headers=headers)


def normalized_usage(name: str, raw: dict[str, Any]) -> tuple[int, int, int, int]:
    reasoning = raw.get("reasoning_tokens") or 0
    output = raw["output_tokens"]
    if name.startswith("xai/"):  # xAI's completion_tokens exclude reasoning; ours include it
        output += reasoning
    return raw["input_tokens"], output, raw.get("cached_input_tokens") or 0, reasoning


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
                    for c in chunks)


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "usage": None,
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


# --- transcripts --------------------------------------------------------------------------


def test_all_chat_completions_transcripts_are_covered() -> None:
    assert len(CASES) == 17
    assert {c.split("/")[0] for c in CASES} == {
        "openai", "deepseek", "groq", "vllm", "openrouter", "xai"}


@pytest.mark.parametrize("name", CASES)
async def test_transcript_normalizes_to_expected_under_any_chunking(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    expected = EXPECTED[name]["expected"]
    whole = await replay_every_chunking(replay, chunkings(data, seed=len(data)))
    assert whole.text == expected["text"]
    assert whole.reasoning == expected["reasoning"]
    assert whole.tool_calls == expected["tool_calls"]
    if expected["usage_raw_mapped"]:
        usage = whole.usage
        assert usage is not None
        assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
                usage.reasoning_tokens) == normalized_usage(name, expected["usage_raw_mapped"])
    else:
        assert whole.usage is None
    if expected["errors"]:
        # An `error` object inside the 200 stream (Groq `event: error`, OpenRouter's in-band
        # chunk): raised as the mapped error; both carry an HTTP 400 status in the body.
        assert whole.error is not None and whole.finish is None
        assert (whole.error.code, whole.error.status, whole.error.retryable) == (
            "bad_request", 400, False)
        assert expected["errors"][0]["message"][:40] in whole.error.message
    else:
        assert whole.error is None
        assert whole.finish == expected["finish_reason_normalized"]
        assert isinstance(whole.deltas[-1], FinishDelta)


@pytest.mark.parametrize("name", RESPONSES_API)
async def test_responses_api_streams_never_succeed_in_the_chat_adapter(name: str) -> None:
    # /v1/responses is a different protocol (`event: response.*`, no [DONE]; kind
    # openai_responses reads it); fed to the Chat Completions parser it must fail loudly,
    # not end as an empty success.
    # (Its `error` event is still recognized: insufficient_quota, not retryable.)
    result, _, _ = await replay([(TRANSCRIPTS / name).read_bytes()])
    assert result.error is not None and result.finish is None
    expected = ("rate_limited", False) if "error" in name else ("protocol_error", True)
    assert (result.error.code, result.error.retryable) == expected


async def test_openrouter_error_chunk_still_reports_its_usage() -> None:
    data = (TRANSCRIPTS / "openrouter" / "pydantic-comments-inband-error.sse").read_bytes()
    result, _, _ = await replay([data])
    assert result.usage == UsageDelta(43, 10, 0, 11)
    assert result.error is not None


async def test_azure_filter_chunk_is_not_usage() -> None:
    data = (TRANSCRIPTS / "openai" / "vercel-azure-prompt-filter-first-chunk.sse").read_bytes()
    result, _, _ = await replay([data])
    assert [d for d in result.deltas if isinstance(d, UsageDelta)] == [UsageDelta(15, 78, 0, 64)]


async def test_parallel_tool_calls_keep_their_indices() -> None:
    data = (TRANSCRIPTS / "openai" / "pydantic-parallel-tool-calls.sse").read_bytes()
    result, _, _ = await replay([data])
    firsts = [d for d in result.deltas if isinstance(d, ToolCallDelta) and d.id]
    assert [(d.index, d.name) for d in firsts] == [(0, "get_weather"), (1, "get_product_name")]


# --- terminal marker, finish, in-stream faults --------------------------------------------


async def test_finish_without_done_is_a_protocol_error() -> None:
    body = sse(delta({"content": "Hi"}), delta({}, "stop"))
    result, _, _ = await replay([body])
    assert result.text == "Hi"
    assert result.error is not None and result.error.code == "protocol_error"
    assert "[DONE]" in result.error.message


async def test_vendor_without_done_marker_ends_at_finish_and_eof() -> None:
    settings = ProviderSettings(name="x", kind="openai_compatible", api_key=SecretStr(KEY),
                                options={"done_marker": False})
    body = sse(delta({"content": "Hi"}), delta({}, "stop"))
    result, _, _ = await replay([body], settings=settings)
    assert (result.error, result.finish) == (None, "stop")
    cut, _, _ = await replay([sse(delta({"content": "Hi"}))], settings=settings)
    assert cut.error is not None and cut.error.code == "protocol_error"


async def test_stop_on_a_tool_call_turn_is_tool_calls_and_empty_args_are_braces() -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "now", "arguments": ""}}
    result, _, _ = await replay([sse(delta({"tool_calls": [call]}), delta({}, "stop"), "[DONE]")])
    assert result.tool_calls == [{"id": "call_1", "name": "now", "arguments": {}}]
    assert result.finish == "tool_calls"


async def test_refusal_is_text_with_content_filter_finish() -> None:
    body = sse(delta({"refusal": "I can't help with that."}), delta({}, "stop"), "[DONE]")
    result, _, _ = await replay([body])
    assert (result.text, result.finish) == ("I can't help with that.", "content_filter")


async def test_insufficient_system_resource_is_overloaded() -> None:
    body = sse(delta({"content": "Par"}), delta({}, "insufficient_system_resource"), "[DONE]")
    result, _, _ = await replay([body])
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("overloaded", True)


async def test_malformed_chunk_is_a_protocol_error() -> None:
    result, _, _ = await replay([sse(delta({"content": "a"})) + b"data: {oops\n\n"])
    assert result.text == "a"
    assert result.error is not None and result.error.code == "protocol_error"


async def test_keepalive_comments_yield_nothing() -> None:
    body = b": keep-alive\n\n" * 3 + sse(delta({"content": "x"}), delta({}, "stop"), "[DONE]")
    result, _, _ = await replay([body])
    assert [type(d) for d in result.deltas] == [TextDelta, FinishDelta]


async def test_body_is_drained_after_done_and_closed() -> None:
    body = sse(delta({"content": "x"}), delta({}, "stop"), "[DONE]")
    result, stream, _ = await replay([body, b": tail\n\n", b"\n"])
    assert result.finish == "stop"
    assert stream.read_to_end and stream.closed


async def test_closing_the_iterator_closes_the_response_at_once() -> None:
    body = Chunks([sse(delta({"content": "a"})), sse(delta({"content": "b"}))])
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).respond(200, stream=body)
        stream = OpenAIProvider(SETTINGS, client=client).stream(REQUEST)
        assert await anext(stream) == TextDelta("a")
        await stream.aclose()  # type: ignore[attr-defined]
    assert body.closed and not body.read_to_end


@pytest.mark.parametrize(
    ("status", "raw", "headers", "code", "retry_after"),
    [
        (400, (TRANSCRIPTS / "errors" / "openai-http-400-unsupported-parameter.body.json")
         .read_bytes(), {}, "bad_request", None),
        (400, (TRANSCRIPTS / "errors" / "openai-http-400-null-code.body.json").read_bytes(), {},
         "bad_request", None),
        (429, b'{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}',
         {"retry-after-ms": "750", "retry-after": "1"}, "rate_limited", 0.75),
        (503, b'{"error":{"message":"The server is overloaded","type":"server_error"}}', {},
         "overloaded", None),
        (500, b'{"error":{"message":"boom","type":"server_error"}}', {}, "provider_error", None),
    ],
)
async def test_http_errors(status: int, raw: bytes, headers: dict[str, str], code: str,
                           retry_after: float | None) -> None:
    result, body, _ = await replay([raw], status=status, headers=headers)
    assert result.error is not None
    assert (result.error.code, result.error.status, result.error.retry_after) == (
        code, status, retry_after)
    assert body.closed


# --- request translation and vendor flags -------------------------------------------------


def test_build_request_full() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    request = ProviderRequest(
        model="gpt-4o", system="Be brief.", messages=history, max_tokens=50, temperature=0,
        stop=["END"], tools=[Tool("get_weather", "Weather", {"type": "object"})],
        tool_choice="get_weather", options={"seed": 7, "extra_body": {"logprobs": False}},
    )
    body = _build_request(request, {**request.options, "top_p": 0.9, "unknown": 1})
    assert body == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, *history],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "get_weather",
                                                    "description": "Weather",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "seed": 7,
        "top_p": 0.9,
        "logprobs": False,
    }


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_keywords(choice: str) -> None:
    request = ProviderRequest(model="m", messages=[], tools=[Tool("t", "d", {})],
                              tool_choice=choice)
    assert _build_request(request, {})["tool_choice"] == choice


def test_vendor_flags_shape_the_body() -> None:
    request = ProviderRequest(model="m", max_tokens=9, messages=[
        {"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}])
    body = _build_request(request, {"include_usage": False,
                                    "max_tokens_field": "max_completion_tokens",
                                    "prefill": "prefix"})
    assert "stream_options" not in body and "max_tokens" not in body
    assert body["max_completion_tokens"] == 9
    assert body["messages"][-1] == {"role": "assistant", "content": "1, 2,", "prefix": True}
    assert request.messages[-1] == {"role": "assistant", "content": "1, 2,"}  # not mutated
    vllm = _build_request(request, {"prefill": "continue_final_message"})
    assert (vllm["continue_final_message"], vllm["add_generation_prompt"]) == (True, False)


async def test_wire_request_url_headers_and_include_usage_flag() -> None:
    settings = ProviderSettings(name="groq", kind="openai_compatible", api_key=SecretStr(KEY),
                                base_url="https://api.groq.com/openai/v1",
                                headers={"x-team": "sales"}, options={"include_usage": False})
    url = "https://api.groq.com/openai/v1/chat/completions"
    body = sse(delta({"content": "x"}), delta({}, "stop"), "[DONE]")
    _, _, route = await replay([body], settings=settings, url=url)
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-team"] == "sales"
    assert "stream_options" not in orjson.loads(sent.content)


async def test_keyless_local_vendor_sends_no_auth_header() -> None:
    settings = ProviderSettings(name="vllm", kind="openai_compatible",
                                base_url="http://localhost:8000/v1")
    body = sse(delta({"content": "x"}), delta({}, "stop"), "[DONE]")
    result, _, route = await replay([body], settings=settings,
                                    url="http://localhost:8000/v1/chat/completions")
    assert result.finish == "stop"
    assert "authorization" not in route.calls.last.request.headers


async def test_missing_key_fails_before_any_network_call() -> None:
    settings = ProviderSettings(name="deepseek", kind="openai_compatible",
                                base_url="https://api.deepseek.com", api_key_env="DEEPSEEK_API_KEY")
    result, _, route = await replay([b""], settings=settings,
                                    url="https://api.deepseek.com/chat/completions")
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("auth", False)
    assert "DEEPSEEK_API_KEY" in result.error.message
    assert not route.called


# --- secrets ------------------------------------------------------------------------------


async def test_key_never_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}",
                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
    result, _, _ = await replay([echo.encode()], status=401)
    assert result.error is not None and result.error.code == "auth"
    stream_err, _, _ = await replay([sse({"error": {"message": f"bad key {KEY}"}})])
    assert stream_err.error is not None
    provider = OpenAIProvider(SETTINGS, client=httpx.AsyncClient())
    texts = [repr(provider), str(provider), repr(SETTINGS), str(result.error),
             repr(result.error), repr(stream_err.error), caplog.text]
    await provider.aclose()
    assert all(KEY not in t for t in texts)


async def test_plain_json_error_body_with_status_200_is_mapped() -> None:
    raw = b'{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error"}}'
    result, _, _ = await replay([raw])
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("bad_request", False)
    assert "gpt-9" in result.error.message


async def test_unexpected_chunk_shape_is_a_protocol_error() -> None:
    result, _, _ = await replay([sse('["not", "an", "object"]')])
    assert result.error is not None and result.error.code == "protocol_error"


async def test_azure_style_api_key_header() -> None:
    settings = ProviderSettings(name="azure", kind="openai_compatible", api_key=SecretStr(KEY),
                                base_url="https://res.openai.azure.com/openai/v1",
                                options={"auth_header": "api-key"})
    body = sse(delta({"content": "x"}), delta({}, "stop"), "[DONE]")
    _, _, route = await replay([body], settings=settings,
                               url="https://res.openai.azure.com/openai/v1/chat/completions")
    sent = route.calls.last.request
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers


async def test_each_deployments_auth_header_gets_its_own_headers() -> None:
    """The headers are built once per `auth_header` value: two deployments of one provider,
    one Azure-style and one not, each keep sending their own."""
    settings = ProviderSettings(name="azure", kind="openai_compatible", api_key=SecretStr(KEY),
                                base_url="https://res.openai.azure.com/openai/v1")
    async with httpx.AsyncClient() as client:
        provider = OpenAIProvider(settings, client)
        for _ in range(2):
            bearer = provider._headers({})
            azure = provider._headers({"auth_header": "api-key"})
            assert bearer["authorization"] == f"Bearer {KEY}" and "api-key" not in bearer
            assert azure["api-key"] == KEY and "authorization" not in azure
