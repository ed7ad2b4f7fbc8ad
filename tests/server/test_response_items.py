"""Remembered response items: `POST /v1/responses` keeps each answer's output items and
conversation per API key, so `item_reference` input items (what the Vercel AI SDK sends
with `store: true`) and `previous_response_id` (the openai SDK) resolve; unknown ids are a
400 naming the field; one key cannot resolve another's; with Redis, any instance resolves
what another answered. The store itself is bounded per key and forgets after its TTL."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from router.config import parse_config
from router.config.schema import ResponsesConfig, StateConfig
from router.core import Router
from router.server.app import create_app
from router.server.compat import RequestProblem
from router.server.response_items import MemoryItems, RedisItems
from router.server.responses_recall import kept
from tests.server.conftest import RecordingRouter, key_entry, uvicorn_on_loopback
from tests.server.test_openai_compat import CONFIG, KEY
from tests.server.test_responses_api import TOOLS

OTHER_KEY = "sk-test-other-key-0123456789abcdef"


def _config(**state: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(CONFIG)
    cfg["server"]["api_keys"].append(key_entry("other", OTHER_KEY))
    if state:
        cfg["state"] = state
    return cfg


@pytest.fixture
async def router() -> AsyncIterator[RecordingRouter]:
    inner = Router(parse_config(_config()))
    yield RecordingRouter(inner, id_prefix="resp_")
    await inner.aclose()



def _sdk(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


async def test_previous_response_id_continues_the_conversation(
        base_url: str, router: RecordingRouter) -> None:
    async with _sdk(base_url) as client:
        first = await client.responses.create(model="chat", input="Name a colour")
        assert first.store is True
        second = await client.responses.create(model="chat", input="And another?",
                                               previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.status == "completed"
    messages = router.last_args[0]
    assert messages == [{"role": "user", "content": "Name a colour"},
                        {"role": "assistant", "content": first.output_text},
                        {"role": "user", "content": "And another?"}]


async def test_streamed_output_is_remembered_before_the_response_completes(
        base_url: str, router: RecordingRouter) -> None:
    async with _sdk(base_url) as client:
        stream = await client.responses.create(model="chat", input="Hello", stream=True)
        async for ev in stream:
            if ev.type == "response.completed":
                completed = ev.response
                break  # the next turn goes out at once, the stream still open
        follow = await client.responses.create(model="chat", input=[
            {"role": "user", "content": "Hello"},
            {"type": "item_reference", "id": completed.output[0].id},
            {"role": "user", "content": "More"}])
        await stream.close()
    assert follow.status == "completed"
    assert router.last_args[0][1] == {"role": "assistant", "content": completed.output_text}


async def test_item_references_resolve_a_tool_round_trip(
        base_url: str, router: RecordingRouter) -> None:
    async with _sdk(base_url) as client:
        first = await client.responses.create(model="chat", input="Find ACME", tools=TOOLS,
                                              tool_choice="required")
        call = next(item for item in first.output if item.type == "function_call")
        answer = await client.responses.create(model="chat", tools=TOOLS, input=[
            {"role": "user", "content": "Find ACME"},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id,
             "output": '{"lead": "ACME Corp"}'}])
    assert answer.output_text
    assistant, tool = router.last_args[0][1:]
    assert assistant["tool_calls"] == [{"id": call.call_id, "type": "function", "function": {
        "name": "lookup_lead", "arguments": call.arguments}}]
    assert tool == {"role": "tool", "tool_call_id": call.call_id,
                    "content": '{"lead": "ACME Corp"}'}


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"previous_response_id": "resp_unknown"}, "previous_response_id",
     "previous_response_not_found"),
    ({"input": ["hi", {"type": "item_reference", "id": "msg_unknown"}]}, "input[1].id",
     "item_not_found"),
    ({"input": [{"type": "item_reference"}]}, "input[0].id", "item_not_found"),
])
async def test_an_unknown_id_is_a_400_naming_the_field(
        base_url: str, body: dict[str, Any], param: str, code: str) -> None:
    payload = {"model": "chat", "input": "hi", **body}
    if isinstance(payload["input"], list):
        payload["input"] = [{"role": "user", "content": i} if isinstance(i, str) else i
                            for i in payload["input"]]
    async with _sdk(base_url) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.post("/responses", body=payload, cast_to=httpx.Response)
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"], error["type"]) == (param, code,
                                                             "invalid_request_error")


async def test_ids_are_per_key_and_store_false_remembers_nothing(base_url: str) -> None:
    async with _sdk(base_url) as alice, _sdk(base_url, OTHER_KEY) as other:
        kept = await alice.responses.create(model="chat", input="hi")
        with pytest.raises(openai.BadRequestError):
            await other.responses.create(model="chat", input="hi",
                                         previous_response_id=kept.id)
        unkept = await alice.responses.create(model="chat", input="hi", store=False)
        assert unkept.store is False
        with pytest.raises(openai.BadRequestError):
            await alice.responses.create(model="chat", input="hi",
                                         previous_response_id=unkept.id)


async def test_with_redis_another_instance_resolves_what_one_answered(redis_url: str) -> None:
    cfg = _config(backend="redis", url=redis_url, prefix=f"ri{uuid.uuid4().hex[:6]}:")
    routers = [Router(parse_config(cfg)) for _ in range(2)]
    try:
        async with uvicorn_on_loopback(create_app(routers[0])) as (_, url_a), \
                uvicorn_on_loopback(create_app(routers[1])) as (_, url_b), \
                _sdk(url_a) as on_a, _sdk(url_b) as on_b:
            first = await on_a.responses.create(model="chat", input="Name a colour")
            second = await on_b.responses.create(model="chat", input=[
                {"role": "user", "content": "Name a colour"},
                {"type": "item_reference", "id": first.output[0].id},
                {"role": "user", "content": "And another?"}])
            third = await on_b.responses.create(model="chat", input="Thanks",
                                                previous_response_id=second.id)
        assert (second.status, third.status) == ("completed", "completed")
        assert third.previous_response_id == second.id
    finally:
        for r in routers:
            await r.aclose()


async def test_the_store_keeps_at_most_its_bound_per_key_and_forgets_after_its_ttl() -> None:
    now = [0.0]
    store = MemoryItems(ResponsesConfig(max_items_per_key=3, ttl_s=60), clock=lambda: now[0])
    await store.put("alice", {f"i{n}": n for n in range(5)})
    await store.put("bob", {"i0": "bob's"})
    assert await store.get("alice", [f"i{n}" for n in range(5)]) == {"i2": 2, "i3": 3, "i4": 4}
    assert await store.get("bob", ["i0", "i4"]) == {"i0": "bob's"}
    now[0] = 61.0
    assert await store.get("alice", ["i4"]) == {}


async def test_the_store_is_bounded_in_bytes_and_says_why_an_entry_was_not_kept() -> None:
    store = MemoryItems(ResponsesConfig(max_items_per_key=100, max_bytes_per_key=1024))
    await store.put("alice", {f"i{n}": "x" * 300 for n in range(5)})  # ~1.5 kB in all
    assert sorted(await store.get("alice", [f"i{n}" for n in range(5)])) == ["i2", "i3", "i4"]
    await store.put("alice", {"big": "y" * 2000})
    big = (await store.get("alice", ["big"]))["big"]
    with pytest.raises(RequestProblem) as info:
        kept(big, "Item 'big'", "input[0].id")
    assert (info.value.param, info.value.code) == ("input[0].id", "too_large_to_keep")
    assert "2002 bytes" in str(info.value)


async def test_redis_store_is_bounded_in_bytes_across_puts(redis_url: str) -> None:
    state = StateConfig(backend="redis", url=redis_url, prefix=f"rb{uuid.uuid4().hex[:6]}:")
    store = RedisItems(ResponsesConfig(max_items_per_key=100, max_bytes_per_key=1024), state)
    try:
        for n in range(6):
            await store.put("alice", {f"i{n}": "x" * 300})
        assert sorted(await store.get("alice", [f"i{n}" for n in range(6)])) == [
            "i3", "i4", "i5"]
        await store.put("alice", {"big": "y" * 2000})
        assert "omitted_bytes" in (await store.get("alice", ["big"]))["big"]
        assert sorted(await store.get("alice", ["i3", "i4", "i5"])) == ["i3", "i4", "i5"]
    finally:
        await store.aclose()


async def test_a_conversation_over_the_byte_bound_is_a_400_naming_previous_response_id(
        ) -> None:
    cfg = _config()
    cfg["server"]["responses"] = {"max_bytes_per_key": 2048}
    inner = Router(parse_config(cfg))
    try:
        async with uvicorn_on_loopback(create_app(inner)) as (_, url), _sdk(url) as client:
            first = await client.responses.create(model="chat", input="z" * 3000)
            assert first.status == "completed"  # the answer is served, only not kept
            with pytest.raises(openai.BadRequestError) as info:
                await client.responses.create(model="chat", input="more",
                                              previous_response_id=first.id)
    finally:
        await inner.aclose()
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("previous_response_id", "too_large_to_keep")
