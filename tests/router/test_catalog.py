"""The model catalog: real models of each vendor with dated prices, and deployments that
reference it inherit what they do not state themselves."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from router.config import parse_config
from router.config.catalog import DEFAULT_CONTEXT, DEFAULT_PRIOR, load_catalog
from router.errors import ConfigError

VENDORS = ("anthropic", "openai", "cerebras", "deepseek", "groq", "gemini")


def config(*deployments: dict[str, Any]) -> dict[str, Any]:
    return {"providers": {"sim": {"kind": "simulated"}}, "deployments": list(deployments)}


def test_prices_are_dated() -> None:
    taken = dt.date.fromisoformat(load_catalog().prices_as_of)
    assert dt.date(2025, 1, 1) <= taken <= dt.date.today()
    assert load_catalog().currency == "USD"


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_vendor_has_real_models(vendor: str) -> None:
    models = {k: m for k, m in load_catalog().models.items() if m.provider == vendor}
    assert len(models) >= 2, f"{vendor}: {sorted(models)}"
    for name, m in models.items():
        assert 0 < m.price.input_per_mtok <= m.price.output_per_mtok, name
        if m.price.cached_input_per_mtok is not None:
            assert m.price.cached_input_per_mtok < m.price.input_per_mtok, name
        assert m.context_window >= 8192, name
        assert m.latency_prior is not None, name
        assert "tools" in m.capabilities, name


def test_well_known_list_prices() -> None:
    models = load_catalog().models
    sonnet = models["claude-sonnet-4-5"].price
    assert (sonnet.input_per_mtok, sonnet.cached_input_per_mtok, sonnet.output_per_mtok) == (
        3.0, 0.3, 15.0)
    assert models["claude-sonnet-4-5"].context_window == 200_000


@pytest.mark.parametrize("vendor", ("openai", "cerebras", "deepseek", "groq"))
def test_openai_compatible_vendors_are_rows_with_a_base_url_and_key_variable(
        vendor: str) -> None:
    row = load_catalog().vendors[vendor]
    assert row.base_url.startswith("https://")
    assert row.api_key_env == f"{vendor.upper()}_API_KEY"


def test_a_deployment_inherits_from_its_catalog_model() -> None:
    loaded = parse_config(config({"id": "sonnet", "provider": "sim",
                                  "model": "claude-sonnet-4-5"}), env={})
    d = loaded.deployments["sonnet"]
    entry = load_catalog().models["claude-sonnet-4-5"]
    assert d.price == entry.price
    assert d.context_window == entry.context_window
    assert d.max_output_tokens == entry.max_output_tokens
    assert d.capabilities == frozenset(entry.capabilities)
    assert d.latency_prior == entry.latency_prior
    assert d.quality == entry.quality


def test_catalog_key_lets_a_deployment_use_its_own_model_name() -> None:
    loaded = parse_config(config({"id": "h", "provider": "sim", "model": "my-haiku",
                                  "catalog": "claude-haiku-4-5"}), env={})
    d = loaded.deployments["h"]
    assert d.model == "my-haiku"
    assert d.price == load_catalog().models["claude-haiku-4-5"].price


def test_what_the_deployment_states_wins_over_the_catalog() -> None:
    loaded = parse_config(config({
        "id": "g", "provider": "sim", "model": "gpt-4o-mini",
        "price": {"input_per_mtok": 9, "output_per_mtok": 9}, "context_window": 4096,
        "capabilities": [], "quality": 0.1, "latency_prior": {"ttft_ms": 1, "tokens_per_s": 2},
    }), env={})
    d = loaded.deployments["g"]
    assert (d.price.input_per_mtok, d.context_window, d.capabilities, d.quality) == (
        9, 4096, frozenset(), 0.1)
    assert (d.latency_prior.ttft_ms, d.latency_prior.tokens_per_s) == (1, 2)


def test_a_priced_deployment_outside_the_catalog_gets_defaults() -> None:
    loaded = parse_config(config({"id": "x", "provider": "sim", "model": "local",
                                  "price": {"input_per_mtok": 0, "output_per_mtok": 0}}),
                          env={})
    d = loaded.deployments["x"]
    assert d.context_window == DEFAULT_CONTEXT
    assert d.latency_prior == DEFAULT_PRIOR
    assert d.capabilities == frozenset() and d.quality == 0.5


def test_unknown_catalog_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.catalog: no catalog entry 'x'"):
        parse_config(config({"id": "a", "provider": "sim", "model": "m", "catalog": "x"}),
                     "f.yaml", env={})
