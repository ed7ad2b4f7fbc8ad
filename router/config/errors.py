"""Turn a pydantic `ValidationError` into one readable message per problem:
`file: path.inside[1]: what was wrong (expected ...)`."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def format_path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _real_path(loc: tuple[str | int, ...], data: Any, keep_last: bool) -> list[str | int]:
    """The loc without pydantic's union-member tags: keep only parts that index the data
    (and the final key of a missing/unknown field)."""
    parts: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            parts.append(part)
        elif last and keep_last:
            parts.append(part)
    return parts


def _model_at(model: type[BaseModel], parts: list[str | int]) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at `parts` (for listing keys)."""
    current: Any = model
    for part in parts:
        if isinstance(part, int):
            current = _inner(current, list)
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            current = _inner(current, dict)
        current = _unwrap_optional(current)
    current = _unwrap_optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _inner(tp: Any, container: type) -> Any:
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is container:
        return typing.get_args(tp)[-1]
    return tp


def _describe(err: Any, data: Any, root: type[BaseModel]) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        parts = _real_path(loc, data, keep_last=True)
        key = str(parts[-1]) if parts else "?"
        model = _model_at(root, parts[:-1])
        allowed = sorted(model.model_fields) if model else []
        import difflib  # only for a bad config: ~5 ms of import kept off `import router`

        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"{format_path(parts)}: unknown key {key!r} "
            f"(expected one of: {', '.join(allowed)}{hint})"
        )
    if kind == "missing":
        parts = _real_path(loc, data, keep_last=True)
        return f"{format_path(parts)}: required key is missing"
    parts = _real_path(loc, data, keep_last=False)
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if "api_key" in parts:
        shown = "<hidden>"  # never echo a credential
    return f"{format_path(parts) or '<top level>'}: {err['msg']} (got {shown})"


def format_validation_error(
    exc: ValidationError, source: str, data: Any, root: type[BaseModel]
) -> str:
    seen: list[str] = []
    for err in exc.errors():
        line = f"{source}: {_describe(err, data, root)}"
        if line not in seen:
            seen.append(line)
    return "\n".join(seen)
