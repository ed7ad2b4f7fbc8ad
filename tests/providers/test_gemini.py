"""The Gemini adapter: every recorded Gemini transcript replayed through respx (whole,
re-chunked at random, byte by byte) against its expected values; request translation;
errors (HTTP with RetryInfo, in-event, raw JSON after the events); missing finish;
cancellation; secrets."""

from __future__ import annotations

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
    ReasoningDelta,
    TextDelta,
    Tool,
    UsageDelta,
    create_provider,
)
from providers.gemini import GeminiProvider, _build_request
from tests.providers.replay import (
    TRANSCRIPTS,
    Chunks,
    Result,
    chunkings,
    load_expected,
    replay_http,
)

EXPECTED = load_expected("expected.gemini.json")
RAW_ERROR_CASE = "gemini/ISSUE-PASTE-vercel-ai-5217-raw-json-error-after-stream.txt"
CASES = sorted(k for k in EXPECTED if k != RAW_ERROR_CASE)
MODEL = "gemini-2.5-flash"
URL = f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}:streamGenerateContent"
KEY = "AIzaSyTESTKEY-0123456789abcdefghijklmn"
SETTINGS = ProviderSettings(name="gemini", kind="gemini", api_key=SecretStr(KEY),
                            api_key_env="GEMINI_API_KEY")
REQUEST = ProviderRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])


async def replay(pieces: list[bytes], *, request: ProviderRequest = REQUEST, status: int = 200,
                 settings: ProviderSettings = SETTINGS,
                 headers: dict[str, str] | None = None) -> tuple[Result, Chunks, respx.Route]:
    return await replay_http(GeminiProvider, pieces, settings=settings, request=request,
                             url=URL, url_is_prefix=True, status=status, headers=headers)


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


def text_event(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


# --- recorded transcripts -----------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("how", ["whole", "random", "bytes"])
async def test_transcript_normalizes_to_expected(name: str, how: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    expected = EXPECTED[name]["expected"]
    result, body, _ = await replay(chunkings(data, seed=len(data))[how])
    assert result.error is None
    assert result.joined(TextDelta) == expected["text"]
    assert result.joined(ReasoningDelta) == expected["reasoning"]
    assert result.tool_calls == expected["tool_calls"]
    raw = expected["usage_raw_mapped"]
    thoughts = raw["thoughts_tokens"] or 0
    # Ours: output includes thoughts; input includes cached.
    assert result.usages == [UsageDelta(raw["input_tokens"], raw["output_tokens"] + thoughts,
                                        raw["cached_input_tokens"] or 0, thoughts)]
    assert raw["input_tokens"] + raw["output_tokens"] + thoughts == raw["total_tokens"]
    assert result.finishes == [expected["finish_reason_normalized"]]
    assert isinstance(result.deltas[-1], FinishDelta)
    assert body.closed


@pytest.mark.parametrize("how", ["whole", "random", "bytes"])
async def test_raw_json_error_after_the_events_is_raised(how: str) -> None:
    data = (TRANSCRIPTS / RAW_ERROR_CASE).read_bytes()
    expected = EXPECTED[RAW_ERROR_CASE]
    result, body, _ = await replay(chunkings(data, seed=5)[how])
    assert result.joined(TextDelta) == expected["expected"]["text"]
    robust = expected["expected_alternative"]["errors_robust"][0]
    assert result.error is not None
    assert result.error.code == "overloaded" and result.error.retryable
    assert result.error.status == robust["code"] and robust["message"] in result.error.message
    assert result.finishes == [] and body.closed


# --- stream semantics ---------------------------------------------------------------------


async def test_stream_without_finish_reason_is_a_protocol_error() -> None:
    result, _, _ = await replay([sse(text_event("a"), text_event("b"))])
    assert result.joined(TextDelta) == "ab"
    assert result.error is not None and result.error.code == "protocol_error"


async def test_error_object_in_an_event_is_raised() -> None:
    error = {"error": {"code": 500, "message": "Internal error encountered.",
                       "status": "INTERNAL"}}
    result, _, _ = await replay([sse(text_event("a"), error)])
    assert result.joined(TextDelta) == "a"
    assert result.error is not None and result.error.code == "provider_error"


async def test_malformed_event_is_a_protocol_error() -> None:
    result, _, _ = await replay([sse(text_event("a")) + b'data: {"candidates": [\r\n\r\n'])
    assert result.error is not None and result.error.code == "protocol_error"


@pytest.mark.parametrize(("finish", "normalized"), [
    ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("OTHER", "stop"),
])
async def test_finish_reasons(finish: str, normalized: str) -> None:
    result, _, _ = await replay([sse(text_event("a", finish))])
    assert result.finishes == [normalized]


async def test_malformed_function_call_finish_is_an_error() -> None:
    result, _, _ = await replay([sse(text_event("", "MALFORMED_FUNCTION_CALL"))])
    assert result.error is not None and result.error.code == "provider_error"


async def test_blocked_prompt_finishes_as_content_filter() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"},
               "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}
    result, _, _ = await replay([sse(blocked)])
    assert result.finishes == ["content_filter"] and result.usages == [UsageDelta(8, 0)]


async def test_cached_tokens_and_function_call_ids() -> None:
    call = {"candidates": [{"content": {"parts": [
        {"functionCall": {"id": "fc_1", "name": "f", "args": {"a": "é"}}},
        {"functionCall": {"name": "g"}}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60,
                          "candidatesTokenCount": 4, "totalTokenCount": 104}}
    result, _, _ = await replay([sse(call)])
    assert result.tool_calls == [{"id": "fc_1", "name": "f", "arguments": {"a": "é"}},
                                 {"id": None, "name": "g", "arguments": {}}]
    assert result.usages == [UsageDelta(100, 4, 60, 0)]
    assert result.finishes == ["tool_calls"]


async def test_closing_the_iterator_closes_the_response() -> None:
    body = Chunks([sse(text_event("a"), text_event("b", "STOP"))])
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(url__startswith=URL).respond(200, stream=body)
        stream = GeminiProvider(SETTINGS, client=client).stream(REQUEST)
        first = await anext(stream)  # type: ignore[call-overload]
        await stream.aclose()  # type: ignore[attr-defined]
    assert first == TextDelta("a") and body.closed


# --- HTTP errors --------------------------------------------------------------------------


async def test_429_takes_the_retry_delay_from_the_body() -> None:
    data = (TRANSCRIPTS / "errors" / "gemini-http-429-retry-info.body.json").read_bytes()
    result, _, _ = await replay([data], status=429)
    assert result.error is not None
    assert (result.error.code, result.error.status, result.error.retry_after) == (
        "rate_limited", 429, 34.4)
    assert result.error.retryable


@pytest.mark.parametrize(("status", "gstatus", "message", "code"), [
    (503, "UNAVAILABLE", "The model is overloaded. Please try again later.", "overloaded"),
    (500, "INTERNAL", "An internal error has occurred.", "provider_error"),
    (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "auth"),
    (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of "
     "tokens allowed (1048576).", "context_length"),
    (404, "NOT_FOUND", "models/nope is not found for API version v1beta", "bad_request"),
    (403, "PERMISSION_DENIED", "Permission denied.", "auth"),
])
async def test_http_errors_map_to_codes(status: int, gstatus: str, message: str,
                                        code: str) -> None:
    body = orjson.dumps({"error": {"code": status, "message": message, "status": gstatus}})
    result, _, _ = await replay([body], status=status)
    assert result.error is not None
    assert (result.error.code, result.error.status) == (code, status)
    assert message in result.error.message


# --- request translation ------------------------------------------------------------------


def test_build_request_translates_history_tools_and_options() -> None:
    request = ProviderRequest(
        model=MODEL, system="Be brief.",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                         {"type": "image_url",
                                          "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "time", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "c2", "content": "noon"},
            {"role": "assistant", "content": "Il fait"},
        ],
        tools=[Tool("weather", "Weather by city", {"type": "object", "properties": {
            "city": {"type": "string"}}, "additionalProperties": False})],
        tool_choice="weather", max_tokens=100, temperature=0.5, stop=["END"])
    body = _build_request(request, {"thinking_config": {"includeThoughts": True}, "top_p": 0.9})
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather?"},
                                       {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "time", "args": {}},
                 "thoughtSignature": "skip_thought_signature_validator"}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "time", "response": {"result": "noon"}}}]},
            {"role": "model", "parts": [{"text": "Il fait"}]},
        ],
        "tools": [{"functionDeclarations": [{
            "name": "weather", "description": "Weather by city",
            "parametersJsonSchema": {"type": "object", "properties": {
                "city": {"type": "string"}}, "additionalProperties": False}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                 "allowedFunctionNames": ["weather"]}},
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5,
                             "stopSequences": ["END"], "topP": 0.9,
                             "thinkingConfig": {"includeThoughts": True}},
    }


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"),
                                              ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    request = ProviderRequest(MODEL, [], tools=[Tool("f", "", {})], tool_choice=choice)
    assert _build_request(request, {})["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


async def test_request_url_header_and_body() -> None:
    _, _, route = await replay([sse(text_event("a", "STOP"))],
                               request=ProviderRequest("models/" + MODEL, REQUEST.messages))
    sent = route.calls.last.request
    assert str(sent.url) == URL + "?alt=sse"
    assert sent.headers["x-goog-api-key"] == KEY
    assert orjson.loads(sent.content) == {"contents": [{"role": "user",
                                                        "parts": [{"text": "hi"}]}]}


async def test_base_url_with_version_is_kept() -> None:
    provider = GeminiProvider(ProviderSettings("g", "gemini", base_url="http://x/v1/"))
    assert provider._url("m") == "http://x/v1/models/m:streamGenerateContent?alt=sse"
    await provider.aclose()


# --- secrets ------------------------------------------------------------------------------


async def test_missing_key_fails_before_any_call() -> None:
    settings = ProviderSettings(name="gemini", kind="gemini", api_key_env="MY_GEMINI_KEY")
    result, _, route = await replay([b""], settings=settings)
    assert result.error is not None and result.error.code == "auth"
    assert result.error.message == "missing API key: set MY_GEMINI_KEY"
    assert not result.error.retryable and not route.called


async def test_key_never_appears_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = orjson.dumps({"error": {"code": 400, "message": f"API key not valid: {KEY}",
                                   "status": "INVALID_ARGUMENT"}})
    result, _, _ = await replay([echo], status=400)
    assert result.error is not None and result.error.code == "auth"
    provider = create_provider(SETTINGS)
    try:
        shown = [str(result.error), repr(result.error), repr(provider), repr(SETTINGS),
                 caplog.text]
    finally:
        await provider.aclose()
    assert all(KEY not in text for text in shown)
    in_stream = sse(text_event("a"), {"error": {"code": 500, "message": f"key {KEY}"}})
    result, _, _ = await replay([in_stream])
    assert result.error is not None and KEY not in str(result.error)
