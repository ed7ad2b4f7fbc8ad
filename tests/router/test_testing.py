"""The loopback provider server, driven with plain httpx (and the official SDKs): each
protocol's bytes, the queueing, the request log, and every fault as documented."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from router.testing import LoopbackProvider, LoopbackThread, Reply, ToolCall

PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
    "gemini": "/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
}
OPENAI_BODY = {"model": "gpt-test", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider() as server:
        yield server
        # Every test leaves no socket behind once its clients are closed.
        await server.wait_idle(2.0)


def _payloads(protocol: str, body: bytes) -> list[str]:
    """The JSON payloads of a body, by the protocol's framing (tolerant of bad JSON)."""
    if protocol == "ollama":
        return [line for line in body.decode().split("\n") if line]
    sep = "\r\n\r\n" if protocol == "gemini" else "\n\n"
    out = []
    for block in body.decode().split(sep):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def _text_of(protocol: str, body: bytes) -> str:
    text = []
    for raw in _payloads(protocol, body):
        if raw == "[DONE]":
            continue
        obj = orjson.loads(raw)
        if protocol == "openai":
            for choice in obj["choices"]:
                text.append(choice["delta"].get("content") or "")
        elif protocol == "anthropic":
            if obj["type"] == "content_block_delta" and obj["delta"]["type"] == "text_delta":
                text.append(obj["delta"]["text"])
        elif protocol == "ollama":
            text.append(obj["message"]["content"])
        else:
            for part in obj["candidates"][0]["content"]["parts"]:
                if not part.get("thought"):
                    text.append(part.get("text", ""))
    return "".join(text)


async def _post(client: httpx.AsyncClient, protocol: str, body: object = None) -> httpx.Response:
    return await client.post(PATHS[protocol], json=body or {"model": "m", "stream": True})


@pytest.mark.parametrize("protocol", list(PATHS))
async def test_streams_the_scripted_text_in_each_protocol(
    srv: LoopbackProvider, protocol: str
) -> None:
    srv.set_default(Reply.from_text("The quick brown fox."))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await _post(client, protocol)
    assert response.status_code == 200
    assert _text_of(protocol, response.content) == "The quick brown fox."
    expected_type = {"ollama": "application/x-ndjson"}.get(protocol, "text/event-stream")
    assert response.headers["content-type"].startswith(expected_type)


async def test_gemini_uses_crlf_framing_and_cumulative_usage(srv: LoopbackProvider) -> None:
    srv.set_default(Reply(text=("a", "b"), reasoning=("r",), input_tokens=7, cached_input_tokens=3,
                          output_tokens=10, reasoning_tokens=4))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        body = (await _post(client, "gemini")).content
    assert body.endswith(b"}\r\n\r\n") and b"\n\n" not in body.replace(b"\r\n\r\n", b"")
    events = [orjson.loads(p) for p in _payloads("gemini", body)]
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {"promptTokenCount": 7, "candidatesTokenCount": 6,
                                     "totalTokenCount": 17, "cachedContentTokenCount": 3,
                                     "thoughtsTokenCount": 4}
    assert events[0]["candidates"][0]["content"]["parts"] == [{"text": "r", "thought": True}]


async def test_openai_sends_usage_only_when_asked(srv: LoopbackProvider) -> None:
    srv.set_default(Reply(text=("x",), input_tokens=5, output_tokens=2))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        with_usage = _payloads("openai", (await _post(client, "openai", OPENAI_BODY)).content)
        plain = _payloads("openai", (await _post(client, "openai", {"model": "m"})).content)
    assert with_usage[-1] == "[DONE]" and plain[-1] == "[DONE]"
    usage_chunk = orjson.loads(with_usage[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 5
    assert usage_chunk["usage"]["completion_tokens"] == 2
    assert all("usage" not in orjson.loads(p) for p in plain[:-1])


async def test_openai_sdk_reads_the_stream(srv: LoopbackProvider) -> None:
    import openai

    srv.set_default(Reply(text=("Hel", "lo"), tool_calls=(ToolCall("get", {"q": "x y"}),),
                          input_tokens=9, output_tokens=4))
    client = openai.AsyncOpenAI(base_url=srv.base_url + "/v1", api_key="sk-test", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        text, args, usage, finish = "", "", None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    args += call.function.arguments or "" if call.function else ""
    finally:
        await client.close()
    assert (text, orjson.loads(args), finish) == ("Hello", {"q": "x y"}, "tool_calls")
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 4)


async def test_anthropic_sdk_reads_the_stream(srv: LoopbackProvider) -> None:
    import anthropic

    srv.set_default(Reply(text=("Hi", "!"), reasoning=("think",), input_tokens=20,
                          cached_input_tokens=5, tool_calls=(ToolCall("f", {}),),
                          output_tokens=7))
    client = anthropic.AsyncAnthropic(base_url=srv.base_url, api_key="sk-ant", max_retries=0)
    try:
        async with client.messages.stream(model="claude-test", max_tokens=10,
                                          messages=[{"role": "user", "content": "hi"}]) as s:
            message = await s.get_final_message()
    finally:
        await client.close()
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert message.content[1].text == "Hi!"  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 15 and message.usage.cache_read_input_tokens == 5
    assert message.usage.output_tokens == 7


async def test_queue_per_protocol_and_model_then_default(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply.server_error(), Reply.server_error(), protocol="ollama")
    srv.enqueue(Reply.unauthorized(), model="special")
    srv.set_default(Reply.from_text("fallback"), protocol="ollama")
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        statuses = [(await _post(client, "ollama")).status_code for _ in range(3)]
        special = await _post(client, "openai", {"model": "special"})
        other = await _post(client, "openai", {"model": "other"})
    assert statuses == [500, 500, 200]
    assert special.status_code == 401 and other.status_code == 200
    assert [r.model for r in srv.requests_for(protocol="ollama")] == ["m", "m", "m"]


async def test_records_path_headers_and_json_body(srv: LoopbackProvider) -> None:
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        await client.post(PATHS["anthropic"], json={"model": "claude-x", "max_tokens": 3},
                          headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
        await client.post(PATHS["gemini"], json={"contents": []})
    first, second = srv.requests
    assert (first.method, first.path, first.protocol, first.model) == (
        "POST", "/v1/messages", "anthropic", "claude-x")
    assert first.headers["anthropic-version"] == "2023-06-01"
    assert first.json == {"model": "claude-x", "max_tokens": 3}
    assert (second.protocol, second.model, second.query) == ("gemini", "gemini-test", "alt=sse")


async def test_keep_alive_reuses_one_connection(srv: LoopbackProvider) -> None:
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        for _ in range(3):
            assert (await _post(client, "openai")).status_code == 200
        assert srv.total_connections == 1 and srv.open_connections == 1
    await srv.wait_idle(2.0)
    assert srv.open_connections == 0


async def test_accepts_a_chunked_request_body(srv: LoopbackProvider) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": '
        yield b'"chunky"}'

    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await client.post(PATHS["ollama"], content=body())
    assert response.status_code == 200 and srv.requests[0].json == {"model": "chunky"}


async def test_unknown_path_is_404(srv: LoopbackProvider) -> None:
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await client.post("/v2/unknown", json={})
    assert response.status_code == 404 and srv.requests[0].protocol is None


# --- HTTP error faults ----------------------------------------------------------------------

ERROR_CASES = [
    (Reply.rate_limited(retry_after=2), 429),
    (Reply.server_error(), 500),
    (Reply.unavailable(), 503),
    (Reply.overloaded(), 529),
    (Reply.unauthorized(), 401),
    (Reply.context_length(), 400),
    (Reply.content_filter(), 400),
]


@pytest.mark.parametrize("protocol", list(PATHS))
@pytest.mark.parametrize(("reply", "status"), ERROR_CASES)
async def test_http_errors_have_status_and_provider_shaped_body(
    srv: LoopbackProvider, protocol: str, reply: Reply, status: int
) -> None:
    srv.enqueue(reply)
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await _post(client, protocol)
    assert response.status_code == status
    body = response.json()
    if protocol == "anthropic":
        assert body["type"] == "error" and body["error"]["message"]
    elif protocol == "ollama":
        assert isinstance(body["error"], str) and body["error"]
    elif protocol == "gemini":
        assert body["error"]["code"] == status and body["error"]["status"]
    else:
        assert body["error"]["message"]
    if status == 429 and protocol != "gemini":
        assert response.headers["retry-after"] == "2"
    if status == 429 and protocol == "gemini":
        assert body["error"]["details"][0]["retryDelay"] == "2s"


async def test_error_body_words_match_the_fault(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply.context_length(), Reply.content_filter(), protocol="openai")
    srv.enqueue(Reply.overloaded(), protocol="anthropic")
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        bodies = [(await _post(client, "openai")).json()["error"] for _ in range(2)]
        anthropic = await _post(client, "anthropic")
    assert bodies[0]["code"] == "context_length_exceeded"
    assert bodies[1]["code"] == "content_filter"
    assert anthropic.headers["x-should-retry"] == "true"


async def test_custom_headers_and_unknown_kind(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply.http_error(418, "bad_request", headers={"x-custom": "1"}))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await _post(client, "openai")
    assert response.status_code == 418 and response.headers["x-custom"] == "1"
    with pytest.raises(ValueError, match="unknown error kind"):
        Reply.http_error(400, "nope")


# --- connection faults --------------------------------------------------------------------


async def test_reset_before_headers(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply.reset())
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await _post(client, "openai")
        assert (await _post(client, "openai")).status_code == 200  # next one is served
    assert len(srv.requests) == 2


async def test_no_response_keeps_the_socket_silent_until_the_client_leaves(
    srv: LoopbackProvider,
) -> None:
    srv.enqueue(Reply.no_response())
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=httpx.Timeout(5, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await _post(c, "anthropic")
    await srv.wait_idle(2.0)
    assert len(srv.requests) == 1


async def test_slow_first_token_sends_headers_at_once(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply(text=("a", "b")).slow(0.3))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        started = time.monotonic()
        async with client.stream("POST", PATHS["openai"], json=OPENAI_BODY) as response:
            headers_at = time.monotonic() - started
            chunks = [line async for line in response.aiter_lines() if line]
            done_at = time.monotonic() - started
    assert headers_at < 0.25 <= done_at
    assert chunks[-1] == "data: [DONE]"


async def test_token_delay_paces_the_chunks(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply(text=("a", "b", "c", "d"), token_delay_s=0.05))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        started = time.monotonic()
        await _post(client, "ollama")
    assert time.monotonic() - started >= 0.15  # three gaps between four tokens


@pytest.mark.parametrize("protocol", list(PATHS))
async def test_cut_closes_mid_body_after_n_tokens(srv: LoopbackProvider, protocol: str) -> None:
    srv.enqueue(Reply(text=("a", "b", "c", "d")).cut(2))
    received = b""
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", PATHS[protocol], json={"model": "m"}) as response:
                async for chunk in response.aiter_bytes():
                    received += chunk
    assert _text_of(protocol, received) == "ab"


async def test_stall_sends_nothing_until_the_client_gives_up(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply(text=("a", "b", "c")).stall(1))
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=httpx.Timeout(5, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            async with c.stream("POST", PATHS["ollama"], json={}) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
        assert srv.active_streams <= 1
    await srv.wait_idle(2.0)
    assert srv.active_streams == 0
    assert [orjson.loads(line)["message"]["content"] for line in lines] == ["a"]


async def test_stall_with_keepalives_sends_only_comments(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply(text=("a", "b")).stall(1, keepalive_s=0.02))
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=srv.base_url) as client:  # noqa: SIM117
        async with client.stream("POST", PATHS["openai"], json={"model": "m"}) as response:
            async for line in response.aiter_lines():
                seen.append(line)
                if seen.count(": keep-alive") >= 3:
                    break
    content = [orjson.loads(s[6:])["choices"][0]["delta"].get("content") for s in seen
               if s.startswith("data: ")]
    assert content == ["", "a"]  # the role chunk, one token, then only keep-alives


@pytest.mark.parametrize("protocol", list(PATHS))
async def test_malformed_chunk_then_the_rest(srv: LoopbackProvider, protocol: str) -> None:
    srv.enqueue(Reply(text=("a", "b", "c")).malformed(1))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        body = (await _post(client, protocol)).content
    bad = []
    for raw in _payloads(protocol, body):
        try:
            orjson.loads(raw) if raw != "[DONE]" else None
        except orjson.JSONDecodeError:
            bad.append(raw)
    assert len(bad) == 1


@pytest.mark.parametrize(("protocol", "marker"), [
    ("openai", b"data: [DONE]"), ("anthropic", b"message_stop"), ("ollama", b'"done":true'),
    ("gemini", b"finishReason"),
])
async def test_without_terminal_marker_ends_cleanly(
    srv: LoopbackProvider, protocol: str, marker: bytes
) -> None:
    srv.enqueue(Reply(text=("a", "b")).without_terminal())
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        missing = (await _post(client, protocol)).content  # no exception: a clean end
        normal = (await _post(client, protocol)).content
    assert marker in normal and marker not in missing
    assert _text_of(protocol, missing) == "ab"


@pytest.mark.parametrize(("protocol", "needle"), [
    ("openai", b'data: {"error":'), ("anthropic", b"event: error\ndata: "),
    ("ollama", b'{"error":"'), ("gemini", b'{\n  "error": {'),
])
async def test_in_stream_error_after_n_tokens(
    srv: LoopbackProvider, protocol: str, needle: bytes
) -> None:
    srv.enqueue(Reply(text=("a", "b", "c")).stream_error(2))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        response = await _post(client, protocol)
    assert response.status_code == 200
    before, _, after = response.content.partition(needle)
    assert after and _text_of(protocol, before) == "ab"


async def test_cancelled_stream_leaves_no_connection_open(srv: LoopbackProvider) -> None:
    srv.enqueue(Reply(text=tuple("abcdef"), token_delay_s=0.05))
    async with httpx.AsyncClient(base_url=srv.base_url) as client:
        async def consume() -> None:
            async with client.stream("POST", PATHS["anthropic"], json={}) as response:
                async for _ in response.aiter_bytes():
                    pass

        task = asyncio.create_task(consume())
        await srv.wait_requests(1)
        await asyncio.sleep(0.06)  # let a token or two through
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await srv.wait_idle(2.0)  # the pooled client still exists: the socket was closed
    assert srv.open_connections == 0 and srv.active_streams == 0


async def test_aclose_ends_stalled_and_silent_connections() -> None:
    server = await LoopbackProvider(Reply.no_response()).start()
    client = httpx.AsyncClient(base_url=server.base_url)
    task = asyncio.create_task(_post(client, "ollama"))
    await server.wait_requests(1)
    await server.aclose()
    with pytest.raises(httpx.HTTPError):
        await task
    await client.aclose()
    assert server.open_connections == 0


def test_loopback_thread_serves_blocking_clients() -> None:
    with LoopbackThread(Reply.from_text("sync works")) as srv:
        srv.server.enqueue(Reply.rate_limited(retry_after=1))
        with httpx.Client(base_url=srv.base_url) as client:
            first = client.post(PATHS["ollama"], json={"model": "m"})
            second = client.post(PATHS["ollama"], json={"model": "m"})
        srv.wait_idle()
        assert srv.server.open_connections == 0
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert _text_of("ollama", second.content) == "sync works"
    assert len(srv.server.requests) == 2


async def test_garbage_request_line_gets_400_and_a_close(srv: LoopbackProvider) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"NONSENSE\r\n\r\n")
    await writer.drain()
    response = await reader.read()  # the server answers, then closes
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 400 ") and srv.requests == []


def test_import_router_does_not_import_the_testing_module() -> None:
    code = "import sys, router; assert 'router.testing' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=".")
