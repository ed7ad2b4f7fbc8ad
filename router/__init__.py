"""llm-stream-router: route LLM requests across providers by task, latency and cost, and
stream one normalized event schema back.

    import router
    async for ev in router.stream("Qualify this lead: ...", task="qualification"):
        ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from router.config import LoadedConfig, load_config
from router.core import Completion, EventStream, Router
from router.errors import (
    AuthError,
    BudgetExceededError,
    ConfigError,
    InvalidRequestError,
    NoRouteError,
    ProviderConnectionError,
    ProviderFailure,
    ProviderTimeoutError,
    RateLimitError,
    RouterError,
    StateUnavailableError,
    StreamCancelledError,
    StreamError,
)
from router.events import (
    BudgetEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    FallbackEvent,
    ReasoningEvent,
    RetryEvent,
    RouteEvent,
    StartEvent,
    TextEvent,
    ToolCallEvent,
    decode_event,
    encode_event,
)

__all__ = [
    "AuthError",
    "BudgetEvent",
    "BudgetExceededError",
    "Completion",
    "ConfigError",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "EventStream",
    "FallbackEvent",
    "InvalidRequestError",
    "LoadedConfig",
    "NoRouteError",
    "ProviderConnectionError",
    "ProviderFailure",
    "ProviderTimeoutError",
    "RateLimitError",
    "ReasoningEvent",
    "RetryEvent",
    "RouteEvent",
    "Router",
    "RouterError",
    "StartEvent",
    "StateUnavailableError",
    "StreamCancelledError",
    "StreamError",
    "TextEvent",
    "ToolCallEvent",
    "complete",
    "decode_event",
    "default_router",
    "encode_event",
    "load_config",
    "publish",
    "stream",
]


@cache
def default_router() -> Router:
    """The router of the discovered config (explicit path, $LLM_ROUTER_CONFIG,
    ./router.yaml, the embedded default), built on first use."""
    return Router()


def stream(input: str | Sequence[Mapping[str, Any]], **options: Any) -> EventStream:
    """`Router.stream` on the default router."""
    return default_router().stream(input, **options)


def publish(run_id: str, event: Mapping[str, Any] | Event) -> int:
    """`Router.publish` on the default router: an agent's own event into a run channel."""
    return default_router().publish(run_id, event)


async def complete(input: str | Sequence[Mapping[str, Any]], **options: Any) -> Completion:
    """`Router.complete` on the default router."""
    return await default_router().complete(input, **options)
