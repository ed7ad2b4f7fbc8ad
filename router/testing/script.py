"""Scripted responses for the loopback provider server (`router.testing`): `Reply` (what
to stream, how fast, and which fault to inject) and `ToolCall`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["ERROR_KINDS", "Fault", "Finish", "Reply", "ToolCall", "default_error_kind"]

Fault = Literal["reset", "no_response", "cut", "stall", "malformed", "no_terminal",
                "no_finish", "unterminated", "stream_error"]
Finish = Literal["stop", "length", "tool_calls", "content_filter"]
ERROR_KINDS = frozenset({
    "rate_limited", "server_error", "unavailable", "overloaded", "auth",
    "context_length", "content_filter", "bad_request", "not_found",
})


def default_error_kind(status: int) -> str:
    """The error body shape that goes with an HTTP status."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 503:
        return "unavailable"
    if status == 529:
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "bad_request"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A scripted tool call; each protocol serializes `arguments` its own way."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted response. Content is sent as one chunk per piece of `reasoning`, then of
    `text`, then the tool calls (argument fragments count as chunks too).

    `output_tokens`/`reasoning_tokens` default to the number of pieces. `first_token_delay_s`
    delays the first content chunk (headers and preamble go out at once), `token_delay_s`
    paces the rest. Faults act after `fault_after` content chunks; build them with the
    constructors and methods below rather than by hand.
    """

    text: Sequence[str] = ("Hello", " from", " the", " loopback", " server", ".")
    reasoning: Sequence[str] = ()
    tool_calls: Sequence[ToolCall] = ()
    finish: Finish | None = None  # None: tool_calls when there are tool calls, else stop
    input_tokens: int = 12
    cached_input_tokens: int = 0
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    send_usage: bool = True
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    status: int = 200
    error_kind: str | None = None  # body shape for an HTTP error; default from `status`
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    fault_after: int = 0
    keepalive_s: float | None = None  # while stalled, send keep-alive comments/pings

    @property
    def total_reasoning_tokens(self) -> int:
        return len(self.reasoning) if self.reasoning_tokens is None else self.reasoning_tokens

    @property
    def total_output_tokens(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return len(self.text) + len(self.reasoning) + 5 * len(self.tool_calls)

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str, *, reasoning: str = "", token_delay_s: float = 0.0,
                  first_token_delay_s: float = 0.0) -> Reply:
        """Split `text` (and `reasoning`) into word tokens, each keeping its leading space."""
        return cls(text=_words(text), reasoning=_words(reasoning), token_delay_s=token_delay_s,
                   first_token_delay_s=first_token_delay_s)

    @classmethod
    def http_error(cls, status: int, kind: str | None = None, *,
                   retry_after: float | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        """An HTTP error with the protocol's error body. `kind` is one of rate_limited,
        server_error, unavailable, overloaded, auth, context_length, content_filter,
        bad_request, not_found (default: from the status)."""
        kind = kind or default_error_kind(status)
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {sorted(ERROR_KINDS)}")
        return cls(status=status, error_kind=kind, retry_after=retry_after,
                   headers=dict(headers or {}))

    @classmethod
    def rate_limited(cls, retry_after: float | None = None) -> Reply:
        return cls.http_error(429, "rate_limited", retry_after=retry_after)

    @classmethod
    def server_error(cls) -> Reply:
        return cls.http_error(500, "server_error")

    @classmethod
    def unavailable(cls) -> Reply:
        return cls.http_error(503, "unavailable")

    @classmethod
    def overloaded(cls) -> Reply:
        return cls.http_error(529, "overloaded")

    @classmethod
    def unauthorized(cls) -> Reply:
        return cls.http_error(401, "auth")

    @classmethod
    def context_length(cls) -> Reply:
        return cls.http_error(400, "context_length")

    @classmethod
    def content_filter(cls) -> Reply:
        return cls.http_error(400, "content_filter")

    @classmethod
    def reset(cls) -> Reply:
        """Read the request, then reset the connection (RST) before any header."""
        return cls(fault="reset")

    @classmethod
    def no_response(cls) -> Reply:
        """Read the request and never answer (until the client hangs up)."""
        return cls(fault="no_response")

    # --- faults on a streamed reply --------------------------------------------------------

    def slow(self, first_token_delay_s: float) -> Reply:
        return replace(self, first_token_delay_s=first_token_delay_s)

    def cut(self, after: int) -> Reply:
        """Close the socket after `after` content chunks, mid-body, without a terminal marker."""
        return replace(self, fault="cut", fault_after=after)

    def stall(self, after: int, keepalive_s: float | None = None) -> Reply:
        """After `after` chunks keep the socket open and send nothing (or only keep-alives)."""
        return replace(self, fault="stall", fault_after=after, keepalive_s=keepalive_s)

    def malformed(self, after: int) -> Reply:
        """Send a chunk of invalid JSON after `after` chunks, then carry on."""
        return replace(self, fault="malformed", fault_after=after)

    def without_terminal(self) -> Reply:
        """End the body cleanly without the terminal marker (`[DONE]`, `message_stop`,
        Ollama's `done` line, Gemini's finishReason chunk)."""
        return replace(self, fault="no_terminal")

    def without_finish(self) -> Reply:
        """End the body cleanly right after the content: no finish reason, no usage, no
        terminal marker (nothing says the answer is complete)."""
        return replace(self, fault="no_finish")

    def unterminated(self) -> Reply:
        """Send everything, but the last event without the blank line that ends it (as in
        the Anthropic SDK's own fixtures), then end the body cleanly."""
        return replace(self, fault="unterminated")

    def stream_error(self, after: int) -> Reply:
        """After `after` chunks send the protocol's in-stream error and end the body."""
        return replace(self, fault="stream_error", fault_after=after)


def _words(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return tuple(w for w in out if w)
