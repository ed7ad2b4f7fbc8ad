"""A simulated provider: deterministic, offline, with realistic timing and injectable faults.

It is the embedded default and the workhorse of the router's tests. The answer to a prompt
is a pure function of the seed and the conversation's first user message (and system
prompt), so a continuation request (a final assistant prefill, or the partial answer
followed by a request to continue) streams exactly the rest of the same answer.

Options (provider `options`, overridden per deployment):
    seed            int    RNG seed (default 0)
    ttft_ms         float  time to first token (default 0)
    tokens_per_s    float  output rate; 0 = as fast as possible (default 0)
    jitter          float  relative jitter on both (default 0)
    output_tokens   int    answer length in tokens (default: 40..120 by prompt)
    reasoning_tokens int   reasoning tokens before the answer (default 0)
    error_rate      float  probability that a call fails before its first token
    error_code      str    code of injected failures (default "overloaded")
    retry_after_s   float  Retry-After of injected failures
    fail_after_tokens int  the stream is cut (protocol_error) after N output tokens
    stall_after_tokens int the stream goes silent after N output tokens
    reject_prefill  bool   a final assistant message is refused with bad_request
    report_usage    bool   report usage at the end (default true)

Behaving like a model (providers/simulated_behaviour.py): with tools offered it calls one
when the conversation calls for it (`tool_choice` auto included), with arguments valid for
the tool's JSON schema, and answers using the tool result on the next turn; with a JSON
`response_format` it streams JSON valid for the schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from providers.base import (
    Delta,
    ErrorCodeName,
    FinishDelta,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
    content_text,
    estimate_tokens,
)
from providers.simulated_behaviour import plan_turn

_WORDS = (
    "the router streams tokens from the fastest healthy deployment while a circuit breaker "
    "watches each provider and opens after repeated failures so that traffic moves to a "
    "fallback until a probe shows the primary has recovered latency budgets decide which "
    "model answers first and cost caps stop a stream before it spends too much every event "
    "carries usage and the final cost so an agent can account for each request"
).split()
_STATUS = {"rate_limited": 429, "overloaded": 529, "provider_error": 500, "auth": 401,
           "bad_request": 400, "context_length": 400, "content_filter": 400, "timeout": 408}
_STALL_S = 3600.0



def _answer(seed: int, prompt: str, n_tokens: int) -> list[str]:
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    words: list[str] = []
    sentence = 0
    for i in range(n_tokens):
        word = rng.choice(_WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        last = i == n_tokens - 1
        if last or (sentence > 6 and rng.random() < 0.2):
            words.append(word + ".")
            sentence = 0
        else:
            words.append(word)
    # Each token is a word with the space that follows it, so pieces concatenate exactly.
    return [w + (" " if i < n_tokens - 1 else "") for i, w in enumerate(words)]


class SimulatedProvider:
    """Streams a deterministic answer with configurable timing and faults."""

    def __init__(self, settings: ProviderSettings, client: object | None = None) -> None:
        self.settings = settings
        self._rng = random.Random(int(settings.options.get("seed", 0)))
        self.calls = 0
        self.open_streams = 0

    async def aclose(self) -> None:
        return None

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        options = {**self.settings.options, **request.options}
        return self._stream(request, options)

    async def _stream(
        self, request: ProviderRequest, o: Mapping[str, Any]
    ) -> AsyncIterator[Delta]:
        self.calls += 1
        self.open_streams += 1
        try:
            async for delta in self._generate(request, o):
                yield delta
        finally:
            self.open_streams -= 1

    def _jittered(self, value: float, jitter: float) -> float:
        if jitter <= 0 or value <= 0:
            return value
        return max(0.0, value * (1 + self._rng.uniform(-jitter, jitter)))

    async def _generate(
        self, request: ProviderRequest, o: Mapping[str, Any]
    ) -> AsyncIterator[Delta]:
        messages = list(request.messages)
        prompt = (request.system or "") + "\x00" + next(
            (content_text(m.get("content")) for m in messages if m.get("role") == "user"), ""
        )
        input_tokens = estimate_tokens((request.system or "") + "".join(
            content_text(m.get("content")) for m in messages)) + 4 * len(messages)
        jitter = float(o.get("jitter", 0))
        if messages and messages[-1].get("role") == "assistant" and o.get("reject_prefill"):
            raise ProviderError("bad_request", "assistant prefill is not supported", status=400,
                                retryable=False)
        if self._rng.random() < float(o.get("error_rate", 0)):
            code = cast(ErrorCodeName, o.get("error_code", "overloaded"))
            raise ProviderError(code, f"simulated {code}", status=_STATUS.get(code),
                                retry_after=o.get("retry_after_s"))
        ttft = self._jittered(float(o.get("ttft_ms", 0)), jitter) / 1000
        if ttft:
            await asyncio.sleep(ttft)
        tps = float(o.get("tokens_per_s", 0))
        n_default = 40 + int(hashlib.blake2b(prompt.encode(), digest_size=2).hexdigest(), 16) % 81
        n_tokens = int(o.get("output_tokens", n_default))
        if request.max_tokens is not None:
            n_tokens = min(n_tokens, request.max_tokens)
        answer = _answer(int(o.get("seed", 0)), prompt, int(o.get("output_tokens", n_default)))
        start = _continuation_start(messages, answer)
        if start is not None:
            answer = _drop_chars(answer, start)
        pieces = answer[:n_tokens]
        finish = "length" if n_tokens < len(answer) else "stop"
        emitted = 0
        fail_after = o.get("fail_after_tokens")
        stall_after = o.get("stall_after_tokens")
        n_reasoning = int(o.get("reasoning_tokens", 0)) if start is None else 0
        for i in range(n_reasoning):
            yield ReasoningDelta(f"step {i + 1} ")
            emitted += 1
            await self._pace(tps, jitter)
        if request.tools or request.response_format is not None:
            turn = plan_turn(request, int(o.get("seed", 0)))
            if turn.kind == "tool":
                for i, part in enumerate(_split(turn.payload, 2)):
                    yield ToolCallDelta(0, f"call_{self.calls}" if i == 0 else None,
                                        turn.tool if i == 0 else None, part)
                    emitted += 1
                pieces, finish = [], "tool_calls"
            elif turn.kind == "json":
                answer = _split(turn.payload, max(1, len(turn.payload) // 4))
                pieces = answer[:n_tokens]
                finish = "length" if n_tokens < len(answer) else "stop"
            elif turn.payload:
                pieces = [turn.payload, *pieces]
        for piece in pieces:
            if fail_after is not None and emitted - n_reasoning >= int(fail_after):
                raise ProviderError("protocol_error", "simulated stream cut (no terminal marker)")
            if stall_after is not None and emitted - n_reasoning >= int(stall_after):
                await asyncio.sleep(_STALL_S)
            yield TextDelta(piece)
            emitted += 1
            await self._pace(tps, jitter)
        if o.get("report_usage", True):
            yield UsageDelta(input_tokens=input_tokens, output_tokens=emitted,
                             reasoning_tokens=n_reasoning)
        yield FinishDelta("tool_calls" if finish == "tool_calls" else
                          ("length" if finish == "length" else "stop"))

    async def _pace(self, tps: float, jitter: float) -> None:
        if tps > 0:
            await asyncio.sleep(self._jittered(1.0 / tps, jitter))


def _continuation_start(messages: list[Mapping[str, Any]], answer: list[str]) -> int | None:
    """How many characters of `answer` a continuation request already has: the partial
    answer sent as a final assistant message (prefill) or as the assistant message before a
    final user turn. None when the request is not a continuation of this answer."""
    partial: str | None = None
    if messages and messages[-1].get("role") == "assistant":
        partial = content_text(messages[-1].get("content"))
    elif len(messages) >= 2 and messages[-2].get("role") == "assistant":
        partial = content_text(messages[-2].get("content"))
    if partial and "".join(answer).startswith(partial):
        return len(partial)
    return None


def _drop_chars(pieces: list[str], n: int) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if n >= len(piece):
            n -= len(piece)
            continue
        out.append(piece[n:])
        n = 0
    return out


def _split(text: str, n: int) -> list[str]:
    """`text` in `n` pieces of about equal length (fewer when it is shorter)."""
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
