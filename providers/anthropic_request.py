"""The Anthropic Messages API request body (pure): messages in the OpenAI chat shape become
Anthropic content blocks; tools, tool_choice, structured output (the forced `json_answer`
tool) and sampling parameters map onto the Messages API's fields. See providers/anthropic.py
for the stream side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from providers.base import ProviderRequest, content_text

DEFAULT_MAX_TOKENS = 4096  # the API requires max_tokens; the router normally sets it
BODY_OPTIONS = ("thinking", "top_p", "top_k", "metadata", "service_tier")
# The forced tool that carries a structured answer (a name no caller's tool is likely to use).
ANSWER_TOOL = "json_answer"
_TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}



def _user_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped content (str or parts) -> Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = part["image_url"]["url"] if isinstance(part["image_url"], Mapping) \
                else part["image_url"]
            if url.startswith("data:"):
                media, _, data = url[5:].partition(";base64,")
                source = {"type": "base64", "media_type": media, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks


def _assistant_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = _user_blocks(content_text(message.get("content")))
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        raw = fn.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            arguments = {}  # a malformed call from an earlier turn: send it without input
        blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""),
                       "input": arguments})
    return blocks


def _messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """OpenAI chat history -> (Anthropic messages, system texts found in the history).
    Tool results become `tool_result` blocks of a user turn; consecutive turns of one role
    are merged, so parallel tool results share one user message as the API requires."""
    out: list[dict[str, Any]] = []
    system: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(content_text(message.get("content")))
            continue
        if role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [{
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": content_text(message.get("content")),
            }]
        elif role == "assistant":
            blocks = _assistant_blocks(message)
        else:
            role = "user"
            blocks = _user_blocks(message.get("content"))
        if not blocks:  # the API rejects empty content
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if out and out[-1]["role"] == "assistant":  # a prefill: no trailing whitespace allowed
        last = out[-1]["content"]
        if last and last[-1]["type"] == "text":
            last[-1]["text"] = last[-1]["text"].rstrip()
            if not last[-1]["text"]:
                last.pop()
        if not last:
            out.pop()
    return out, system


def build_request(
    request: ProviderRequest, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Messages API body for `request` (pure). `options`: provider-level extras."""
    messages, system = _messages(request.messages)
    if request.system:
        system.insert(0, request.system)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(s for s in system if s)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if request.tool_choice:
            body["tool_choice"] = _TOOL_CHOICE.get(
                request.tool_choice, {"type": "tool", "name": request.tool_choice}
            )
    if request.response_format is not None:
        _answer_tool(body, request.response_format, request.tool_choice)
    merged = {**(options or {}), **request.options}
    for key in BODY_OPTIONS:
        if key in merged:
            body[key] = merged[key]
    _sampling(body, request.params)
    return body


def _answer_tool(body: dict[str, Any], fmt: Mapping[str, Any], choice: str | None) -> None:
    """Structured output by a forced tool: the model must call `ANSWER_TOOL` whose input
    schema is the requested one; its input is streamed back as the text answer. With the
    caller's own tools offered (and not refused) the model may call one of them instead."""
    spec = fmt.get("json_schema") or {}
    schema = spec.get("schema") or {"type": "object"}
    tools = body.setdefault("tools", [])
    tools.append({"name": ANSWER_TOOL, "input_schema": schema,
                  "description": "Give the final answer as this tool's input."})
    if len(tools) > 1 and choice != "none":
        body["tool_choice"] = {"type": "any"}
    else:
        body["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}


def _sampling(body: dict[str, Any], params: Mapping[str, Any]) -> None:
    """Our sampling parameter names (those `PROVIDER_PARAMS["anthropic"]` lists) on this wire."""
    for key in ("top_p", "top_k"):
        if key in params:
            body[key] = params[key]
    if "user" in params:
        body["metadata"] = {**body.get("metadata", {}), "user_id": params["user"]}
    if params.get("parallel_tool_calls") is False and "tool_choice" in body:
        body["tool_choice"] = {**body["tool_choice"], "disable_parallel_tool_use": True}
    elif params.get("parallel_tool_calls") is False and body.get("tools"):
        body["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
