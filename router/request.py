"""Normalize what a caller passes to `stream()` into what routing and providers need.

`input` is a string or a list of OpenAI-shaped chat messages; tools may be given in the
OpenAI shape (`{"type": "function", "function": {...}}`), the Anthropic shape
(`input_schema`) or plainly (`name`, `description`, `parameters`). Problems raise
`RequestError`, which the stream turns into an `error` event (`bad_request`/`no_route`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.base import ADVISORY_PARAMS, Tool, estimate_tokens
from router.config.schema import LoadedConfig, Prefer
from router.events import ErrorCode
from router.request_params import RequestParamError, check_params, check_response_format
from router.routing.policy import RouteConstraints

ROLES = frozenset({"system", "user", "assistant", "tool"})
PREFERS = ("cost", "latency", "quality", "balanced")


class RequestError(Exception):
    def __init__(self, code: ErrorCode, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.suggestion = suggestion


@dataclass(frozen=True, slots=True)
class StreamParams:
    """The arguments of `Router.stream()`."""

    input: str | Sequence[Mapping[str, Any]]
    task: str | None = None
    model: str | None = None
    prefer: str | None = None
    max_ttft_ms: float | None = None
    max_latency_ms: float | None = None
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    system: str | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    stop: str | Sequence[str] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    response_format: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated request: conversation, tools and routing constraints."""

    system: str | None
    messages: list[Mapping[str, Any]]
    tools: tuple[Tool, ...]
    tool_choice: str | None
    stop: tuple[str, ...]
    max_tokens: int | None
    temperature: float | None
    response_format: Mapping[str, Any] | None
    params: Mapping[str, Any]
    constraints: RouteConstraints
    task: str | None
    metadata: Mapping[str, Any]


def _messages(params: StreamParams) -> tuple[str | None, list[Mapping[str, Any]]]:
    if isinstance(params.input, str):
        if not params.input.strip():
            raise RequestError("bad_request", "input: the prompt is empty")
        return params.system, [{"role": "user", "content": params.input}]
    if not isinstance(params.input, Sequence) or not params.input:
        raise RequestError(
            "bad_request", "input: expected a string or a non-empty list of messages"
        )
    systems = [params.system] if params.system else []
    messages: list[Mapping[str, Any]] = []
    for i, m in enumerate(params.input):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise RequestError(
                "bad_request",
                f"input[{i}]: expected a message with role one of {', '.join(sorted(ROLES))}",
            )
        if m["role"] == "system":
            content = m.get("content")
            systems.append(content if isinstance(content, str) else _parts_text(content))
        else:
            messages.append(m)
    if not messages:
        raise RequestError("bad_request", "input: no user message")
    return ("\n\n".join(systems) or None), messages


def _parts_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content or "")


def _tool(i: int, spec: Mapping[str, Any]) -> Tool:
    fn = spec.get("function") if spec.get("type") == "function" else spec
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise RequestError("bad_request", f"tools[{i}]: expected a tool with a name")
    schema = fn.get("parameters", fn.get("input_schema", {"type": "object", "properties": {}}))
    return Tool(fn["name"], str(fn.get("description", "")), schema)


def _tool_choice(choice: str | Mapping[str, Any] | None, tools: tuple[Tool, ...]) -> str | None:
    if choice is None:
        return None
    if isinstance(choice, Mapping):
        fn = choice.get("function", choice)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str):
            raise RequestError("bad_request", "tool_choice: expected a tool name")
        choice = name
    if choice in ("auto", "none", "required"):
        return choice
    if choice not in {t.name for t in tools}:
        raise RequestError("bad_request", f"tool_choice: no tool named {choice!r}")
    return choice


def prepare(params: StreamParams, loaded: LoadedConfig) -> PreparedRequest:
    system, messages = _messages(params)
    tools = tuple(_tool(i, t) for i, t in enumerate(params.tools or ()))
    cfg = loaded.config
    task_name = params.task
    if task_name is None and params.model is None:
        task_name = cfg.defaults.task
    task = None
    if task_name is not None:
        task = cfg.tasks.get(task_name)
        if task is None:
            raise RequestError(
                "bad_request",
                f"unknown task {task_name!r} (expected one of: {', '.join(cfg.tasks) or 'none'})",
            )
    if params.model is not None:
        if params.model not in loaded.deployments:
            raise RequestError(
                "bad_request",
                f"unknown model {params.model!r} (expected a deployment id: "
                f"{', '.join(loaded.deployments)})",
            )
        candidates: tuple[str, ...] = (params.model,)
    elif task is not None:
        candidates = tuple(task.candidates)
    else:
        candidates = tuple(loaded.deployments)
    prefer = params.prefer or (task.prefer if task else None) or cfg.defaults.prefer
    if prefer not in PREFERS:
        raise RequestError("bad_request", f"prefer: {prefer!r} is not one of {', '.join(PREFERS)}")
    if task is not None and task.system and not system:
        system = task.system
    max_tokens = params.max_tokens or (task.max_tokens if task else None)
    for name in ("max_ttft_ms", "max_latency_ms", "max_cost_usd", "max_tokens"):
        value = getattr(params, name)
        if value is not None and value <= 0:
            raise RequestError("bad_request", f"{name}: expected a positive number, got {value}")
    output_tokens = max_tokens or (
        task.expected_output_tokens if task and task.expected_output_tokens else None
    ) or cfg.defaults.expected_output_tokens
    text = (system or "") + "".join(_parts_text(m.get("content")) if not isinstance(
        m.get("content"), str) else m["content"] for m in messages)
    input_tokens = estimate_tokens(text) + 4 * len(messages)
    if tools:
        input_tokens += estimate_tokens(orjson.dumps([t.parameters for t in tools]).decode())
    requires = set(task.requires) if task else set()
    if tools and (params.tool_choice != "none"):
        requires.add("tools")
    try:
        response_format = check_response_format(params.response_format)
        sampling = check_params(params.params)
    except RequestParamError as exc:
        raise RequestError("bad_request", str(exc)) from None
    if response_format is not None:
        requires.add("structured_output")
    constraints = RouteConstraints(
        candidates=candidates,
        prefer=_prefer(prefer),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        max_ttft_ms=params.max_ttft_ms if params.max_ttft_ms is not None else (
            task.max_ttft_ms if task else None),
        max_latency_ms=params.max_latency_ms if params.max_latency_ms is not None else (
            task.max_latency_ms if task else None),
        max_cost_usd=params.max_cost_usd if params.max_cost_usd is not None else (
            task.max_cost_usd if task else None),
        requires=frozenset(requires),
        params=frozenset(sampling) - ADVISORY_PARAMS,
        task=task_name,
        pinned=params.model is not None,
    )
    stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
    return PreparedRequest(
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=_tool_choice(params.tool_choice, tools),
        stop=stop,
        max_tokens=max_tokens,
        temperature=params.temperature,
        response_format=response_format,
        params=sampling,
        constraints=constraints,
        task=task_name,
        metadata=dict(params.metadata),
    )


def _prefer(value: str) -> Prefer:
    if value == "cost":
        return "cost"
    if value == "latency":
        return "latency"
    if value == "quality":
        return "quality"
    return "balanced"
