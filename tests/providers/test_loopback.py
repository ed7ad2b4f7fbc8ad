"""The real adapters (OpenAI, Anthropic, Ollama, Gemini) against the loopback provider
server over real sockets: a scripted answer normalizes identically everywhere, and every
fault ends in the expected `ProviderError` code with no stream or socket left open."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import SecretStr

from providers.base import (
    Delta,
    FinishDelta,
    Provider,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    ReasoningDelta,
    TextDelta,
    Tool,
    ToolCallDelta,
    UsageDelta,
    create_provider,
    make_client,
)
from router.testing import LoopbackProvider, Reply, ToolCall
from tests.providers.replay import Result

PROTOCOLS = ["openai", "openai_responses", "anthropic", "ollama", "gemini"]
KEY = "sk-loopback-SECRET-0123456789"
REQUEST = ProviderRequest(model="test-model", messages=[{"role": "user", "content": "hi"}],
                          max_tokens=64)
READ_TIMEOUT_S = 0.4


def settings_for(protocol: str, base_url: str) -> ProviderSettings:
    kind = {"openai": "openai"}.get(protocol, protocol)
    return ProviderSettings(
        name=f"loop-{protocol}", kind=kind,
        base_url=base_url + "/v1" if protocol.startswith("openai") else base_url,
        api_key=SecretStr(KEY), api_key_env=f"{protocol.upper()}_API_KEY",
        connect_timeout_s=2.0, read_timeout_s=READ_TIMEOUT_S)


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider() as server:
        yield server


async def run(srv: LoopbackProvider, protocol: str, request: ProviderRequest = REQUEST,
              stop_after: int | None = None) -> Result:
    """Drain one stream, then prove nothing is left open: the server stops streaming as
    soon as the adapter is done (before the pooled client closes), and once the client
    closes no socket remains."""
    settings = settings_for(protocol, srv.base_url)
    client = make_client(settings)
    provider: Provider = create_provider(settings, client=client)
    result = Result()
    try:
        stream = provider.stream(request)
        try:
            async for delta in stream:
                result.deltas.append(delta)
                if stop_after is not None and len(result.deltas) >= stop_after:
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        await srv.wait_streams_closed(2.0)
    except ProviderError as exc:
        result.error = exc
        await srv.wait_streams_closed(2.0)
    finally:
        await provider.aclose()
        await client.aclose()
    await srv.wait_idle(2.0)
    assert srv.open_connections == 0 and srv.active_streams == 0
    return result


# --- the happy path is the same everywhere --------------------------------------------------

USAGE = {  # each protocol's normalized view of the same scripted usage
    "openai": UsageDelta(20, 9, 5, 3),
    "openai_responses": UsageDelta(20, 9, 5, 3),
    "anthropic": UsageDelta(20, 9, 5, 0),  # Anthropic does not report reasoning separately
    "ollama": UsageDelta(20, 9, 0, 0),  # Ollama reports neither cache nor reasoning
    "gemini": UsageDelta(20, 9, 5, 3),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_scripted_answer_normalizes_identically(
    srv: LoopbackProvider, protocol: str
) -> None:
    srv.set_default(Reply(text=("Hello", ", ", "wörld", " ✓"), reasoning=("Let me", " think"),
                          input_tokens=20, cached_input_tokens=5, output_tokens=9,
                          reasoning_tokens=3))
    result = await run(srv, protocol)
    assert result.error is None
    assert result.text == "Hello, wörld ✓"
    assert "".join(d.text for d in result.deltas if isinstance(d, ReasoningDelta)) == \
        "Let me think"
    assert [d for d in result.deltas if isinstance(d, UsageDelta)][-1] == USAGE[protocol]
    assert result.deltas[-1] == FinishDelta("stop")
    assert len(srv.requests) == 1 and srv.requests[0].protocol == protocol


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tool_calls_round_trip(srv: LoopbackProvider, protocol: str) -> None:
    srv.set_default(Reply(text=(), tool_calls=(ToolCall("lookup", {"q": "ünï", "n": 2}, "c1"),
                                               ToolCall("noop", {}, "c2"))))
    request = ProviderRequest(model="m", messages=REQUEST.messages,
                              tools=[Tool("lookup", "Look up", {"type": "object"}),
                                     Tool("noop", "Nothing", {"type": "object"})])
    result = await run(srv, protocol, request)
    assert result.error is None
    calls: dict[int, list[str]] = {}
    for d in result.deltas:
        if isinstance(d, ToolCallDelta):
            call = calls.setdefault(d.index, ["", "", ""])
            call[0] = call[0] or d.id or ""
            call[1] = call[1] or d.name or ""
            call[2] += d.arguments
    parsed = {name: orjson.loads(args or "{}") for _, name, args in calls.values()}
    assert parsed == {"lookup": {"q": "ünï", "n": 2}, "noop": {}}
    assert result.deltas[-1] == FinishDelta("tool_calls")
    sent = srv.requests[0].json
    assert sent is not None and "lookup" in str(sent)  # tools were translated and sent


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_slow_first_token_still_completes(srv: LoopbackProvider, protocol: str) -> None:
    srv.set_default(Reply(text=("a", "b")).slow(READ_TIMEOUT_S / 2))
    result = await run(srv, protocol)
    assert result.error is None and result.text == "ab"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_leaving_early_closes_the_upstream(srv: LoopbackProvider, protocol: str) -> None:
    srv.set_default(Reply(text=tuple("abcdefgh"), token_delay_s=0.02))
    result = await run(srv, protocol, stop_after=2)  # run() asserts nothing stays open
    assert result.error is None and len(result.deltas) == 2


# --- the fault matrix -----------------------------------------------------------------------

# (fault, {protocol: expected code}, texts yielded before the error)
FAULTS: list[tuple[str, Reply, dict[str, str], str]] = [
    ("429", Reply.rate_limited(retry_after=0.25), dict.fromkeys(PROTOCOLS, "rate_limited"), ""),
    ("500", Reply.server_error(), dict.fromkeys(PROTOCOLS, "provider_error"), ""),
    ("503", Reply.unavailable(), dict.fromkeys(PROTOCOLS, "overloaded"), ""),
    ("529", Reply.overloaded(), dict.fromkeys(PROTOCOLS, "overloaded"), ""),
    ("401", Reply.unauthorized(), dict.fromkeys(PROTOCOLS, "auth"), ""),
    ("400-context", Reply.context_length(), dict.fromkeys(PROTOCOLS, "context_length"), ""),
    ("400-filter", Reply.content_filter(), dict.fromkeys(PROTOCOLS, "content_filter"), ""),
    ("reset", Reply.reset(), dict.fromkeys(PROTOCOLS, "connection"), ""),
    ("no-response", Reply.no_response(), dict.fromkeys(PROTOCOLS, "timeout"), ""),
    ("slow-past-timeout", Reply(text=("a",)).slow(READ_TIMEOUT_S * 3),
     dict.fromkeys(PROTOCOLS, "timeout"), ""),
    ("cut", Reply(text=("a", "b", "c", "d")).cut(2), dict.fromkeys(PROTOCOLS, "connection"),
     "ab"),
    ("stall", Reply(text=("a", "b", "c", "d")).stall(2), dict.fromkeys(PROTOCOLS, "timeout"),
     "ab"),
    ("malformed", Reply(text=("a", "b", "c", "d")).malformed(2),
     dict.fromkeys(PROTOCOLS, "protocol_error"), "ab"),
    # OpenAI and Anthropic streams that lose only their marker are complete (test below).
    ("no-terminal", Reply(text=("a", "b")).without_terminal(),
     {"ollama": "protocol_error", "gemini": "protocol_error"}, "ab"),
    ("no-finish", Reply(text=("a", "b")).without_finish(),
     dict.fromkeys(PROTOCOLS, "protocol_error"), "ab"),
    ("stream-error", Reply(text=("a", "b", "c", "d")).stream_error(2),
     {"openai": "provider_error", "openai_responses": "provider_error",
      "anthropic": "overloaded", "ollama": "provider_error", "gemini": "overloaded"}, "ab"),
]
RETRYABLE = {"rate_limited", "overloaded", "provider_error", "connection", "timeout",
             "protocol_error"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("fault", "reply", "codes", "text"), FAULTS,
                         ids=[f[0] for f in FAULTS])
async def test_fault_maps_to_code_and_leaves_nothing_open(
    srv: LoopbackProvider, protocol: str, fault: str, reply: Reply, codes: dict[str, str],
    text: str,
) -> None:
    if protocol not in codes:
        return  # this protocol handles the fault without an error (tested on its own)
    srv.enqueue(reply)
    result = await run(srv, protocol)
    assert result.error is not None, f"{fault} on {protocol} did not fail"
    assert result.error.code == codes[protocol], result.error
    assert result.error.retryable == (codes[protocol] in RETRYABLE)
    assert result.text == text
    assert not any(isinstance(d, FinishDelta) for d in result.deltas)
    assert KEY not in str(result.error) and KEY not in repr(result.error)
    assert len(srv.requests) == 1  # adapters never retry


@pytest.mark.parametrize("fault", ["no_terminal", "unterminated"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_provably_complete_stream_without_its_marker_ends_normally(
    srv: LoopbackProvider, protocol: str, fault: str,
) -> None:
    # The finish reason and the usage arrived; only `[DONE]` / `message_stop` (or the blank
    # line ending it) is missing. Failing over would pay for the same answer twice.
    reply = Reply(text=("a", "b"))
    srv.enqueue(reply.without_terminal() if fault == "no_terminal" else reply.unterminated())
    result = await run(srv, protocol)
    assert result.error is None and result.text == "ab"
    assert result.deltas[-1] == FinishDelta("stop")
    assert any(isinstance(d, UsageDelta) and d.output_tokens > 0 for d in result.deltas)


async def test_openai_stream_without_done_and_without_usage_is_a_protocol_error(
    srv: LoopbackProvider,
) -> None:
    # Without usage nothing proves the finish chunk was the last one.
    srv.enqueue(Reply(text=("a", "b")).without_terminal())
    request = dataclasses.replace(REQUEST, options={"include_usage": False})
    result = await run(srv, "openai", request)
    assert result.error is not None and result.error.code == "protocol_error"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_retry_after_reaches_the_error(srv: LoopbackProvider, protocol: str) -> None:
    srv.enqueue(Reply.rate_limited(retry_after=0.25))
    result = await run(srv, protocol)
    assert result.error is not None and result.error.status == 429
    # Ollama sends whole seconds in `retry-after`; the others carry milliseconds.
    assert result.error.retry_after == (1.0 if protocol == "ollama" else 0.25)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_keep_alives_keep_a_stall_open_without_content(
    srv: LoopbackProvider, protocol: str
) -> None:
    # Keep-alives (SSE comments, Anthropic pings) defeat the read timeout and yield
    # nothing: ending such a stall is the router's idle watchdog's job. Cancelling the
    # consumer closes the upstream at once.
    srv.enqueue(Reply(text=("a", "b")).stall(1, keepalive_s=0.05))
    settings = settings_for(protocol, srv.base_url)
    client = make_client(settings)
    provider = create_provider(settings, client=client)
    deltas: list[Delta] = []
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT_S * 2):
                async for delta in provider.stream(REQUEST):
                    deltas.append(delta)
        await srv.wait_streams_closed(2.0)
    finally:
        await client.aclose()
    await srv.wait_idle(2.0)
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["a"]
    assert not any(isinstance(d, FinishDelta) for d in deltas)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_pooled_connection_is_reused_after_a_complete_stream(
    srv: LoopbackProvider, protocol: str
) -> None:
    settings = settings_for(protocol, srv.base_url)
    client = make_client(settings)
    provider = create_provider(settings, client=client)
    try:
        for _ in range(3):
            deltas = [d async for d in provider.stream(REQUEST)]
            assert deltas[-1] == FinishDelta("stop")
    finally:
        await client.aclose()
    await srv.wait_idle(2.0)
    assert srv.total_connections == 1  # the body was drained, so the socket went back
