"""Config v1: the YAML schema, `${VAR}` interpolation, discovery and catalog resolution.

Every problem is a `ConfigError` naming the file, the path inside it
(`tasks.summarize.candidates[1]`) and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from router.budgets.manager import BudgetConfig, check_budget_references
from router.config.errors import format_validation_error
from router.errors import ConfigError
from router.state.store import StateConfig

Capability = Literal["tools", "reasoning", "prefill", "vision"]
Prefer = Literal["cost", "latency", "quality", "balanced"]
ProviderKind = Literal["simulated", "anthropic", "openai", "openai_compatible", "ollama", "gemini"]
ResumePolicy = Literal["continue", "restart", "fail"]

CONFIG_ENV = "LLM_ROUTER_CONFIG"
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Price(_Strict):
    input_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float = Field(ge=0)


class LatencyPrior(_Strict):
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)


class ProviderConfig(_Strict):
    kind: ProviderKind
    base_url: str | None = None
    api_key: SecretStr | None = None
    # The environment variable the key comes from: named in errors when it is unset.
    api_key_env: str | None = None
    vendor: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    read_timeout_s: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class DeploymentConfig(_Strict):
    id: str = Field(min_length=1)
    provider: str
    model: str
    catalog: str | None = None
    price: Price | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    default_max_tokens: int | None = Field(default=None, gt=0)
    latency_prior: LatencyPrior | None = None
    quality: float | None = Field(default=None, ge=0, le=1)
    capabilities: list[Capability] | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class HedgeConfig(_Strict):
    enabled: bool = False
    after_ms: float | Literal["p95"] = "p95"


class TaskConfig(_Strict):
    candidates: list[str] = Field(min_length=1)
    prefer: Prefer | None = None
    max_ttft_ms: float | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    expected_output_tokens: int | None = Field(default=None, gt=0)
    requires: list[Capability] = Field(default_factory=list)
    system: str | None = None
    hedge: HedgeConfig | None = None
    description: str | None = None


class Defaults(_Strict):
    task: str | None = None
    prefer: Prefer = "balanced"
    expected_output_tokens: int = Field(default=500, gt=0)
    max_tokens: int = Field(default=1024, gt=0)


class RetryConfig(_Strict):
    attempts: int = Field(default=3, ge=1)
    initial_backoff_ms: float = Field(default=200, ge=0)
    max_backoff_ms: float = Field(default=5000, ge=0)
    honor_retry_after: bool = True
    budget_ms: float = Field(default=30000, ge=0)


class BreakerConfig(_Strict):
    fail_max: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=30, gt=0)


class TimeoutsConfig(_Strict):
    connect_s: float = Field(default=5, gt=0)
    ttft_s: float = Field(default=15, gt=0)
    idle_s: float = Field(default=30, gt=0)
    total_s: float = Field(default=600, gt=0)


class ResilienceConfig(_Strict):
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    resume: ResumePolicy = "continue"
    hedge: HedgeConfig = Field(default_factory=HedgeConfig)


class ApiKeyConfig(_Strict):
    """One server API key, stored as the SHA-256 hex of the key (never the key itself)."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scope: str | None = None  # budget scope (`metadata["key"]`); defaults to `name`
    rate_per_min: float | None = Field(default=None, gt=0)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    heartbeat_s: float = Field(default=15, gt=0)
    retention_s: float = Field(default=300, ge=0)
    max_log_events: int = Field(default=20000, ge=16)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    log_prompts: bool = False
    shutdown_grace_s: float = Field(default=10, ge=0)


class RouterConfig(_Strict):
    version: Literal[1] = 1
    providers: dict[str, ProviderConfig]
    deployments: list[DeploymentConfig] = Field(min_length=1)
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    state: StateConfig = Field(default_factory=StateConfig)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment with every catalog default resolved: what the router works with."""

    id: str
    provider: str
    provider_kind: str
    model: str
    price: Price
    context_window: int
    max_output_tokens: int | None
    default_max_tokens: int
    latency_prior: LatencyPrior
    quality: float
    capabilities: frozenset[str]
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config, its source, and its deployments resolved against the catalog."""

    source: str
    config: RouterConfig
    deployments: Mapping[str, Deployment]


# --- interpolation --------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "api_key" and isinstance(value, str):
                whole = _VAR.fullmatch(value.strip())
                if whole and whole.group(2) is None:
                    # A key from the environment: remember which variable, so a missing key
                    # is reported by name when the provider is used.
                    out["api_key_env"] = whole.group(1)
                    if whole.group(1) in env:
                        out["api_key"] = env[whole.group(1)]
                    continue
            out[key] = _interpolate(value, child, env, where)
        return out
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, where) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def substitute(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where}: {path}: environment variable {name} is not set "
                f"(expected it set, or a default: ${{{name}:-value}})"
            )

        return _VAR.sub(substitute, node)
    return node


# --- loading --------------------------------------------------------------------------------


def discover_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path, then `$LLM_ROUTER_CONFIG`, then `./router.yaml`, then the embedded
    default."""
    if explicit is not None:
        return Path(explicit)
    env_path = os.environ.get(CONFIG_ENV)
    if env_path:
        return Path(env_path)
    local = Path("router.yaml")
    if local.is_file():
        return local
    return embedded_path("default.yaml")


def embedded_path(name: str) -> Path:
    source_tree = EMBEDDED_DIR / name
    if source_tree.is_file():
        return source_tree
    from importlib.resources import files

    return Path(str(files("router._config") / name))


def _read_yaml(path: Path) -> Any:
    import yaml  # ~12 ms: loaded when a config is read, not by `import router`

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Load, interpolate, validate and resolve a config file (discovered if `path` is None)."""
    file = discover_config_path(path)
    data = _read_yaml(file)
    return parse_config(data, str(file), env)


def parse_config(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> LoadedConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    data = _interpolate(data, "", os.environ if env is None else env, source)
    try:
        config = RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data, RouterConfig)) from None
    _check_references(config, source)
    from router.config.catalog import resolve_deployments

    return LoadedConfig(source, config, resolve_deployments(config, source))


# Wire protocols whose endpoints always need a key (openai_compatible depends on the vendor).
_KEYED_KINDS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY",
                "gemini": "GEMINI_API_KEY"}


def _check_references(config: RouterConfig, source: str) -> None:
    for name, prov in config.providers.items():
        env_name = _KEYED_KINDS.get(prov.kind)
        if env_name and prov.api_key is None and prov.api_key_env is None:
            raise ConfigError(
                f"{source}: providers.{name}.api_key: required for kind {prov.kind} "
                f"(expected e.g. api_key: ${{{env_name}}})"
            )
    ids: dict[str, int] = {}
    for i, dep in enumerate(config.deployments):
        if dep.id in ids:
            raise ConfigError(
                f"{source}: deployments[{i}].id: duplicate id {dep.id!r} "
                f"(already used by deployments[{ids[dep.id]}])"
            )
        ids[dep.id] = i
        if dep.provider not in config.providers:
            raise ConfigError(
                f"{source}: deployments[{i}].provider: unknown provider {dep.provider!r} "
                f"(expected one of: {', '.join(sorted(config.providers)) or 'none defined'})"
            )
    for name, task in config.tasks.items():
        for j, cand in enumerate(task.candidates):
            if cand not in ids:
                raise ConfigError(
                    f"{source}: tasks.{name}.candidates[{j}]: unknown deployment {cand!r} "
                    f"(expected one of: {', '.join(ids)})"
                )
    check_budget_references(config, source)
    default_task = config.defaults.task
    if default_task is not None and default_task not in config.tasks:
        raise ConfigError(
            f"{source}: defaults.task: unknown task {default_task!r} "
            f"(expected one of: {', '.join(config.tasks) or 'no tasks defined'})"
        )
