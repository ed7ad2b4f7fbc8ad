"""The model catalog (`config/catalog.yaml`): prices, context windows, capabilities and
latency priors of real models, and the OpenAI-compatible vendor table. Deployments that
name a catalog entry (or whose model is one) inherit what they do not state."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.base import supported_params
from router.config.errors import format_validation_error
from router.config.files import embedded_path, read_yaml
from router.config.schema import Capability, Deployment, LatencyPrior, Price, RouterConfig
from router.errors import ConfigError

DEFAULT_PRIOR = LatencyPrior(ttft_ms=1000, tokens_per_s=50)
DEFAULT_CONTEXT = 128_000


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)
    provider: str
    price: Price
    context_window: int = Field(gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    capabilities: list[Capability] = Field(default_factory=list)
    latency_prior: LatencyPrior | None = None
    quality: float = Field(default=0.5, ge=0, le=1)


class Vendor(BaseModel):
    """An OpenAI-compatible endpoint: a row of data, not a class."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)
    base_url: str
    api_key_env: str | None = None
    include_usage: bool = True
    options: dict[str, Any] = Field(default_factory=dict)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)
    prices_as_of: str
    currency: str = "USD"
    models: dict[str, CatalogModel]
    vendors: dict[str, Vendor] = Field(default_factory=dict)


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    path = embedded_path("catalog.yaml")
    data = read_yaml(path)
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data, Catalog)) from None


def resolve_deployments(config: RouterConfig, source: str) -> Mapping[str, Deployment]:
    catalog: Catalog | None = None
    out: dict[str, Deployment] = {}
    for i, dep in enumerate(config.deployments):
        entry: CatalogModel | None = None
        needs_catalog = dep.catalog is not None or dep.price is None
        if needs_catalog:
            catalog = catalog or load_catalog()
            key = dep.catalog or dep.model
            entry = catalog.models.get(key)
            if entry is None:
                field = "catalog" if dep.catalog else "price"
                raise ConfigError(
                    f"{source}: deployments[{i}].{field}: no catalog entry {key!r} "
                    f"(expected a price here, or a model of config/catalog.yaml such as "
                    f"{', '.join(list(catalog.models)[:4])})"
                )
        price = dep.price or (entry.price if entry else None)
        assert price is not None  # guaranteed by the lookup above
        caps = dep.capabilities if dep.capabilities is not None else (
            entry.capabilities if entry else []
        )
        out[dep.id] = Deployment(
            id=dep.id,
            provider=dep.provider,
            provider_kind=config.providers[dep.provider].kind,
            model=dep.model,
            price=price,
            context_window=dep.context_window
            or (entry.context_window if entry else DEFAULT_CONTEXT),
            max_output_tokens=dep.max_output_tokens or (entry.max_output_tokens if entry else None),
            default_max_tokens=dep.default_max_tokens or config.defaults.max_tokens,
            latency_prior=dep.latency_prior
            or (entry.latency_prior if entry and entry.latency_prior else DEFAULT_PRIOR),
            quality=dep.quality if dep.quality is not None else (entry.quality if entry else 0.5),
            capabilities=frozenset(caps),
            options=dep.options,
            rpm=dep.rpm,
            tpm=dep.tpm,
            params=supported_params(config.providers[dep.provider].kind,
                                    {**config.providers[dep.provider].options, **dep.options}),
        )
    return out
