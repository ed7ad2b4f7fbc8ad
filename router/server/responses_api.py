"""OpenAI Responses API: `POST /v1/responses`, streaming and not.

Request shapes follow the API reference (https://platform.openai.com/docs/api-reference/
responses/create) and openai-python's `types/responses`, so `client.responses.create(...)`
works unchanged but for `base_url`. `model` is a task, a deployment id or `auto`, and the
routing options ride as extra body fields, as on `/v1/chat/completions`.

Honoured: `input` (a string, or items: messages with `input_text` / `output_text` /
`input_image` parts, `function_call`, `function_call_output`, `item_reference`; `reasoning`
items are not sent back upstream), `previous_response_id`, `instructions`, `tools`
(function tools, flat shape), `tool_choice`, `max_output_tokens`, `temperature`,
`metadata`, `stream`, `store`. Unless `store` is false, an answer's output items and its
whole conversation are remembered per API key (`router.server.response_items`, bounded,
`server.responses.ttl_s`), so a later request may name them by `item_reference` (what the
Vercel AI SDK sends by default) or continue with `previous_response_id`; an id this key
does not have (unknown, forgotten, or another key's) is a 400 naming the field. Accepted
without effect, as they do not change the answer: `stream_options`, `user`,
`safety_identifier`, `prompt_cache_key`, `service_tier: auto`, `truncation: disabled`,
`parallel_tool_calls: true`, `top_logprobs: 0`, `include` empty or
`["reasoning.encrypted_content"]`, `text.format: {type: text}`, and any field that is null
or an object of nulls. `text.format` json_schema / json_object is structured output and
`top_p` a sampling parameter (routed only where honoured, like on the chat endpoint).
Anything else set to a value is a 400 naming the field — in particular `conversation`,
`background`, `reasoning`, hosted tools — never silently dropped.

The output side (the `Response` object and the `response.*` events) is in
`router.server.responses_stream`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.events import DoneEvent, ErrorEvent, Event, StartEvent
from router.server.compat import (
    EventBody,
    ObservedStream,
    Render,
    RequestProblem,
    RoutingExtras,
    drain,
    parse_body,
    read_json,
    resolve_model,
    routed_response,
    router_of,
    routing_options,
    scope_key_of,
    sse_frames,
)
from router.server.openai_errors import error_of, error_response, problem_response
from router.server.response_items import ItemStore
from router.server.responses_recall import Remember, remembered, rememberer, resolved_input
from router.server.responses_stream import ResponseWriter, collect, render
from router.state.store import StateUnavailable

if TYPE_CHECKING:
    from router.core import Router

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
# Fields whose value changes nothing about the answer, when they have these values.
_NO_OP: dict[str, Any] = {
    "store": None, "stream_options": None, "user": None, "safety_identifier": None,
    "prompt_cache_key": None, "prompt_cache_retention": None,
    "service_tier": ("auto", "default"), "truncation": ("disabled",),
    "parallel_tool_calls": (True,), "top_logprobs": (0,),
    # Encrypted reasoning is for sending reasoning items back, which are not sent upstream.
    "include": ([], ["reasoning.encrypted_content"]),
}
_HONOURED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
    "temperature", "metadata", "stream", "text", "top_p", "previous_response_id",
    # the router's own extras (see `routing_options`)
    "max_ttft_ms", "max_latency_ms", "max_cost_usd", "prefer", "task",
})


def _bad(message: str, param: str, code: str = "invalid_value") -> RequestProblem:
    return RequestProblem(message, param, code)


# --- input --------------------------------------------------------------------------------


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Responses content parts as chat content parts (text, image_url)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"Invalid '{where}': expected a string or a list of content parts.", where)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            out.append({"type": "text", "text": str(part.get("text", part.get("refusal", "")))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            out.append({"type": "image_url", "image_url": {
                "url": part["image_url"], "detail": part.get("detail") or "auto"}})
        else:
            raise _bad(f"Invalid '{where}[{j}].type': content part {kind!r} is not supported "
                       "(supported: input_text, output_text, input_image with image_url).",
                       f"{where}[{j}].type", "unsupported_value")
    return out


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content)


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = _ROLES.get(str(item.get("role")))
    if role is None:
        raise _bad(f"Invalid '{where}.role': expected one of user, assistant, system, "
                   "developer.", f"{where}.role")
    content = _parts(item.get("content", ""), f"{where}.content")
    if role == "assistant":  # the chat shape takes an assistant's content as text
        content = _text_of(content)
    return {"role": role, "content": content}


def _function_call(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _bad(f"Invalid '{where}': a function_call needs a call_id and a name.", where)
    arguments = item.get("arguments") or "{}"
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def to_chat_messages(raw: Any) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) as OpenAI chat messages. Consecutive
    `function_call` items become one assistant message with several tool calls."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise RequestProblem("Missing required parameter: 'input'.", "input",
                             "missing_required_parameter")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"Invalid '{where}': expected an object.", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"Invalid '{where}.call_id': expected a string.", f"{where}.call_id")
            output = _text_of(_parts(item.get("output", ""), f"{where}.output"))
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue  # a previous turn's reasoning is not sent back upstream
        else:
            raise _bad(f"Invalid '{where}.type': input item {kind!r} is not supported "
                       "(supported: message, function_call, function_call_output, "
                       "reasoning).", f"{where}.type", "unsupported_value")
    return out


# --- options ------------------------------------------------------------------------------


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _bad("Invalid 'tools': expected an array of tools.", "tools")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"Invalid 'tools[{i}].type': tool type {kind!r} is not supported "
                       "(only function tools).", f"tools[{i}].type", "unsupported_value")
        if "function" in tool:  # the chat shape, which the core reads as well
            out.append(tool)
            continue
        if not isinstance(tool.get("name"), str):
            raise _bad(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                       "missing_required_parameter")
        out.append({"name": tool["name"], "description": tool.get("description") or "",
                    "parameters": tool.get("parameters")
                    or {"type": "object", "properties": {}}})
    return out


def _tool_choice(raw: Any) -> str:
    if raw in ("auto", "none", "required"):
        return str(raw)
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(
            raw.get("name"), str):
        return str(raw["name"])
    raise _bad("Invalid 'tool_choice': expected auto, none, required or "
               "{\"type\": \"function\", \"name\": ...}.", "tool_choice", "unsupported_value")


def _unset(value: Any) -> bool:
    """None, or an object of nothing but nulls (`reasoning: {effort: null}`)."""
    return value is None or (isinstance(value, dict) and all(v is None for v in value.values()))


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """A 400 for every field set to a value this endpoint would not honour."""
    for name, value in body.items():
        if _unset(value) or name in _HONOURED:
            continue
        if name in _NO_OP and (_NO_OP[name] is None or value in _NO_OP[name]):
            continue
        raise RequestProblem(f"Unsupported parameter: '{name}' is not supported by this "
                             "router's Responses API.", name, "unsupported_parameter")
    text = body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise _bad("Invalid 'text': expected an object.", "text")
    for key, value in text.items():
        if key == "format" and (value is None or (isinstance(value, dict) and value.get(
                "type") in ("text", "json_object", "json_schema"))):
            continue
        if value is not None:
            raise RequestProblem(f"Unsupported parameter: 'text.{key}' (only text.format "
                                 "{\"type\": \"text\"} is supported).", f"text.{key}",
                                 "unsupported_parameter")


def stream_kwargs(body: Mapping[str, Any], router: Router,
                  scope_key: str | None) -> dict[str, Any]:
    """`Router.stream` keyword arguments from a Responses API body."""
    _refuse_unsupported(body)
    kwargs = routing_options(parse_body(RoutingExtras, body))
    kwargs.update(resolve_model(body.get("model"), router, explicit_task=kwargs.get("task")))
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _bad("Invalid 'max_output_tokens': expected a positive integer.",
                       "max_output_tokens")
        kwargs["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise _bad("Invalid 'temperature': expected a number.", "temperature")
        kwargs["temperature"] = temperature
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("Invalid 'instructions': expected a string.", "instructions")
        kwargs["system"] = instructions
    if body.get("tools"):
        kwargs["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        kwargs["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        # the flat Responses shape -> the Chat Completions one `Router.stream` takes
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in fmt.items() if k != "type"}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    if body.get("top_p") is not None:
        kwargs["params"] = {"top_p": body["top_p"]}
    if scope_key is not None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "key": scope_key}
    return kwargs


# --- endpoint -----------------------------------------------------------------------------


async def create_response(request: Request) -> Response:
    router = router_of(request)
    store: ItemStore = request.app.state.response_items
    owner = getattr(getattr(request.state, "principal", None), "name", None) or ""
    try:
        body = await read_json(request)
        items = await resolved_input(body, store, owner)
        input_ = to_chat_messages(items)
        kwargs = stream_kwargs(body, router, scope_key_of(request))
        remember = None if body.get("store") is False else rememberer(store, owner, items)
        return routed_response(request, input_, kwargs, _renderer(body, remember))
    except RequestProblem as p:
        return problem_response(p)
    except StateUnavailable:
        return error_response(503, "The store of remembered response items (Redis) is "
                              "unavailable; retry, or send the items themselves.",
                              "server_error", None, "state_unavailable", retryable=True)


def _renderer(body: Mapping[str, Any], remember: Remember | None) -> Render:
    created = int(time.time())
    echo = {k: body.get(k) for k in ("instructions", "max_output_tokens", "temperature",
                                     "tools", "tool_choice", "metadata",
                                     "previous_response_id")}
    echo["store"] = remember is not None

    async def render_head(head: list[Event], rest: ObservedStream) -> Response | EventBody:
        last = head[-1] if head else None
        if isinstance(last, ErrorEvent):
            return error_of(last)
        headers = {"x-request-id": rest.request_id}
        model = next((ev.deployment for ev in reversed(head) if isinstance(ev, StartEvent)),
                     str(body.get("model")))
        writer = ResponseWriter(rest.request_id, created, model, echo)
        if body.get("stream"):
            frames = sse_frames(writer.opening(), head, rest, render, writer)
            return EventBody(frames if remember is None
                             else remembered(frames.chunks(), writer, remember), headers)
        end = collect(await drain(head, rest), writer)
        if isinstance(end, ErrorEvent):
            return error_of(end)
        if not isinstance(end, DoneEvent):
            return error_response(500, "The stream ended without a result.", "server_error")
        final = writer.final(end)
        if remember is not None:
            await remember(final["id"], final["output"])
        return Response(orjson.dumps(final), headers=headers, media_type="application/json")

    return render_head


routes = [Route("/v1/responses", create_response, methods=["POST"])]
