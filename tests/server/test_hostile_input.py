"""Malformed input at every endpoint: a 4xx JSON error in that API's own shape, naming the
field, never a plain-text 500. Each listed case was once a 500 with a traceback
(`Last-Event-ID: --5`, `max_cost_usd: 1e308`, a text part whose text is 5, `stop: 5`,
`tools: "x"`); the property test below looks for more."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core import Router
from router.server import create_app
from tests.server.conftest import key_entry

KEY = "sk-hostile-input-0123456789"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {"input": "hi"}
BAD_PART = [{"role": "user", "content": [{"type": "text", "text": 5}]}]


@pytest.fixture(scope="module")
def base_url(fleet: Any) -> Iterator[str]:
    """One real server for the module, in its own thread (hypothesis drives it sync)."""
    data = fleet.config()
    data["server"] = {"api_keys": [key_entry("a", KEY)]}
    app = create_app(Router(fleet.load(data)), close_router=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {KEY}"},
                      timeout=10) as c:
        yield c


def _openai_param(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["param"])


def _anthropic_message(r: httpx.Response) -> str:
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


def _own_param(r: httpx.Response) -> str:
    body = r.json()
    assert body["type"] == "error" and body["error"]["code"] == "invalid_request"
    return str(body["error"]["param"])


@pytest.mark.parametrize(("extra", "param"), [
    ({"stop": 5}, "stop"),
    ({"tools": "x"}, "tools"),
    ({"messages": BAD_PART}, "messages[0].content[0].text"),
    ({"max_cost_usd": 1e308}, "max_cost_usd"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
])
def test_chat_completions_names_the_field(client: httpx.Client, extra: dict[str, Any],
                                          param: str) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 400, r.text
    assert _openai_param(r) == param


@pytest.mark.parametrize(("extra", "field"), [
    ({"stop_sequences": 5}, "stop_sequences"),
    ({"tools": "x"}, "tools"),
    ({"messages": BAD_PART}, "messages[0].content[0].text"),
    ({"max_cost_usd": 1e308}, "max_cost_usd"),
    ({"system": 5}, "system"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
])
def test_messages_names_the_field(client: httpx.Client, extra: dict[str, Any],
                                  field: str) -> None:
    r = client.post("/v1/messages", json={**MESSAGES, **extra})
    assert r.status_code == 400, r.text
    assert _anthropic_message(r).startswith(f"Invalid '{field}'")


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_cost_usd": 1e308}, "max_cost_usd"),
    ({"input": BAD_PART}, "input[0].content[0].text"),
    ({"stop": 5}, "stop"),
    ({"tools": "x"}, "tools"),
    ({"max_tokens": 1.5}, "max_tokens"),
])
def test_stream_names_the_field(client: httpx.Client, extra: dict[str, Any],
                                param: str) -> None:
    r = client.post("/v1/stream", json={**STREAM, **extra})
    assert r.status_code == 422, r.text
    assert _own_param(r) == param


def test_nan_in_a_body_is_refused(client: httpx.Client) -> None:
    # JSON has no NaN, but Python's json (and many clients) write it; orjson refuses it.
    r = client.post("/v1/stream", content=b'{"input": "hi", "max_cost_usd": NaN}')
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("cursor", ["--5", "²", "9" * 5000, "1e3", "x"])
@pytest.mark.parametrize("where", ["header", "query"])
def test_a_resume_cursor_that_is_not_a_number_is_a_400(client: httpx.Client, cursor: str,
                                                       where: str) -> None:
    rid = client.post("/v1/stream", json=STREAM).headers["x-request-id"]
    if where == "header":
        r = client.get(f"/v1/streams/{rid}/events",
                       headers={"last-event-id": cursor.encode()})
    else:
        r = client.get(f"/v1/streams/{rid}/events", params={"after": cursor})
    assert r.status_code == 400, r.text
    assert _own_param(r) == ("Last-Event-ID" if where == "header" else "after")


# --- property: no input makes a 500 or a non-JSON answer ---------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)
_FIELDS = {
    "/v1/chat/completions": (CHAT, ["model", "messages", "stop", "tools", "tool_choice",
                                    "max_tokens", "temperature", "n", "stream_options",
                                    "max_cost_usd", "metadata", "prefer", "task", "seed",
                                    "top_p", "response_format", "logprobs", "user"]),
    "/v1/messages": (MESSAGES, ["model", "messages", "system", "stop_sequences", "tools",
                                "tool_choice", "max_tokens", "temperature", "metadata",
                                "top_k"]),
    "/v1/stream": (STREAM, ["input", "task", "model", "prefer", "max_ttft_ms", "max_cost_usd",
                            "max_tokens", "temperature", "system", "tools", "tool_choice",
                            "stop", "metadata", "params", "response_format"]),
}


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    path = draw(st.sampled_from(sorted(_FIELDS)))
    base, fields = _FIELDS[path]
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        body[name] = draw(_json)
    if path != "/v1/stream" and draw(st.booleans()):
        body["messages"] = [{"role": "user", "content": draw(_json)}]
    return path, body


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_mutated())
def test_no_body_makes_a_500_or_plain_text(client: httpx.Client,
                                           case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    # Not streamed: a body that passes is answered whole (or as an SSE stream, for /v1/stream).
    body = {**body, "stream": False} if path != "/v1/stream" else {**body, "detach": False}
    r = client.post(path, content=json.dumps(body))  # big ints and Infinity too
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    kind = r.headers["content-type"]
    assert kind.startswith(("application/json", "text/event-stream")), (path, body, r.text)
