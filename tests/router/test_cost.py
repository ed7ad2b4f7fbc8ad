"""Prices times tokens: per-million prices, cached input at the cached price (or the input
price when none is listed), output (reasoning included) at the output price."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import Price
from router.events import Cost
from router.routing.cost import add_costs, cost_of, estimate_cost, input_cost, output_cost

SONNET = Price(input_per_mtok=3.0, cached_input_per_mtok=0.3, output_per_mtok=15.0)
NO_CACHE_PRICE = Price(input_per_mtok=0.85, output_per_mtok=1.20)


def test_a_million_tokens_cost_the_listed_price() -> None:
    assert input_cost(SONNET, 1_000_000) == pytest.approx(3.0)
    assert output_cost(SONNET, 1_000_000) == pytest.approx(15.0)


def test_cached_input_bills_at_the_cached_price() -> None:
    # 10,000 input tokens of which 8,000 were cached.
    assert input_cost(SONNET, 10_000, 8_000) == pytest.approx(
        (2_000 * 3.0 + 8_000 * 0.3) / 1e6)


def test_cached_input_bills_at_the_input_price_when_no_cached_price_is_listed() -> None:
    assert input_cost(NO_CACHE_PRICE, 10_000, 8_000) == pytest.approx(10_000 * 0.85 / 1e6)


def test_cached_count_above_input_never_bills_negative_uncached_tokens() -> None:
    assert input_cost(SONNET, 100, 500) == pytest.approx(500 * 0.3 / 1e6)


def test_estimate_is_input_plus_output() -> None:
    assert estimate_cost(SONNET, 1200, 300) == pytest.approx((1200 * 3 + 300 * 15) / 1e6)


def test_cost_of_breaks_down_input_and_output() -> None:
    cost = cost_of(SONNET, 1000, 200, 50)
    assert cost.input_usd == pytest.approx((800 * 3.0 + 200 * 0.3) / 1e6)
    assert cost.output_usd == pytest.approx(50 * 15.0 / 1e6)
    assert cost.total_usd == pytest.approx(cost.input_usd + cost.output_usd)
    assert isinstance(cost, Cost)


def test_zero_tokens_cost_nothing() -> None:
    assert cost_of(SONNET, 0, 0, 0) == Cost(input_usd=0.0, output_usd=0.0, total_usd=0.0)


def test_add_costs_adds_each_part() -> None:
    a = cost_of(SONNET, 1000, 0, 10)
    b = cost_of(NO_CACHE_PRICE, 500, 0, 20)
    total = add_costs(a, b)
    assert total.input_usd == pytest.approx(a.input_usd + b.input_usd)
    assert total.output_usd == pytest.approx(a.output_usd + b.output_usd)
    assert total.total_usd == pytest.approx(a.total_usd + b.total_usd)


@given(inp=st.integers(0, 10**7), cached=st.integers(0, 10**7), out=st.integers(0, 10**7),
       pin=st.floats(0, 100), pcached=st.floats(0, 100), pout=st.floats(0, 100))
def test_cost_is_never_negative_and_total_is_the_sum(inp: int, cached: int, out: int,
                                                     pin: float, pcached: float,
                                                     pout: float) -> None:
    price = Price(input_per_mtok=pin, cached_input_per_mtok=pcached, output_per_mtok=pout)
    cost = cost_of(price, inp, min(cached, inp), out)
    assert cost.input_usd >= 0 and cost.output_usd >= 0
    assert cost.total_usd == pytest.approx(cost.input_usd + cost.output_usd)
    # Caching only ever saves money when the cached price is lower.
    if pcached <= pin:
        assert cost.input_usd <= input_cost(price, inp) + 1e-12
