"""Shared helpers for the provider tests: the recorded transcripts, response bodies delivered
in given pieces, re-chunkings, and the deltas an adapter yields, collected and summarized.

Imported as `tests.providers.replay` (the suite runs with `--import-mode=importlib`)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import respx

from providers.base import (
    Delta,
    FinishDelta,
    Provider,
    ProviderError,
    ProviderRequest,
    ProviderSettings,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)

TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"


def load_expected(filename: str = "expected.json") -> dict[str, Any]:
    """One of the transcripts' expected-values files, keyed by transcript path."""
    result: dict[str, Any] = json.loads((TRANSCRIPTS / filename).read_text())
    return result


def cases(expected: dict[str, Any], wire_format: str) -> list[str]:
    """The transcripts of one wire format, sorted."""
    return sorted(k for k, v in expected.items() if v["wire_format"] == wire_format)


class Chunks(httpx.AsyncByteStream):
    """A response body delivered in the given pieces; records how far it was read."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.read_to_end = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        self.read_to_end = True

    async def aclose(self) -> None:
        self.closed = True


def chunkings(data: bytes, seed: int, *, cuts: int = 40, step: int = 1) -> dict[str, list[bytes]]:
    """`data` whole, cut at up to `cuts` seeded random places, and in `step`-byte pieces."""
    rng = random.Random(seed)
    at = sorted(rng.sample(range(1, len(data)), min(cuts, len(data) - 1)))
    return {
        "whole": [data],
        "random": [data[a:b] for a, b in itertools.pairwise([0, *at, len(data)])],
        "bytes": [data[i : i + step] for i in range(0, len(data), step)],
    }


def joined(deltas: Iterable[Delta], kind: type[TextDelta] | type[ReasoningDelta] = TextDelta,
           ) -> str:
    """The text of every delta of `kind`, in order."""
    return "".join(d.text for d in deltas if isinstance(d, kind))


@dataclass
class Result:
    """What one stream yielded: its deltas and the `ProviderError` that ended it, if any."""

    deltas: list[Delta] = field(default_factory=list)
    error: ProviderError | None = None

    def joined(self, kind: type[TextDelta] | type[ReasoningDelta]) -> str:
        return joined(self.deltas, kind)

    @property
    def text(self) -> str:
        return joined(self.deltas, TextDelta)

    @property
    def reasoning(self) -> str:
        return joined(self.deltas, ReasoningDelta)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Calls by our index: id and name from the first fragment, arguments parsed."""
        calls: dict[int, dict[str, Any]] = {}
        for d in self.deltas:
            if isinstance(d, ToolCallDelta):
                call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
                call["arguments"] += d.arguments
        return [{**c, "arguments": self.parse_arguments(c["arguments"])} for c in calls.values()]

    def parse_arguments(self, text: str) -> Any:
        """Strict: an empty argument text is invalid JSON and fails the test."""
        return json.loads(text)

    @property
    def usage(self) -> UsageDelta | None:
        """The last usage reported."""
        return next((d for d in reversed(self.deltas) if isinstance(d, UsageDelta)), None)

    @property
    def usages(self) -> list[UsageDelta]:
        return [d for d in self.deltas if isinstance(d, UsageDelta)]

    @property
    def finish(self) -> str | None:
        """The first finish reason."""
        return next((d.reason for d in self.deltas if isinstance(d, FinishDelta)), None)

    @property
    def finishes(self) -> list[str]:
        return [d.reason for d in self.deltas if isinstance(d, FinishDelta)]


class LenientResult(Result):
    """A `Result` that reads a call with no argument text as `{}` (as the Anthropic SDK
    reads a `tool_use` block without input)."""

    def parse_arguments(self, text: str) -> Any:
        return json.loads(text or "{}")


async def collect(provider: Provider, request: ProviderRequest, into: Result) -> Result:
    """Drain `provider.stream(request)` into `into`; a `ProviderError` ends it as its error."""
    try:
        async for delta in provider.stream(request):
            into.deltas.append(delta)
    except ProviderError as exc:
        into.error = exc
    return into


class ProviderType(Protocol):
    def __call__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> Provider: ...


async def replay_http(
    provider_type: ProviderType, pieces: list[bytes], *, settings: ProviderSettings,
    request: ProviderRequest, url: str, url_is_prefix: bool = False, status: int = 200,
    headers: dict[str, str] | None = None, result_type: type[Result] = Result,
) -> tuple[Result, Chunks, respx.Route]:
    """Serve `pieces` as the body of the POST to `url` (respx) and collect what a
    `provider_type` adapter on a fresh client streams from it."""
    body = Chunks(pieces)
    async with respx.mock(assert_all_called=False) as mock, httpx.AsyncClient() as client:
        post = mock.post(url__startswith=url) if url_is_prefix else mock.post(url)
        route = post.respond(status, stream=body, headers=headers or {})
        result = await collect(provider_type(settings, client=client), request, result_type())
    return result, body, route


async def replay_every_chunking(
    replay: Callable[[list[bytes]], Awaitable[tuple[Result, Chunks, respx.Route]]],
    pieces_by_label: dict[str, list[bytes]],
) -> Result:
    """Replay every chunking of one stream (from `chunkings`); asserts that none changes a
    single delta or the error, and returns the result of the stream read whole."""
    runs = {label: (await replay(pieces))[0] for label, pieces in pieces_by_label.items()}
    whole = runs["whole"]
    for label, run in runs.items():
        assert run.deltas == whole.deltas, label
        assert (run.error and run.error.code) == (whole.error and whole.error.code), label
    return whole
