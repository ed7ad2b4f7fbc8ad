"""HTTP plumbing: Retry-After, status + body -> error codes (recorded error bodies),
httpx exceptions -> codes, streaming POST lifecycle, and keep-alive after the terminal
marker over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
import respx

from providers.base import ProviderError
from providers.headers import parse_quota, parse_retry_after
from providers.http import (
    aiter_body,
    drain,
    error_in_text,
    map_error_payload,
    map_http_error,
    map_transport_error,
    open_stream,
    redact,
)

ERRORS = Path(__file__).parent.parent / "transcripts" / "errors"
URL = "https://api.example.test/v1/chat/completions"


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


# --- Retry-After --------------------------------------------------------------------------


def test_retry_after_seconds_ms_and_http_date() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"})) == 1.5
    # retry-after-ms is more precise and wins, as in the official SDKs.
    assert parse_retry_after(httpx.Headers({"retry-after": "7", "retry-after-ms": "250"})) == 0.25
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": date}, now=now.timestamp() + 60) == 0.0


def test_retry_after_absent_or_garbage_is_none() -> None:
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "-3"})) == 0.0


# --- HTTP status + body -------------------------------------------------------------------


def test_recorded_anthropic_529_is_overloaded_and_retryable() -> None:
    raw = (ERRORS / "anthropic-http-529-overloaded.body.json").read_bytes()
    err = map_http_error(529, raw, httpx.Headers({"x-should-retry": "true"}))
    assert (err.code, err.status, err.retryable) == ("overloaded", 529, True)
    assert "Overloaded" in err.message


def test_recorded_gemini_429_carries_retry_delay_from_body() -> None:
    raw = (ERRORS / "gemini-http-429-retry-info.body.json").read_bytes()
    err = map_http_error(429, raw, httpx.Headers({}))
    assert (err.code, err.retryable, err.retry_after) == ("rate_limited", True, 34.4)


@pytest.mark.parametrize(
    "name",
    ["openai-http-400-null-code.body.json", "openai-http-400-unsupported-parameter.body.json"],
)
def test_recorded_openai_400_is_bad_request_not_retryable(name: str) -> None:
    err = map_http_error(400, (ERRORS / name).read_bytes(), httpx.Headers({}))
    assert (err.code, err.status, err.retryable) == ("bad_request", 400, False)
    assert "Unsupported parameter" in err.message


def _openai(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return body({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _anthropic(type_: str, message: str) -> bytes:
    return body({"type": "error", "error": {"type": type_, "message": message}})


@pytest.mark.parametrize(
    ("status", "raw", "code", "retryable"),
    [
        (429, _openai("Rate limit reached", "requests", "rate_limit_exceeded"), "rate_limited",
         True),
        (429, _openai("You exceeded your quota", "insufficient_quota", "insufficient_quota"),
         "rate_limited", False),
        (429, _anthropic("rate_limit_error", "Number of requests exceeded"), "rate_limited", True),
        (529, b"", "overloaded", True),
        (503, body({"error": {"code": 503, "message": "The model is overloaded. Please try again",
                              "status": "UNAVAILABLE"}}), "overloaded", True),
        (503, b"Service Unavailable", "provider_error", True),
        (500, _anthropic("api_error", "Internal server error"), "provider_error", True),
        (502, b"<html>Bad Gateway</html>", "provider_error", True),
        (401, _openai("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
         "auth", False),
        (403, _anthropic("permission_error", "no access"), "auth", False),
        (404, _anthropic("not_found_error", "model: claude-nope"), "bad_request", False),
        (422, body({"detail": "unprocessable"}), "bad_request", False),
        (400, _openai("This model's maximum context length is 128000 tokens. However, your "
                      "messages resulted in 130000 tokens.", code="context_length_exceeded"),
         "context_length", False),
        (400, _anthropic("invalid_request_error", "prompt is too long: 210000 tokens > 200000 "
                         "maximum"), "context_length", False),
        (400, _openai("Please reduce the length of the messages or completion.",
                      code="context_length_exceeded"), "context_length", False),
        (400, _openai("The response was filtered due to the prompt triggering Azure OpenAI's "
                      "content management policy.", code="content_filter"), "content_filter",
         False),
        (400, body({"error": "invalid model name"}), "bad_request", False),  # Ollama shape
        (408, b"", "timeout", True),
        (409, b"", "provider_error", True),
    ],
)
def test_status_and_body_map_to_codes(status: int, raw: bytes, code: str, retryable: bool) -> None:
    err = map_http_error(status, raw, httpx.Headers({}))
    assert (err.code, err.status, err.retryable) == (code, status, retryable)


def test_retry_after_header_travels_with_the_error() -> None:
    err = map_http_error(429, b"", httpx.Headers({"retry-after": "12"}))
    assert (err.code, err.retry_after) == ("rate_limited", 12.0)


def test_x_should_retry_overrides_the_default() -> None:
    assert map_http_error(500, b"", httpx.Headers({"x-should-retry": "false"})).retryable is False
    assert map_http_error(400, b"", httpx.Headers({"x-should-retry": "true"})).retryable is True


def test_redirect_is_a_configuration_problem() -> None:
    err = map_http_error(301, b"", httpx.Headers({"location": "https://x"}))
    assert (err.code, err.retryable) == ("protocol_error", False)
    assert "base_url" in err.message


def test_in_stream_error_objects() -> None:
    err = map_error_payload({"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "Overloaded"}})
    assert (err.code, err.retryable, err.status) == ("overloaded", True, None)
    groq = {"error": {"message": "Tool call validation failed", "type": "invalid_request_error",
                      "code": "tool_use_failed", "status_code": 400}}
    err = map_error_payload(groq)
    assert (err.code, err.status, err.retryable) == ("bad_request", 400, False)
    err = map_error_payload({"error": {"code": 502, "message": "Upstream error"}})
    assert (err.code, err.status, err.retryable) == ("provider_error", 502, True)
    err = map_error_payload({"error": "an error was encountered while running the model"})
    assert err.code == "provider_error"


def test_messages_redact_secrets_and_never_show_headers() -> None:
    key = "sk-live-SECRET123456"
    err = map_http_error(401, _openai(f"Incorrect API key provided: {key}"),
                         httpx.Headers({"authorization": f"Bearer {key}"}), secrets=[key])
    assert key not in err.message and key not in repr(err) and "Bearer" not in err.message
    assert redact(f"a {key} b", [key, ""]) == "a *** b"
    assert redact("Token limit", ["k"]) == "Token limit"


# --- httpx exceptions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (httpx.ConnectTimeout("timed out"), "timeout", "connect timeout"),
        (httpx.ReadTimeout("timed out"), "timeout", "read timeout"),
        (httpx.WriteTimeout("timed out"), "timeout", "write timeout"),
        (httpx.PoolTimeout("timed out"), "timeout", "pool timeout"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection", "cannot connect"),
        (httpx.ReadError("Connection reset by peer"), "connection", "network error"),
        (httpx.RemoteProtocolError("peer closed connection without sending complete message "
                                   "body (incomplete chunked read)"), "connection", "closed"),
        (httpx.RemoteProtocolError("illegal header line"), "protocol_error", "malformed"),
    ],
)
def test_transport_errors_map_to_codes(exc: httpx.HTTPError, code: str, needle: str) -> None:
    err = map_transport_error(exc, during="body")
    assert err.code == code and err.retryable
    assert needle in err.message


def test_invalid_base_url_is_not_retryable() -> None:
    err = map_transport_error(httpx.UnsupportedProtocol("Request URL has an unsupported protocol"))
    assert (err.code, err.retryable) == ("connection", False)


# --- open_stream over respx ---------------------------------------------------------------


async def test_open_stream_raises_mapped_error_and_closes_the_response() -> None:
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        route = mock.post(URL).respond(
            429, content=_openai("slow down", "requests", "rate_limit_exceeded"),
            headers={"retry-after-ms": "1500"},
        )
        with pytest.raises(ProviderError) as info:
            await open_stream(client, URL, content=b"{}", headers={"authorization": "Bearer k"})
        assert route.called
        err = info.value
        assert (err.code, err.status, err.retry_after) == ("rate_limited", 429, 1.5)
        response = route.calls.last.response
        assert response.is_closed


async def test_open_stream_maps_connect_errors() -> None:
    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(ProviderError) as info:
            await open_stream(client, URL, content=b"{}", headers={})
        assert info.value.code == "connection"


async def test_aiter_body_maps_a_cut_mid_body() -> None:
    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: {}\n\n"
            raise httpx.RemoteProtocolError("peer closed connection without sending complete "
                                            "message body (incomplete chunked read)")

    async with respx.mock() as mock, httpx.AsyncClient() as client:
        mock.post(URL).respond(200, stream=Cut())
        response = await open_stream(client, URL, content=b"{}", headers={})
        got: list[bytes] = []
        with pytest.raises(ProviderError) as info:
            async for chunk in aiter_body(response):
                got.append(chunk)
        await response.aclose()
        assert got == [b"data: {}\n\n"]
        assert info.value.code == "connection" and "mid-body" in info.value.message


# --- keep-alive over a real socket --------------------------------------------------------


async def _serve(tail: bytes) -> tuple[asyncio.Server, list[int], Callable[[], str]]:
    """A tiny HTTP/1.1 keep-alive server: every POST gets a chunked SSE body whose terminal
    marker comes in one chunk and `tail` in a later one. Counts accepted connections."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for part in (b"data: [DONE]\n\n", tail):
                    if part:
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, accepted, lambda: f"http://127.0.0.1:{port}/v1/chat/completions"


async def _one_call(client: httpx.AsyncClient, url: str, *, drain_after: bool) -> bool:
    response = await open_stream(client, url, content=b"{}", headers={})
    try:
        chunks = aiter_body(response)
        async for chunk in chunks:
            if b"[DONE]" in chunk:
                break
        return await drain(chunks) if drain_after else False
    finally:
        await response.aclose()


@pytest.mark.parametrize(("drain_after", "connections"), [(True, 1), (False, 3)])
async def test_draining_after_the_marker_keeps_the_connection(
    drain_after: bool, connections: int
) -> None:
    server, accepted, url = await _serve(b": trailing comment\n\n")
    async with server, httpx.AsyncClient() as client:
        for _ in range(3):
            clean = await _one_call(client, url(), drain_after=drain_after)
            assert clean is drain_after
        assert len(accepted) == connections


async def test_drain_gives_up_on_an_endless_tail() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024

    assert await drain(endless(), max_bytes=10_000) is False


def test_error_in_text_finds_json_error_bodies_only() -> None:
    assert error_in_text(b'\n{"error": {"code": 503, "message": "overloaded"}}\n') == {
        "error": {"code": 503, "message": "overloaded"}}
    assert error_in_text(b'{"choices": []}') is None
    assert error_in_text(b"{broken") is None
    assert error_in_text(b"") is None


def test_quota_from_openai_wire_headers() -> None:
    quota = parse_quota(httpx.Headers({
        "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1m0.5s", "x-ratelimit-reset-tokens": "20ms"}))
    assert quota is not None
    assert (quota.remaining_requests, quota.remaining_tokens) == (59, 149984)
    assert quota.reset_requests_s == pytest.approx(60.5)
    assert quota.reset_tokens_s == pytest.approx(0.02)


def test_quota_from_anthropic_headers() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    quota = parse_quota({
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:30Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:05+00:00"}, now=now.timestamp())
    assert quota is not None
    assert (quota.remaining_requests, quota.remaining_tokens) == (3, 0)
    assert (quota.reset_requests_s, quota.reset_tokens_s) == (30.0, 5.0)


def test_quota_from_anthropic_input_and_output_token_headers_alone() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    quota = parse_quota({
        "anthropic-ratelimit-input-tokens-remaining": "40000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:02Z",
        "anthropic-ratelimit-output-tokens-remaining": "120",
        "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:07Z"}, now=now.timestamp())
    assert quota is not None
    assert (quota.remaining_input_tokens, quota.remaining_output_tokens) == (40000, 120)
    assert quota.remaining_tokens is None and quota.remaining_requests is None
    assert quota.reset_tokens_s == 7.0  # the later of the two


def test_no_quota_headers_no_quota_and_garbage_is_unknown() -> None:
    assert parse_quota(httpx.Headers({"content-type": "text/event-stream"})) is None
    quota = parse_quota(httpx.Headers({"x-ratelimit-remaining-requests": "many",
                                       "x-ratelimit-reset-requests": "soon"}))
    assert quota is not None
    assert (quota.remaining_requests, quota.reset_requests_s) == (None, None)
