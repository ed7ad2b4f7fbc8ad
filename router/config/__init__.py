"""Config v1: the YAML schema (`schema`), loading with `${VAR}` interpolation and discovery
(`loading`), catalog resolution (`catalog`) and the wording of config errors (`errors`).

The names most callers need are re-exported here.
"""

from router.config.files import CONFIG_ENV, EMBEDDED_DIR, discover_config_path, embedded_path
from router.config.loading import load_config, parse_config
from router.config.schema import (
    ApiKeyConfig,
    BreakerConfig,
    BudgetConfig,
    Capability,
    Defaults,
    Deployment,
    DeploymentConfig,
    HedgeConfig,
    LatencyPrior,
    LoadedConfig,
    Prefer,
    Price,
    ProviderConfig,
    ProviderKind,
    ResilienceConfig,
    ResumePolicy,
    RetryConfig,
    RouterConfig,
    ServerConfig,
    StateConfig,
    TaskConfig,
    TimeoutsConfig,
)

__all__ = [
    "CONFIG_ENV", "EMBEDDED_DIR", "ApiKeyConfig", "BreakerConfig", "BudgetConfig", "Capability",
    "Defaults", "Deployment", "DeploymentConfig", "HedgeConfig", "LatencyPrior", "LoadedConfig",
    "Prefer", "Price", "ProviderConfig", "ProviderKind", "ResilienceConfig", "ResumePolicy",
    "RetryConfig", "RouterConfig", "ServerConfig", "StateConfig", "TaskConfig",
    "TimeoutsConfig", "discover_config_path", "embedded_path", "load_config", "parse_config",
]
