"""The Ollama adapter: the recorded `/api/chat` transcripts replayed through respx (whole,
re-chunked at random, byte by byte) against their expected values; request translation;
errors (HTTP and in-stream); a stream without `done`; cancellation; secrets."""

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
from providers.ollama import OllamaProvider, _build_request
from tests.providers.replay import (
    TRANSCRIPTS,
    Chunks,
    Result,
    chunkings,
    load_expected,
    replay_http,
)

EXPECTED = load_expected("expected.ollama.json")
# `/api/chat` recordings; the `/api/generate` ones (top-level `response`) are another
# endpoint, which the adapter does not speak.
CHAT_CASES = ["ollama/chabicht-chat-thinking-two-tool-calls.ndjson",
              "ollama/semantic-kernel-chat-stream-tail.ndjson"]
URL = "http://localhost:11434/api/chat"
SETTINGS = ProviderSettings(name="ollama", kind="ollama")
REQUEST = ProviderRequest(model="llama3.2", messages=[{"role": "user", "content": "hi"}])


async def replay(pieces: list[bytes], *, request: ProviderRequest = REQUEST, status: int = 200,
                 settings: ProviderSettings = SETTINGS,
                 headers: dict[str, str] | None = None) -> tuple[Result, Chunks, respx.Route]:
    return await replay_http(OllamaProvider, pieces, settings=settings, request=request,
                             url=URL, status=status, headers=headers)


def lines(*objs: object) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def chunk(content: str = "", **message: Any) -> dict[str, Any]:
    return {"model": "m", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content, **message}, "done": False}


DONE = {"model": "m", "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
        "prompt_eval_count": 7, "eval_count": 3}


# --- recorded transcripts -----------------------------------------------------------------


@pytest.mark.parametrize("name", CHAT_CASES)
@pytest.mark.parametrize("how", ["whole", "random", "bytes"])
async def test_transcript_normalizes_to_expected(name: str, how: str) -> None:
    data = (TRANSCRIPTS / name).read_bytes()
    expected = EXPECTED[name]["expected"]
    result, body, _ = await replay(chunkings(data, seed=len(data))[how])
    assert result.error is None
    assert result.joined(TextDelta) == expected["text"]
    assert result.joined(ReasoningDelta) == expected["reasoning"]
    assert result.tool_calls == expected["tool_calls"]
    usage = expected["usage_raw_mapped"]
    assert result.usage == UsageDelta(usage["input_tokens"], usage["output_tokens"], 0, 0)
    assert result.finishes == [expected["finish_reason_normalized"]]
    assert isinstance(result.deltas[-1], FinishDelta)
    assert body.closed


@pytest.mark.parametrize("how", ["whole", "random", "bytes"])
async def test_recorded_mid_stream_error_line_raises_the_mapped_error(how: str) -> None:
    # Ollama's documented in-stream error (recorded on /api/generate; the error line is
    # the same on /api/chat). Its `response` lines are not /api/chat content.
    name = "ollama/DOC-ollama-generate-midstream-error.ndjson"
    data = (TRANSCRIPTS / name).read_bytes()
    result, body, _ = await replay(chunkings(data, seed=3)[how])
    assert result.error is not None
    assert result.error.code == "provider_error" and result.error.retryable
    assert EXPECTED[name]["expected"]["errors"][0] in result.error.message
    assert result.finishes == [] and body.closed


async def test_chat_stream_with_the_same_error_line_keeps_the_text_before_it() -> None:
    data = lines(chunk(" Yes"), chunk(".")) + b'{"error":"an error was encountered while ' \
        b'running the model"}\n'
    result, _, _ = await replay([data])
    assert result.joined(TextDelta) == " Yes."
    assert result.error is not None and result.error.code == "provider_error"


# --- stream semantics ---------------------------------------------------------------------


async def test_stream_without_done_is_a_protocol_error() -> None:
    result, _, _ = await replay([lines(chunk("a"), chunk("b"))])
    assert result.joined(TextDelta) == "ab"
    assert result.error is not None and result.error.code == "protocol_error"
    assert result.error.retryable


async def test_last_line_without_newline_is_parsed() -> None:
    data = lines(chunk("a")) + orjson.dumps(DONE)
    result, _, _ = await replay([data])
    assert result.error is None and result.finishes == ["stop"]
    assert result.usage == UsageDelta(7, 3)


async def test_malformed_line_is_a_protocol_error() -> None:
    result, _, _ = await replay([lines(chunk("a")) + b'{"model":"m","message":{"con\n'])
    assert result.error is not None and result.error.code == "protocol_error"


async def test_blank_and_crlf_lines_are_tolerated() -> None:
    data = orjson.dumps(chunk("a")) + b"\r\n\n  \n" + orjson.dumps(DONE) + b"\r\n"
    result, _, _ = await replay([data])
    assert result.error is None and result.joined(TextDelta) == "a"


async def test_utf8_split_across_reads() -> None:
    data = lines(chunk("héllo ✓"), DONE)
    cut = data.index("✓".encode()) + 1
    result, _, _ = await replay([data[:cut], data[cut:]])
    assert result.joined(TextDelta) == "héllo ✓"


async def test_length_and_missing_counts() -> None:
    done = {k: v for k, v in DONE.items() if k != "prompt_eval_count"} | {"done_reason": "length"}
    result, _, _ = await replay([lines(chunk("a"), done)])
    assert result.finishes == ["length"] and result.usage == UsageDelta(0, 3)
    bare = {"model": "m", "done": True, "done_reason": "load"}
    result, _, _ = await replay([lines(bare)])
    assert result.finishes == ["stop"] and result.usage is None


async def test_tool_call_without_id_and_string_arguments() -> None:
    call = {"function": {"name": "f", "arguments": {"x": [1, "é"]}}}
    legacy = {"function": {"name": "g", "arguments": '{"y": 2}'}}
    result, _, _ = await replay([lines(chunk(tool_calls=[call, legacy]), DONE)])
    assert result.tool_calls == [{"id": None, "name": "f", "arguments": {"x": [1, "é"]}},
                                 {"id": None, "name": "g", "arguments": {"y": 2}}]
    assert result.finishes == ["tool_calls"]


async def test_nothing_after_done_is_yielded_and_the_body_is_drained() -> None:
    result, body, _ = await replay([lines(chunk("a"), DONE), b"\n"])
    assert [type(d).__name__ for d in result.deltas] == ["TextDelta", "UsageDelta",
                                                         "FinishDelta"]
    assert body.read_to_end and body.closed


async def test_closing_the_iterator_closes_the_response() -> None:
    body = Chunks([lines(chunk("a"), chunk("b"), DONE)])
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).respond(200, stream=body)
        stream = OllamaProvider(SETTINGS, client=client).stream(REQUEST)
        first = await anext(stream)  # type: ignore[call-overload]
        await stream.aclose()  # type: ignore[attr-defined]
    assert first == TextDelta("a") and body.closed


# --- HTTP errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "message", "code", "retryable"), [
    (404, "model 'llama9' not found, try pulling it first", "bad_request", False),
    (400, "the input length exceeds the context length", "context_length", False),
    (429, "too many requests", "rate_limited", True),
    (500, "llama runner process has terminated: exit status 2", "provider_error", True),
    (503, "server busy, please try again.  maximum pending requests exceeded",
     "overloaded", True),
    (401, "unauthorized", "auth", False),
])
async def test_http_errors_map_to_codes(status: int, message: str, code: str,
                                        retryable: bool) -> None:
    result, _, _ = await replay([orjson.dumps({"error": message})], status=status,
                                headers={"retry-after": "3"} if status == 429 else None)
    assert result.error is not None
    assert (result.error.code, result.error.status, result.error.retryable) == (
        code, status, retryable)
    assert message in result.error.message
    assert result.error.retry_after == (3.0 if status == 429 else None)


# --- request translation ------------------------------------------------------------------


def test_build_request_translates_history_tools_and_options() -> None:
    request = ProviderRequest(
        model="qwen3",
        system="Be brief.",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is in "},
                                         {"type": "text", "text": "this?"},
                                         {"type": "image_url",
                                          "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "look", "arguments": '{"q": "x"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "assistant", "content": "It is"},
        ],
        tools=[Tool("look", "Look at it", {"type": "object", "properties": {}})],
        tool_choice="auto", max_tokens=50, temperature=0.2, stop=["\n\n"],
        options={"num_ctx": 8192})
    body = _build_request(request, {"think": True, "keep_alive": "5m",
                                    "options": {"seed": 1}, **request.options})
    assert body == {
        "model": "qwen3", "stream": True, "think": True, "keep_alive": "5m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is in this?", "images": ["AAAA"]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "function": {"name": "look", "arguments": {"q": "x"}}}]},
            {"role": "tool", "content": "a cat", "tool_call_id": "call_1", "tool_name": "look"},
            {"role": "assistant", "content": "It is"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "look", "description": "Look at it",
            "parameters": {"type": "object", "properties": {}}}}],
        "options": {"seed": 1, "num_ctx": 8192, "num_predict": 50, "temperature": 0.2,
                    "stop": ["\n\n"]},
    }


def test_tool_choice_none_drops_tools_and_a_name_selects_one() -> None:
    tools = [Tool("a", "", {}), Tool("b", "", {})]
    none = _build_request(ProviderRequest("m", [], tools=tools, tool_choice="none"), {})
    named = _build_request(ProviderRequest("m", [], tools=tools, tool_choice="b"), {})
    assert "tools" not in none
    assert [t["function"]["name"] for t in named["tools"]] == ["b"]


async def test_request_goes_to_api_chat_with_json_and_no_auth_by_default() -> None:
    _, _, route = await replay([lines(DONE)])
    sent = route.calls.last.request
    assert sent.url == URL and "authorization" not in sent.headers
    assert orjson.loads(sent.content)["model"] == "llama3.2"


async def test_base_url_variants() -> None:
    for base in ("http://gpu:11434", "http://gpu:11434/", "http://gpu:11434/api"):
        provider = OllamaProvider(ProviderSettings("o", "ollama", base_url=base))
        assert provider._url == "http://gpu:11434/api/chat"
        await provider.aclose()


# --- secrets ------------------------------------------------------------------------------

KEY = "ollama-cloud-SECRET-0123456789"


async def test_key_is_sent_as_bearer_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ProviderSettings(name="ollama", kind="ollama", api_key=SecretStr(KEY),
                                api_key_env="OLLAMA_API_KEY")
    echo = orjson.dumps({"error": f"unauthorized: key {KEY} revoked"})
    result, _, route = await replay([echo], status=401, settings=settings)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert result.error is not None and result.error.code == "auth"
    provider = create_provider(settings)
    try:
        shown = [str(result.error), repr(result.error), repr(provider), repr(settings),
                 caplog.text]
    finally:
        await provider.aclose()
    assert all(KEY not in text for text in shown)
    stream_error = lines(chunk("a")) + orjson.dumps({"error": f"bad key {KEY}"}) + b"\n"
    result, _, _ = await replay([stream_error], settings=settings)
    assert result.error is not None and KEY not in str(result.error)
