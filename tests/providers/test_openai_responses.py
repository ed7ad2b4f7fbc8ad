"""The OpenAI Responses API adapter: every Responses transcript (the recorded ones under
openai/ and the constructed one under openai_responses/) replayed through respx (whole,
re-chunked at random, byte by byte) against its expected values, and cross-checked with
the official `openai` SDK's own Responses stream parser on the same bytes; request
translation; terminal events; errors; secrets."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import orjson
import pytest
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
from providers.openai_responses import OpenAIResponsesProvider, _build_request
from tests.providers.replay import (
    TRANSCRIPTS,
    Chunks,
    Result,
    cases,
    chunkings,
    joined,
    load_expected,
    replay_every_chunking,
    replay_http,
)
from tests.providers.test_sdk_crosscheck import summary

EXPECTED = {**{k: v for k, v in load_expected().items() if v["wire_format"] == "responses"},
            **load_expected("expected.openai_responses.json")}
CASES = sorted(EXPECTED)
URL = "https://api.openai.com/v1/responses"
KEY = "sk-proj-TESTKEY-responses-0123456789"
SETTINGS = ProviderSettings(name="oai-r", kind="openai_responses", api_key=SecretStr(KEY),
                            api_key_env="OPENAI_API_KEY")
REQUEST = ProviderRequest(model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}],
                          max_tokens=256)


async def replay(pieces: list[bytes], request: ProviderRequest = REQUEST,
                 status: int = 200) -> tuple[Result, Chunks, Any]:
    return await replay_http(OpenAIResponsesProvider, pieces, settings=SETTINGS,
                             request=request, url=URL, status=status)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                    for e in events)


# --- transcripts --------------------------------------------------------------------------


def test_every_responses_transcript_is_covered() -> None:
    assert len(CASES) == 4
    assert any(c.startswith("openai_responses/") for c in CASES)
    assert cases(EXPECTED, "openai_responses") == [
        "openai_responses/SYNTHETIC-reasoning-text-parallel-calls.sse"]


@pytest.mark.parametrize("name", CASES)
async def test_transcript_normalizes_to_expected_under_any_chunking(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    expected = EXPECTED[name]["expected"]
    whole = await replay_every_chunking(replay, chunkings(data, seed=len(data), cuts=60))
    assert whole.text == expected["text"]
    assert whole.reasoning == expected["reasoning"]
    assert whole.tool_calls == expected["tool_calls"]
    if expected["errors"]:
        # `error` (insufficient_quota) then `response.failed`: billing, not retryable.
        assert whole.error is not None and whole.finish is None
        assert (whole.error.code, whole.error.retryable) == ("rate_limited", False)
        assert expected["errors"][0]["message"][:40] in whole.error.message
        return
    assert whole.error is None
    raw = expected["usage_raw_mapped"]
    assert whole.usage == UsageDelta(raw["input_tokens"], raw["output_tokens"],
                                     raw["cached_input_tokens"], raw["reasoning_tokens"])
    assert whole.finishes == [expected["finish_reason_normalized"]]
    assert isinstance(whole.deltas[-1], FinishDelta)


async def openai_sdk(data: bytes) -> tuple[Any, Exception | None]:
    """The SDK's own accumulation of a Responses stream (`responses.stream()`)."""
    transport = httpx2.MockTransport(lambda _: httpx2.Response(
        200, content=data, headers={"content-type": "text/event-stream"}))
    client = openai.AsyncOpenAI(api_key=KEY, max_retries=0,
                                http_client=httpx2.AsyncClient(transport=transport))
    final, error = None, None
    try:
        async with client.responses.stream(model="m", input="hi") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
    except openai.APIError as exc:
        error = exc
    await client.close()
    return final, error


@pytest.mark.parametrize("name", CASES)
async def test_openai_sdk_agrees(name: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    final, sdk_error = await openai_sdk(data)
    result, _, _ = await replay([data])
    assert (sdk_error is None) == (result.error is None)  # in-stream errors fail both
    if final is None:
        return
    text, tools, usage = summary(result.deltas)
    assert text == final.output_text
    assert tools == [(i.call_id, i.name, json.loads(i.arguments or "{}"))
                     for i in final.output if i.type == "function_call"]
    sdk_reasoning = "".join(s.text for i in final.output if i.type == "reasoning"
                            for s in [*i.summary, *(i.content or [])])
    assert joined(result.deltas, ReasoningDelta) == sdk_reasoning
    u = final.usage
    assert usage == (u.input_tokens, u.output_tokens, u.input_tokens_details.cached_tokens,
                     u.output_tokens_details.reasoning_tokens)


# --- request ------------------------------------------------------------------------------


def test_request_translates_a_tool_round_trip_into_items() -> None:
    request = ProviderRequest(
        model="gpt-5", system="Be brief.", max_tokens=50, temperature=0.2,
        tools=[Tool("lookup", "Find a lead", {"type": "object"})], tool_choice="lookup",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "find"},
                                         {"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "assistant", "content": "Looking.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q":"acme"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"seats":40}'},
        ],
        options={"reasoning": {"effort": "low"}})
    body = _build_request(request, dict(request.options))
    assert body["instructions"] == "Be brief."
    assert (body["stream"], body["store"]) == (True, False)
    assert body["max_output_tokens"] == 50 and body["temperature"] == 0.2
    assert body["tools"] == [{"type": "function", "name": "lookup",
                              "description": "Find a lead", "parameters": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "function", "name": "lookup"}
    assert body["reasoning"] == {"effort": "low"}
    assert body["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "find"},
                                     {"type": "input_image", "image_url": "u",
                                      "detail": "auto"}]},
        {"role": "assistant", "content": "Looking."},
        {"type": "function_call", "call_id": "call_1", "name": "lookup",
         "arguments": '{"q":"acme"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"seats":40}'},
    ]


def test_the_kind_is_registered() -> None:
    provider = create_provider(SETTINGS)
    assert isinstance(provider, OpenAIResponsesProvider)
    assert KEY not in repr(provider)


# --- terminal events and errors -----------------------------------------------------------

_ITEM = {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "message", "id": "m", "role": "assistant", "content": []}}
_DELTA = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
          "content_index": 0, "delta": "Hi"}


async def test_incomplete_at_max_output_tokens_is_length() -> None:
    data = sse(_ITEM, _DELTA, {"type": "response.incomplete", "response": {
        "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {"input_tokens": 3, "output_tokens": 1}}})
    result, body, _ = await replay([data])
    assert result.error is None and result.text == "Hi"
    assert result.deltas[-2:] == [UsageDelta(3, 1), FinishDelta("length")]
    assert body.read_to_end and body.closed


async def test_a_stream_without_its_terminal_event_is_a_protocol_error() -> None:
    result, body, _ = await replay([sse(_ITEM, _DELTA)])
    assert result.text == "Hi" and result.finish is None
    assert result.error is not None and result.error.code == "protocol_error"
    assert body.closed


async def test_flat_error_event_and_arguments_sent_only_whole() -> None:
    call = {"type": "response.output_item.added", "output_index": 0, "item": {
        "type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": ""}}
    whole = {"type": "response.function_call_arguments.done", "item_id": "fc",
             "output_index": 0, "arguments": '{"a":1}'}
    ok, _, _ = await replay([sse(call, whole, {"type": "response.completed",
                                                "response": {"usage": None}})])
    assert ok.tool_calls == [{"id": "c1", "name": "f", "arguments": {"a": 1}}]
    assert ok.finish == "tool_calls"
    failed, _, _ = await replay([sse(_ITEM, _DELTA, {
        "type": "error", "code": "rate_limit_exceeded", "message": "Slow down", "param": None})])
    assert failed.error is not None and failed.error.code == "rate_limited"
    assert [d for d in failed.deltas if isinstance(d, TextDelta)] == [TextDelta("Hi")]


async def test_http_errors_never_carry_the_key() -> None:
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {KEY}",
                                   "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}})
    result, _, _ = await replay([body], status=401)
    assert result.error is not None and result.error.code == "auth"
    assert KEY not in str(result.error)
