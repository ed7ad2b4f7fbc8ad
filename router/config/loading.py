"""Loading a config: discovery, YAML, `${VAR}` interpolation, validation and catalog
resolution.

Every problem is a `ConfigError` naming the file, the path inside it
(`tasks.summarize.candidates[1]`) and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from router.config.catalog import resolve_deployments
from router.config.errors import format_validation_error
from router.config.files import discover_config_path, read_yaml
from router.config.schema import LoadedConfig, RouterConfig
from router.errors import ConfigError

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


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Load, interpolate, validate and resolve a config file (discovered if `path` is None)."""
    file = discover_config_path(path)
    data = read_yaml(file)
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


def check_budget_references(config: RouterConfig, source: str) -> None:
    """A `task:<name>` scope must name a configured task."""
    for i, budget in enumerate(config.budgets):
        if budget.scope.startswith("task:") and budget.scope[5:] not in config.tasks:
            raise ConfigError(
                f"{source}: budgets[{i}].scope: unknown task {budget.scope[5:]!r} "
                f"(expected one of: {', '.join(config.tasks) or 'no tasks defined'})")
