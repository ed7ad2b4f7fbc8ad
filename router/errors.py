"""Typed exceptions raised by `Router.complete()` and by config loading.

One exception class per error-code family; each carries the terminal `error` event.
"""

from __future__ import annotations

from router.events import ErrorCode, ErrorEvent


class RouterError(Exception):
    """Base of every error the router raises."""


class ConfigError(RouterError):
    """Invalid configuration: the message names the file, the path inside it and what was
    expected."""


class StreamError(RouterError):
    """A stream ended with an `error` event; `event` is that event."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(f"{event.code}: {event.message}")
        self.event = event

    @property
    def code(self) -> ErrorCode:
        return self.event.code


class NoRouteError(StreamError):
    """No candidate deployment was eligible (`no_route`)."""


class BudgetExceededError(StreamError):
    """A budget or cost cap refused the request (`budget_exceeded`)."""


class RateLimitError(StreamError):
    """The provider was rate limited or overloaded (`rate_limited`, `overloaded`,
    `circuit_open`)."""


class ProviderTimeoutError(StreamError):
    """The provider did not answer in time (`timeout`)."""


class ProviderConnectionError(StreamError):
    """The provider could not be reached (`connection`)."""


class AuthError(StreamError):
    """Credentials were missing or refused (`auth`)."""


class InvalidRequestError(StreamError):
    """The request was refused as invalid (`bad_request`, `context_length`,
    `content_filter`)."""


class ProviderFailure(StreamError):
    """The provider failed or broke its protocol (`provider_error`, `protocol_error`)."""


class StreamCancelledError(StreamError):
    """The stream was cancelled (`cancelled`)."""


class StateUnavailableError(StreamError):
    """The state store (Redis) did not answer and `state.on_unavailable` is `fail_closed`:
    the request was refused before it started. Retryable."""


_BY_CODE: dict[str, type[StreamError]] = {
    "no_route": NoRouteError,
    "budget_exceeded": BudgetExceededError,
    "rate_limited": RateLimitError,
    "overloaded": RateLimitError,
    "circuit_open": RateLimitError,
    "timeout": ProviderTimeoutError,
    "connection": ProviderConnectionError,
    "auth": AuthError,
    "bad_request": InvalidRequestError,
    "context_length": InvalidRequestError,
    "content_filter": InvalidRequestError,
    "provider_error": ProviderFailure,
    "protocol_error": ProviderFailure,
    "cancelled": StreamCancelledError,
    "state_unavailable": StateUnavailableError,
}


def error_for(event: ErrorEvent) -> StreamError:
    """The typed exception for an `error` event."""
    return _BY_CODE.get(event.code, StreamError)(event)
