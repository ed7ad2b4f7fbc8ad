"""Finding and reading config files: discovery (explicit path, `$LLM_ROUTER_CONFIG`,
`./router.yaml`, the embedded default), the embedded files, and YAML with errors that name
the line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from router.errors import ConfigError

CONFIG_ENV = "LLM_ROUTER_CONFIG"
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "config"


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


def read_yaml(path: Path) -> Any:
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
