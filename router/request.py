"""Normalize what a caller passes to `stream()` into what routing and providers need.

`input` is a string or a list of OpenAI-shaped chat messages; tools may be given in the
OpenAI shape (`{"type": "function", "function": {...}}`), the Anthropic shape
(`input_schema`) or plainly (`name`, `description`, `parameters`). Problems raise
`RequestError`, which the stream turns into an `error` event (`bad_request`/`no_route`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from operator import attrgetter
from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from providers.base import ADVISORY_PARAMS, Tool, estimate_tokens
from router.config.schema import LoadedConfig, Prefer
from router.events import ErrorCode
from router.records import fast_init
from router.request_params import RequestParamError, check_params, check_response_format
from router.routing.constraints import RouteConstraints

ROLES = frozenset({"system", "user", "assistant", "tool"})
PREFERS = ("cost", "latency", "quality", "balanced")
# Bounds that keep every later computation finite (spend is counted in nano-dollars, as int).
MAX_COST_USD = 1e6
MAX_MS = 86_400_000.0  # a day
MAX_TOKENS = 100_000_000

# --- the schema of `stream()`'s arguments -----------------------------------------------
# One set of field types, used by the library edge (`prepare`) and by every server
# endpoint's request model, so a field is checked the same way wherever it enters.
# Strict numbers: no bools, no numeric strings; never NaN or infinity.
Milliseconds = Annotated[float, Field(gt=0, le=MAX_MS, strict=True, allow_inf_nan=False)]
CostCap = Annotated[float, Field(gt=0, le=MAX_COST_USD, strict=True, allow_inf_nan=False)]
TokenCount = Annotated[int, Field(gt=0, le=MAX_TOKENS, strict=True)]
Temperature = Annotated[float, Field(ge=0, le=2, strict=True, allow_inf_nan=False)]
Stop = str | list[str]
ToolChoice = str | dict[str, Any]
Metadata = dict[str, Any]


@with_config(ConfigDict(extra="allow"))
class ContentPart(TypedDict):
    """A part of a message's content (`text`, `image_url`, ...): typed where we read it."""

    type: str
    text: NotRequired[str]


@with_config(ConfigDict(extra="allow"))
class ToolSpec(TypedDict, total=False):
    """A tool in the OpenAI (`function`), Anthropic (`input_schema`) or plain shape."""

    type: str
    name: str
    description: str
    parameters: dict[str, Any]
    input_schema: dict[str, Any]
    function: dict[str, Any]


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict):
    """An OpenAI-shaped chat message; `tool_calls`, `tool_call_id`, `name` ride as extras."""

    role: Literal["system", "user", "assistant", "tool"]
    content: NotRequired[str | list[ContentPart] | None]


Input = str | Annotated[list[ChatMessage], Field(min_length=1)]


@with_config(ConfigDict(extra="forbid"))
class StreamArgs(TypedDict, total=False):
    """`stream()`'s arguments (validated as given, returned as plain data)."""

    input: Input
    task: str
    model: str
    prefer: Literal["cost", "latency", "quality", "balanced"]
    max_ttft_ms: Milliseconds
    max_latency_ms: Milliseconds
    max_cost_usd: CostCap
    max_tokens: TokenCount
    temperature: Temperature
    system: str
    tools: list[ToolSpec]
    tool_choice: ToolChoice
    stop: Stop
    metadata: Metadata
    response_format: dict[str, Any]  # its shape: router.request_params
    params: dict[str, Any]  # sampling parameters, by name: router.request_params


@cache
def _stream_args() -> TypeAdapter[StreamArgs]:
    # Built on first use: building a schema loads pydantic's plugin machinery
    # (importlib.metadata), tens of ms that `import router` should not pay.
    return TypeAdapter(StreamArgs)

# Union members and wrapper validators appear in pydantic's error locations; a field name is
# a lower-case identifier that is not a type name.
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def field_path(loc: Sequence[int | str]) -> str:
    """`input[0].content[1].text` from a pydantic error location."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _FIELD.fullmatch(part) and part not in _TYPE_NAMES:
            out += f".{part}" if out else part
    return out or "body"


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of the most specific error: the deepest location, which for a
    union is the member that got furthest."""
    errors = exc.errors(include_url=False, include_input=False)
    path = max((field_path(e["loc"]) for e in errors), key=len)
    # Several union members failing at the same place: say what each expected.
    msgs = dict.fromkeys("unknown field" if e["type"] == "extra_forbidden" else e["msg"]
                         for e in errors if field_path(e["loc"]) == path)
    return path, ", or ".join(msgs)


def check_stream_args(args: Mapping[str, Any]) -> None:
    """Raise RequestError (`bad_request`, naming the field) unless `args` fit `StreamArgs`."""
    try:
        _stream_args().validate_python(args)
    except ValidationError as exc:
        path, msg = first_problem(exc)
        raise RequestError("bad_request", f"{path}: {msg}") from None


class RequestError(Exception):
    def __init__(self, code: ErrorCode, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.suggestion = suggestion


@fast_init
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


_PARAM_NAMES = tuple(f.name for f in fields(StreamParams))
_PARAM_VALUES = attrgetter(*_PARAM_NAMES)  # all of them in one call
_NONE: frozenset[str] = frozenset()  # one for every request that requires nothing


def _finite(low: float, high: float, *, above: bool) -> Callable[[Any], bool]:
    if above:  # low excluded
        return lambda v: type(v) is float and low < v <= high
    return lambda v: type(v) is float and low <= v <= high


def _is_str(v: Any) -> bool:
    return type(v) is str


# Values that `StreamArgs` accepts for certain, by checks narrower than the schema's (exact
# types; a float's range comparisons are false for NaN, and infinity is out of range): a
# request whose every argument passes its check is not run through pydantic (it would
# pass). Anything else (an int for a float, messages, tools, ...) is, with its clear error.
_PLAIN: dict[str, Callable[[Any], bool]] = {
    "input": _is_str, "task": _is_str, "model": _is_str, "system": _is_str,
    "tool_choice": _is_str, "stop": _is_str,
    "prefer": lambda v: type(v) is str and v in PREFERS,
    "max_ttft_ms": _finite(0, MAX_MS, above=True),
    "max_latency_ms": _finite(0, MAX_MS, above=True),
    "max_cost_usd": _finite(0, MAX_COST_USD, above=True),
    "temperature": _finite(0, 2, above=False),
    "max_tokens": lambda v: type(v) is int and 0 < v <= MAX_TOKENS,
    "metadata": lambda v: type(v) is dict and all(type(k) is str for k in v),
}
_PLAIN_CHECKS = tuple(_PLAIN.get(name) for name in _PARAM_NAMES)


def _check_params(params: StreamParams) -> None:
    """`check_stream_args` of the arguments given (None and `{}` are not given), unless
    each of them is plainly valid (`_PLAIN`)."""
    values = _PARAM_VALUES(params)
    for value, plain in zip(values, _PLAIN_CHECKS, strict=False):  # equal lengths
        if value is not None and value != {} and (plain is None or not plain(value)):
            check_stream_args({name: v for name, v in zip(_PARAM_NAMES, values, strict=False)
                               if v is not None and v != {}})
            return


@fast_init
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
    """System text and conversation of input that passed `check_stream_args`."""
    if isinstance(params.input, str):
        if not params.input.strip():
            raise RequestError("bad_request", "input: the prompt is empty")
        return params.system, [{"role": "user", "content": params.input}]
    systems = [params.system] if params.system else []
    messages: list[Mapping[str, Any]] = []
    for m in params.input:
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
    _check_params(params)
    system, messages = _messages(params)
    tools = tuple(_tool(i, t) for i, t in enumerate(params.tools)) if params.tools else ()
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
    output_tokens = max_tokens or (
        task.expected_output_tokens if task and task.expected_output_tokens else None
    ) or cfg.defaults.expected_output_tokens
    input_tokens = _input_tokens(system, messages, tools)
    requires = set(task.requires) if task else set()
    if tools and (params.tool_choice != "none"):
        requires.add("tools")
    try:
        response_format = check_response_format(params.response_format)
        sampling = check_params(params.params) if params.params else {}
    except RequestParamError as exc:
        raise RequestError("bad_request", str(exc)) from None
    if response_format is not None:
        requires.add("structured_output")
    max_ttft_ms = params.max_ttft_ms if params.max_ttft_ms is not None else (
        task.max_ttft_ms if task else None)
    max_latency_ms = params.max_latency_ms if params.max_latency_ms is not None else (
        task.max_latency_ms if task else None)
    max_cost_usd = params.max_cost_usd if params.max_cost_usd is not None else (
        task.max_cost_usd if task else None)
    # Positional, in the fields' order (`test_request` checks each lands in its field): a
    # class called with keywords builds a dict of them, half the cost of the construction.
    constraints = RouteConstraints(
        candidates, _prefer(prefer), input_tokens, output_tokens, max_ttft_ms, max_latency_ms,
        max_cost_usd, frozenset(requires) if requires else _NONE,
        frozenset(sampling) - ADVISORY_PARAMS if sampling else _NONE, task_name,
        params.model is not None)
    stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
    return PreparedRequest(
        system, messages, tools, _tool_choice(params.tool_choice, tools), stop, max_tokens,
        params.temperature, response_format, sampling, constraints, task_name,
        dict(params.metadata))


def _input_tokens(system: str | None, messages: list[Mapping[str, Any]],
                  tools: tuple[Tool, ...]) -> int:
    """The estimated input tokens of the conversation (and of the tools' schemas)."""
    if len(messages) == 1 and type(content := messages[0].get("content")) is str:
        text = (system or "") + content  # a prompt: the common case, without the join
    else:
        text = (system or "") + "".join(_parts_text(m.get("content")) if not isinstance(
            m.get("content"), str) else m["content"] for m in messages)
    tokens = estimate_tokens(text) + 4 * len(messages)
    if tools:
        tokens += estimate_tokens(orjson.dumps([t.parameters for t in tools]).decode())
    return tokens


def _prefer(value: str) -> Prefer:
    if value == "cost":
        return "cost"
    if value == "latency":
        return "latency"
    if value == "quality":
        return "quality"
    return "balanced"
