"""How the simulated model decides what to do with a turn: call a tool, answer in JSON, or
answer in text. Pure functions of the request and a seed, so a run is reproducible.

The decision, in order:
- tools offered and not refused (`tool_choice` not `none`):
  - a named `tool_choice` calls that tool;
  - no tool result since the last user message: call the offered tool that relates most to
    the user's words (name and description, ties to the first offered); with `auto` only
    when some tool relates to them or no tool was called yet in the conversation;
  - after a tool result: `required` calls a tool not called yet (an agent's output tool,
    e.g. pydantic-ai's `final_result`), `auto` answers using the result;
- a JSON `response_format`: a JSON value valid for the schema (`json_object`: an object,
  valid for a schema the prompt spells out if it does);
- otherwise: text (the caller's seeded word answer), prefixed by the tool results it uses.

Tool arguments satisfy the tool's JSON schema: types, `required`, `enum`/`const`, nested
objects and arrays (`minItems`/`maxItems`), `anyOf`/`oneOf` (the first non-null branch),
local `$ref`s into `$defs`/`definitions`, numeric bounds, `minLength`, common `format`s.
Strings are drawn from the user's own words, so `{"city": "Paris"}` answers "weather in
Paris?".
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from providers.base import ProviderRequest, Tool, content_text

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_STOPWORDS = frozenset(
    "a an the is are was be to of in on at for and or what whats what's how who when where "
    "which please me my i you your it its this that with from tell give get can could would "
    "do does use using call".split())
_FORMATS = {"date": "2026-01-15", "date-time": "2026-01-15T09:30:00Z", "time": "09:30:00",
            "email": "user@example.com", "uri": "https://example.com/", "uuid":
            "8a1b2c3d-0000-4000-8000-000000000001", "ipv4": "127.0.0.1"}
_OUTPUT_TOOL_WORDS = ("final", "result", "output", "answer", "respond", "response")
_MAX_DEPTH = 6


@dataclass(frozen=True, slots=True)
class Turn:
    kind: Literal["tool", "json", "text"]
    tool: str | None = None  # the tool to call (kind "tool")
    payload: str = ""  # the JSON arguments or JSON answer; for text, a prefix of the answer



def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w.lower() not in _STOPWORDS]


def _since_last_user(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return list(messages[i + 1:])
    return list(messages)


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def _called_names(messages: Sequence[Mapping[str, Any]]) -> set[str]:
    names: set[str] = set()
    for m in messages:
        for call in m.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
    return names


def _relevance(tool: Tool, words: set[str]) -> int:
    own = {w.lower() for w in _WORD.findall(tool.name.replace("_", " ") + " " + tool.description)}
    # a user word matches a tool word sharing its first five letters ("weather"/"weathers")
    return sum(1 for w in words if any(o[:5] == w[:5] for o in own if len(o) > 2))


def plan_turn(request: ProviderRequest, seed: int) -> Turn:
    messages = request.messages
    rng = random.Random(f"{seed}\x00{_last_user_text(messages)}\x00{len(messages)}")
    tool = _tool_to_call(request)
    words = _words(_last_user_text(messages))
    if tool is not None:
        args = value_for_schema(tool.parameters, rng, words, tool.parameters, 0)
        return Turn("tool", tool.name, orjson.dumps(args).decode())
    fmt = request.response_format
    if fmt is not None:
        schema = (fmt.get("json_schema") or {}).get("schema") or _schema_in_prompt(request)
        if schema is None:
            value: Any = {"answer": " ".join(words[:6]) or "ok"}
        else:
            value = value_for_schema(schema, rng, words, schema, 0)
        return Turn("json", payload=orjson.dumps(value).decode())
    results = [m for m in _since_last_user(messages) if m.get("role") == "tool"]
    prefix = "".join(f"The tool returned {content_text(m.get('content'))}. " for m in results)
    return Turn("text", payload=prefix)


def _schema_in_prompt(request: ProviderRequest) -> Mapping[str, Any] | None:
    """A JSON schema spelled out in the prompt (json_object mode: clients such as
    instructor's JSON mode describe the wanted object there), or None."""
    texts = [request.system or ""] + [content_text(m.get("content")) for m in request.messages]
    decoder = json.JSONDecoder()
    for text in texts:
        start = text.find("{")
        while start >= 0:
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                return value
            start = text.find("{", start + 1)
    return None


def _tool_to_call(request: ProviderRequest) -> Tool | None:
    tools = list(request.tools)
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    if choice not in (None, "auto", "required"):
        return next((t for t in tools if t.name == choice), None)
    recent = _since_last_user(request.messages)
    has_result = any(m.get("role") == "tool" for m in recent)
    called = _called_names(recent)
    words = {w.lower() for w in _words(_last_user_text(request.messages))}
    if has_result:
        if choice != "required":
            return None
        fresh = [t for t in tools if t.name not in called] or tools
        return max(fresh, key=lambda t: (any(k in t.name.lower() for k in _OUTPUT_TOOL_WORDS),
                                         -fresh.index(t)))
    best = max(tools, key=lambda t: (_relevance(t, words), -tools.index(t)))
    if choice == "required" or _relevance(best, words) > 0 or not _called_names(
            request.messages):
        return best
    return None


# --- values for a JSON schema -------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _schema_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def value_for_schema(schema: Any, rng: random.Random, words: Sequence[str],
                     root: Mapping[str, Any], depth: int, name: str = "value") -> Any:
    """A JSON value valid for `schema` (a reasonable subset of JSON Schema)."""
    if not isinstance(schema, Mapping):
        return name
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            usable = [b for b in branches
                      if not (isinstance(b, Mapping) and b.get("type") == "null")]
            return value_for_schema((usable or branches)[0], rng, words, root, depth, name)
    kind = _schema_type(schema)
    if kind == "object":
        return _object(schema, rng, words, root, depth)
    if kind == "array":
        return _array(schema, rng, words, root, depth, name)
    if kind in ("integer", "number"):
        return _number(schema, rng, kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng, words, name)


def _object(schema: Mapping[str, Any], rng: random.Random, words: Sequence[str],
            root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    props = schema.get("properties") or {}
    required = schema.get("required") or []
    out: dict[str, Any] = {}
    for key, sub in props.items():
        # Past the depth limit only required properties are filled (recursive schemas).
        if depth < _MAX_DEPTH or key in required:
            out[key] = value_for_schema(sub, rng, words, root, depth + 1, key)
    for key in required:
        out.setdefault(key, key)
    return out


def _array(schema: Mapping[str, Any], rng: random.Random, words: Sequence[str],
           root: Mapping[str, Any], depth: int, name: str) -> list[Any]:
    low = int(schema.get("minItems", 1 if depth < _MAX_DEPTH else 0))
    high = int(schema.get("maxItems", max(low, 2)))
    count = min(max(low, min(2, high)), high) if depth < _MAX_DEPTH else low
    items = schema.get("items", {})
    return [value_for_schema(items, rng, words, root, depth + 1, name) for _ in range(count)]


def _number(schema: Mapping[str, Any], rng: random.Random, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        low = low + 1 if integer else low + 1e-6
    if "exclusiveMaximum" in schema and "maximum" not in schema:
        high = high - 1 if integer else high - 1e-6
    if integer:
        return rng.randint(int(low), max(int(low), int(high)))
    return round(rng.uniform(float(low), float(high)), 2)


def _string(schema: Mapping[str, Any], rng: random.Random, words: Sequence[str],
            name: str) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    capitalized = [w for w in words if w[:1].isupper()]
    text = rng.choice(capitalized or list(words) or [name])
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    while len(text) < low:
        text += " " + text
    return text[: int(high)] if isinstance(high, int) else text
