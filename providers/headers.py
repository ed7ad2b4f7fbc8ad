"""What a provider's response headers announce: how long to wait (`Retry-After`) and how
much quota is left (OpenAI-wire `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from providers.base import QuotaDelta

__all__ = ["header", "parse_quota", "parse_retry_after"]


# --- Retry-After --------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (preferred, as the SDKs do) or `retry-after`
    (delta-seconds or an HTTP date). None when absent or unparsable; never negative."""
    raw_ms = header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


_QUOTA_HEADERS = (
    # (remaining requests, remaining tokens, requests reset, tokens reset)
    ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
     "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-tokens-remaining",
     "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"),
)
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


_SPLIT_TOKEN_HEADERS = (  # Anthropic's input / output token limits: (remaining, reset)
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)


def parse_quota(headers: Mapping[str, str], *, now: float | None = None) -> QuotaDelta | None:
    """The remaining quota a response announces, or None when it announces none. Resets
    are OpenAI's durations ("1s", "6m0s", "20ms") or Anthropic's RFC 3339 instants; with
    only Anthropic's input/output token limits, the tokens reset at the later of theirs."""
    if "ratelimit" not in "\n".join(headers).lower():  # one scan, no generator
        return None  # the usual answer of a mock or a self-hosted server
    split = [(header(headers, left), header(headers, reset))
             for left, reset in _SPLIT_TOKEN_HEADERS]
    split_resets = [r for r in (_reset_s(reset, now) for _, reset in split) if r is not None]
    groups = ([header(headers, name) for name in names] for names in _QUOTA_HEADERS)
    raw = next((g for g in groups if any(v is not None for v in g)), None)
    if raw is None:
        if all(left is None for left, _ in split):
            return None
        raw = [None] * 4
    tokens_reset = _reset_s(raw[3], now)
    if tokens_reset is None and split_resets:
        tokens_reset = max(split_resets)
    return QuotaDelta(_int(raw[0]), _int(raw[1]), _reset_s(raw[2], now), tokens_reset,
                      _int(split[0][0]), _int(split[1][0]))


def _int(raw: str | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _reset_s(raw: str | None, now: float | None) -> float | None:
    if raw is None:
        return None
    parts = _GO_DURATION.findall(raw)
    if parts and "".join(n + u for n, u in parts) == raw.strip():
        return sum(float(n) * _GO_UNIT_S[u] for n, u in parts)
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by its lower-case name, from any mapping of headers."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # plain dicts are case-sensitive
        # (httpx's and aiohttp's headers are not)
        return next((v for k, v in headers.items() if k.lower() == name), None)
    return value
