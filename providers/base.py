"""The provider contract: one request in, an async iterator of small normalized deltas out.

A provider translates one `ProviderRequest` into one wire protocol and the wire stream back
into the deltas below. It knows nothing of routing, breakers, budgets or events; it never
retries, falls back, computes cost, logs tokens or reads global config. Failures are raised
as `ProviderError`.

Deltas are plain slotted classes (not pydantic): they are built once per chunk.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import SecretStr

if TYPE_CHECKING:  # httpx costs ~100 ms to import: only adapters that speak HTTP load it.
    import httpx

# Normalized finish reasons a provider may report ("budget"/"cancelled" are the router's own).
ProviderFinish = Literal["stop", "length", "tool_calls", "content_filter"]

ErrorCodeName = Literal[
    "rate_limited",
    "overloaded",
    "timeout",
    "connection",
    "auth",
    "bad_request",
    "context_length",
    "content_filter",
    "provider_error",
    "protocol_error",
]

# Codes that are worth retrying (on the same or another deployment) by default.
RETRYABLE_CODES: frozenset[str] = frozenset(
    {"rate_limited", "overloaded", "timeout", "connection", "provider_error", "protocol_error"}
)
# Client errors: the request itself is at fault; they never count against a breaker.
CLIENT_ERROR_CODES: frozenset[str] = frozenset(
    {"bad_request", "auth", "context_length", "content_filter"}
)


class ProviderError(Exception):
    """A failure of one provider call, already mapped to the router's error codes.

    `retry_after` is in seconds (from `retry-after`, `retry-after-ms` or the body).
    The message must never contain credentials.
    """

    def __init__(
        self,
        code: ErrorCodeName,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCodeName = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable

    def __repr__(self) -> str:
        return (
            f"ProviderError(code={self.code!r}, status={self.status!r}, "
            f"retry_after={self.retry_after!r}, retryable={self.retryable!r}, "
            f"message={self.message!r})"
        )


def content_text(content: Any) -> str:
    """The text of an OpenAI-shaped message content: a string, or the `text` of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def json_default(obj: Any) -> Any:
    """orjson's `default` for request bodies: the read-only mappings and tuples a
    `ProviderRequest` holds become the dicts and lists JSON has."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def estimate_tokens(text: str) -> int:
    """About four characters a token: the estimate used when nothing better is known."""
    return (len(text) + 3) // 4


# --- deltas -------------------------------------------------------------------------------


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of one tool call. `index` is ours: 0, 1, … in order of first appearance.
    `id` and `name` are set on the first fragment of a call; `arguments` is a JSON text
    fragment (adapters that receive an object serialize it once)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class UsageDelta:
    """Cumulative usage so far, normalized: `input_tokens` includes cached input,
    `output_tokens` includes reasoning. A later UsageDelta replaces an earlier one."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class FinishDelta:
    """The provider's terminal marker was seen, with the normalized finish reason."""

    reason: ProviderFinish


@dataclass(slots=True)
class QuotaDelta:
    """What the vendor's rate-limit headers say is left of its window (OpenAI-wire
    `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`); None where a header is absent.
    Sent once, before the first content, when the response carries any of them."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None  # seconds until the request count resets
    reset_tokens_s: float | None = None
    # Anthropic's separate input / output token limits (`anthropic-ratelimit-input-tokens-*`).
    remaining_input_tokens: int | None = None
    remaining_output_tokens: int | None = None


Delta = TextDelta | ReasoningDelta | ToolCallDelta | UsageDelta | FinishDelta | QuotaDelta


# --- request ------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(slots=True)
class ProviderRequest:
    """One call to one model. `messages` are in the OpenAI chat shape (roles system, user,
    assistant, tool; assistant `tool_calls`; tool `tool_call_id`), without the system prompt,
    which is in `system`. A final assistant message is a prefill to continue.

    `tool_choice`: "auto", "none", "required", or the name of one tool.
    `response_format`: OpenAI's shape, `{"type": "json_object"}` or `{"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}`; each adapter maps it to its own wire.
    `params`: optional sampling parameters by our name (`SAMPLING_PARAMS`); routing only
    sends a name to a deployment whose kind lists it in `PROVIDER_PARAMS`.
    `options` are the deployment's provider-specific options from config."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    tools: Sequence[Tool] = ()
    tool_choice: str | None = None
    stop: Sequence[str] = ()
    response_format: Mapping[str, Any] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


# Optional request parameters, by our (OpenAI's) name; `top_k` and `stop_sequences` come from
# the Anthropic-compatible side. Which wire can carry which is data, below, not code in the
# core: a request naming one only routes to deployments whose kind lists it.
SAMPLING_PARAMS = (
    "seed", "top_p", "top_k", "frequency_penalty", "presence_penalty", "user",
    "parallel_tool_calls",
)
PROVIDER_PARAMS: dict[str, frozenset[str]] = {
    "simulated": frozenset(SAMPLING_PARAMS),
    "openai": frozenset({"seed", "top_p", "frequency_penalty", "presence_penalty", "user",
                         "parallel_tool_calls"}),
    # The common subset of OpenAI-compatible vendors; a deployment narrows or widens it
    # with the option `params: [...]`.
    "openai_compatible": frozenset({"seed", "top_p", "frequency_penalty", "presence_penalty",
                                    "user", "parallel_tool_calls"}),
    "openai_responses": frozenset({"top_p", "user", "parallel_tool_calls"}),
    "anthropic": frozenset({"top_p", "top_k", "user", "parallel_tool_calls"}),
    "gemini": frozenset({"seed", "top_p", "top_k", "frequency_penalty", "presence_penalty"}),
    "ollama": frozenset({"seed", "top_p", "top_k", "frequency_penalty", "presence_penalty"}),
}


# Parameters that do not change the answer (`user`: an end-user id for abuse monitoring):
# sent where the wire carries them, but no reason to refuse a route.
ADVISORY_PARAMS = frozenset({"user"})


def supported_params(kind: str, options: Mapping[str, Any]) -> frozenset[str]:
    """The sampling parameters a deployment can honour: its kind's, unless its options
    list them (`params: [seed, top_p]`)."""
    listed = options.get("params")
    if isinstance(listed, Sequence) and not isinstance(listed, str):
        return frozenset(str(p) for p in listed)
    return PROVIDER_PARAMS.get(kind, frozenset())


# --- provider -----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ProviderSettings:
    """What an adapter is built from: one endpoint and its credentials."""

    name: str
    kind: str
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    options: Mapping[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    settings: ProviderSettings

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        """Open the call and yield deltas. Raises `ProviderError`. Closing the iterator
        (`aclose()`) closes the upstream response at once."""
        ...

    async def aclose(self) -> None: ...


# kind -> "module:Class"; imported lazily so `import router` stays fast.
PROVIDER_KINDS: dict[str, str] = {
    "simulated": "providers.simulated:SimulatedProvider",
    "anthropic": "providers.anthropic:AnthropicProvider",
    "openai": "providers.openai:OpenAIProvider",
    "openai_compatible": "providers.openai:OpenAIProvider",
    "openai_responses": "providers.openai_responses:OpenAIResponsesProvider",
    "ollama": "providers.ollama:OllamaProvider",
    "gemini": "providers.gemini:GeminiProvider",
}


def create_provider(
    settings: ProviderSettings, client: httpx.AsyncClient | None = None
) -> Provider:
    """Build the adapter for `settings.kind`. `client` lets tests inject a mocked client."""
    module_name, _, class_name = PROVIDER_KINDS[settings.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(settings, client=client)
    return provider


# Connections one provider's client may hold: a backstop. The router's per-deployment
# admission limit (router.serving.admission) is what bounds the streams in flight.
MAX_CONNECTIONS = 2048


def make_client(settings: ProviderSettings) -> httpx.AsyncClient:
    """One pooled keep-alive client per provider, with timeouts from config: httpx's API
    over aiohttp's pool (`providers.transport`; why, in its docstring)."""
    import httpx

    from providers.transport import PooledClient

    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    return PooledClient(max_connections=MAX_CONNECTIONS, timeout=timeout,
                        headers=dict(settings.headers))
