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
from typing import TYPE_CHECKING, Any

import orjson

from router.server.compat import RequestProblem, resolve_model, routing_options

if TYPE_CHECKING:
    from router.core import Router

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_SKIPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _text_of(content: Any, where: str) -> str:
    """The text of a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, block in enumerate(content):
            if not isinstance(block, Mapping):
                raise RequestProblem(f"{where}.{j}: expected a content block", where)
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise RequestProblem(f"{where}: expected a string or a list of content blocks", where)


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
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            text = _text_of(block.get("content"), f"{at}.content")
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
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            text.append(str(block.get("text", "")))
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


def to_openai_messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise RequestProblem("messages: Field required (a non-empty list)", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages.{i}"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role not in ("user", "assistant"):
            raise RequestProblem(f"{where}.role: Input should be 'user' or 'assistant'", where)
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user_turn(content, where))
            else:
                out.append(_assistant_turn(content, where))
        else:
            raise RequestProblem(f"{where}.content: expected a string or a list of blocks", where)
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise RequestProblem("tools: expected a list", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise RequestProblem(f"tools.{i}.name: Field required", f"tools.{i}")
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise RequestProblem(f"tools.{i}: only custom tools with an input_schema are "
                                 "supported", f"tools.{i}")
        out.append({"name": tool["name"], "description": str(tool.get("description", "")),
                    "input_schema": tool["input_schema"]})
    return out


def _tool_choice(raw: Any) -> str:
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str):
            raise RequestProblem("tool_choice.name: Field required", "tool_choice")
        return name
    if kind not in _CHOICES:
        raise RequestProblem("tool_choice.type: expected 'auto', 'any', 'tool' or 'none'",
                             "tool_choice")
    return _CHOICES[kind]


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """top_p, top_k, metadata.user_id and tool_choice.disable_parallel_tool_use, by the
    router's (OpenAI's) names; routing sends them only where they can be honoured."""
    out = {name: body[name] for name in ("top_p", "top_k") if body.get(name) is not None}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("user_id") is not None:
        out["user"] = metadata["user_id"]
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def stream_kwargs(body: Mapping[str, Any], router: Router, scope_key: str | None) -> dict[str, Any]:
    """`Router.stream` keyword arguments from a Messages API body (messages aside)."""
    kwargs = routing_options(body)
    kwargs.update(resolve_model(body.get("model"), router, explicit_task=kwargs.get("task")))
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestProblem("max_tokens: Input should be a positive integer", "max_tokens")
        kwargs["max_tokens"] = max_tokens
    if body.get("system") is not None:
        kwargs["system"] = _text_of(body["system"], "system")
    if body.get("temperature") is not None:
        kwargs["temperature"] = body["temperature"]
    if body.get("stop_sequences"):
        kwargs["stop"] = body["stop_sequences"]
    if body.get("tools"):
        kwargs["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        kwargs["tool_choice"] = _tool_choice(body["tool_choice"])
    params = _sampling(body)
    if params:
        kwargs["params"] = params
    if scope_key is not None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "key": scope_key}
    return kwargs
