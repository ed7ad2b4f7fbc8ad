"""Translate an Anthropic Messages API request into `Router.stream` arguments.

`Router.stream` takes the OpenAI chat shape: Anthropic's `tool_result` blocks become `tool`
messages (placed before the rest of the user turn, as the Messages API requires them first),
assistant `tool_use` blocks become `tool_calls` with JSON-text arguments, `system` becomes
the `system` argument, and `tool_choice` `{"type": "any"}` becomes `"required"`.
`top_p`, `top_k`, `metadata.user_id` and `tool_choice.disable_parallel_tool_use` become the
sampling parameters `top_p`, `top_k`, `user` and `parallel_tool_calls: false`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

import orjson
from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from router.request import Temperature, TokenCount
from router.server.compat import RequestProblem, RoutingExtras, resolve_model, routing_options

if TYPE_CHECKING:
    from router.core import Router

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_SKIPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


@with_config(ConfigDict(extra="allow"))
class Block(TypedDict):
    """A content block (`text`, `image`, `tool_use`, `tool_result`, ...)."""

    type: str
    text: NotRequired[str]
    content: NotRequired[str | list[Block] | None]  # a tool_result's


@with_config(ConfigDict(extra="allow"))
class AnthropicMessage(TypedDict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


@with_config(ConfigDict(extra="allow"))
class AnthropicTool(TypedDict):
    name: str
    input_schema: dict[str, Any]
    description: NotRequired[str]
    type: NotRequired[Literal["custom"] | None]  # server tools are not supported


@with_config(ConfigDict(extra="allow"))
class AnthropicToolChoice(TypedDict):
    type: Literal["auto", "any", "tool", "none"]
    name: NotRequired[str]
    disable_parallel_tool_use: NotRequired[bool]


class MessagesBody(RoutingExtras):
    """The fields of a Messages API body this endpoint reads (one line each)."""

    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    max_tokens: TokenCount | None = None
    system: str | list[Block] | None = None
    temperature: Temperature | None = None
    stop_sequences: list[str] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    top_p: Any = None  # sampling parameters: their types and ranges are the core's to check
    top_k: Any = None


def _text_of(content: str | list[Block] | None) -> str:
    """The text of a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or () if b["type"] == "text")


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise RequestProblem(f"{where}.source: Field required", where)
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise RequestProblem(f"{where}.source.type: expected 'base64' or 'url'", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            text = _text_of(block.get("content"))
            if block.get("is_error"):
                text = f"Error: {text}"
            tool_messages.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")),
                                  "content": text})
        else:
            raise RequestProblem(f"{at}.type: unsupported content block type {kind!r} "
                                 "(expected text, image or tool_result)", at)
    out = tool_messages
    if parts:
        # Plain text stays a string: every provider adapter takes that.
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(blocks: list[Any], where: str) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block["type"]
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id")), "type": "function", "function": {
                "name": str(block.get("name")),
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind not in _SKIPPED_ASSISTANT_BLOCKS:
            raise RequestProblem(f"{at}.type: unsupported content block type {kind!r} "
                                 "(expected text, tool_use or thinking)", at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        message["tool_calls"] = calls
    return message


def to_openai_messages(raw: list[AnthropicMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        role, content = m["role"], m["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "user":
            out.extend(_user_turn(content, f"messages.{i}"))
        else:
            out.append(_assistant_turn(content, f"messages.{i}"))
    return out


def _tools(raw: list[AnthropicTool]) -> list[dict[str, Any]]:
    return [{"name": t["name"], "description": t.get("description", ""),
             "input_schema": t["input_schema"]} for t in raw]


def _tool_choice(raw: AnthropicToolChoice) -> str:
    if raw["type"] == "tool":
        name = raw.get("name")
        if name is None:
            raise RequestProblem("tool_choice.name: Field required", "tool_choice.name")
        return name
    return _CHOICES[raw["type"]]


def _sampling(body: MessagesBody) -> dict[str, Any]:
    """top_p, top_k, metadata.user_id and tool_choice.disable_parallel_tool_use, by the
    router's (OpenAI's) names; routing sends them only where they can be honoured."""
    out = {name: value for name, value in (("top_p", body.top_p), ("top_k", body.top_k))
           if value is not None}
    if body.metadata and body.metadata.get("user_id") is not None:
        out["user"] = body.metadata["user_id"]
    if body.tool_choice is not None and body.tool_choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def stream_kwargs(body: MessagesBody, router: Router, scope_key: str | None) -> dict[str, Any]:
    """`Router.stream` keyword arguments from a Messages API body (messages aside)."""
    kwargs = routing_options(body)
    kwargs.update(resolve_model(body.model, router, explicit_task=body.task))
    if body.max_tokens is not None:
        kwargs["max_tokens"] = body.max_tokens
    if body.system is not None:
        kwargs["system"] = _text_of(body.system)
    if body.temperature is not None:
        kwargs["temperature"] = body.temperature
    if body.stop_sequences:
        kwargs["stop"] = body.stop_sequences
    if body.tools:
        kwargs["tools"] = _tools(body.tools)
    if body.tool_choice is not None:
        kwargs["tool_choice"] = _tool_choice(body.tool_choice)
    params = _sampling(body)
    if params:
        kwargs["params"] = params
    if scope_key is not None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "key": scope_key}
    return kwargs
