"""Prices times tokens. Prices are per million tokens; cached input bills at the cached
price (the input price when none is listed); reasoning tokens bill as output."""

from __future__ import annotations

from router.config.schema import Price
from router.events import Cost, build

PER_TOKEN = 1e-6


def input_cost(price: Price, input_tokens: int, cached_input_tokens: int = 0) -> float:
    cached_price = (
        price.cached_input_per_mtok if price.cached_input_per_mtok is not None
        else price.input_per_mtok
    )
    uncached = max(0, input_tokens - cached_input_tokens)
    return (uncached * price.input_per_mtok + cached_input_tokens * cached_price) * PER_TOKEN


def output_cost(price: Price, output_tokens: int) -> float:
    return output_tokens * price.output_per_mtok * PER_TOKEN


def estimate_cost(price: Price, input_tokens: int, output_tokens: int) -> float:
    return input_cost(price, input_tokens) + output_cost(price, output_tokens)


def add_costs(a: Cost, b: Cost) -> Cost:
    return build(
        Cost, input_usd=a.input_usd + b.input_usd,
        output_usd=a.output_usd + b.output_usd,
        total_usd=a.total_usd + b.total_usd,
    )


def cost_of(price: Price, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> Cost:
    i = input_cost(price, input_tokens, cached_input_tokens)
    o = output_cost(price, output_tokens)
    return build(Cost, input_usd=i, output_usd=o, total_usd=i + o)
