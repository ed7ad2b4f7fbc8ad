"""Validation of a request's structured-output format and sampling parameters.

`response_format` takes OpenAI's shape: `{"type": "text"}` (the default, dropped),
`{"type": "json_object"}`, or `{"type": "json_schema", "json_schema": {"name": ...,
"schema": {...}, "strict": bool}}`. A JSON format makes `structured_output` a required
capability of the route. Sampling parameters (`providers.base.SAMPLING_PARAMS`) are checked
for type and range here, once, and then routed only to deployments that can honour them.
Problems raise `RequestParamError` naming the field; `prepare()` reports it as `bad_request`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from providers.base import SAMPLING_PARAMS


class RequestParamError(ValueError):
    """A response_format or sampling parameter that cannot be sent; the message names it."""


def check_response_format(raw: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The normalized format (None for plain text)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RequestParamError("response_format: expected an object with a type")
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise RequestParamError(
            f"response_format.type: {kind!r} is not one of text, json_object, json_schema")
    spec = raw.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
        raise RequestParamError(
            "response_format.json_schema: expected an object with a schema object")
    name = spec.get("name", "response")
    if not isinstance(name, str) or not name:
        raise RequestParamError("response_format.json_schema.name: expected a string")
    return {"type": "json_schema", "json_schema": {
        "name": name, "schema": dict(spec.get("schema") or {"type": "object"}),
        "strict": bool(spec.get("strict", False)),
        **({"description": spec["description"]} if isinstance(spec.get("description"), str)
           else {})}}


def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, int | float) and not isinstance(v, bool)
                      and low <= v <= high)


def _integer(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_integer(-(2**63), 2**63 - 1), "an integer"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "top_k": (_integer(1, 1_000_000), "a positive integer"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "user": (lambda v: isinstance(v, str) and len(v) <= 256, "a string of at most 256"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "true or false"),
}
assert set(_CHECKS) == set(SAMPLING_PARAMS)


def check_params(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The set sampling parameters (None values dropped); unknown names and bad values raise."""
    out: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        if value is None:
            continue
        check = _CHECKS.get(name)
        if check is None:
            raise RequestParamError(
                f"params.{name}: unknown parameter (expected one of {', '.join(_CHECKS)})")
        if not check[0](value):
            raise RequestParamError(f"{name}: expected {check[1]}, got {value!r}")
        out[name] = value
    return out
