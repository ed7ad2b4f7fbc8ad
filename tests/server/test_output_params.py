"""Structured output and sampling parameters at the edge: a request routes only to deployments
that can honour what it asks, and one that none can honour is a 400 naming what is missing,
never a silently dropped parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

from router.config import parse_config
from router.core import Router
from router.events import DoneEvent, ErrorEvent
from router.server.app import create_app
from tests.server.conftest import uvicorn_on_loopback

PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
CONFIG: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated"}},
    "deployments": [
        # can do structured output, but only top_p among the sampling parameters
        {"id": "json", "provider": "sim", "model": "j", "price": PRICE,
         "capabilities": ["tools", "structured_output"], "options": {"params": ["top_p"]}},
        {"id": "plain", "provider": "sim", "model": "p", "price": PRICE,
         "capabilities": ["tools"], "quality": 0.9},
    ],
    "tasks": {"both": {"candidates": ["plain", "json"], "prefer": "quality"},
              "plain-only": {"candidates": ["plain"]}},
    "defaults": {"task": "both"},
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    router = Router(parse_config(CONFIG, "t.yaml", env={}))
    async with uvicorn_on_loopback(create_app(router, close_router=True)) as (_, url):
        yield url


async def test_structured_output_routes_only_to_capable_deployments(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0)
    done = await client.chat.completions.parse(
        model="both", messages=[{"role": "user", "content": "A city"}], response_format=City)
    assert done.model == "json"  # "plain" ranks first on quality but cannot
    assert isinstance(done.choices[0].message.parsed, City)


async def test_no_capable_candidate_is_a_400_naming_the_capability(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="plain-only", messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"})
    assert "structured_output" in str(caught.value)


async def test_a_parameter_no_candidate_honours_is_a_400_naming_it(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0)
    ok = await client.chat.completions.create(
        model="json", messages=[{"role": "user", "content": "hi"}], top_p=0.5)
    assert ok.choices[0].message.content
    # `user` does not change the answer: sent where the wire carries it, never a refusal
    advisory = await client.chat.completions.create(
        model="json", messages=[{"role": "user", "content": "hi"}], user="end-user-1")
    assert advisory.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="json", messages=[{"role": "user", "content": "hi"}], seed=3)
    assert "seed" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="json", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert caught.value.body["param"] == "logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="json", messages=[{"role": "user", "content": "hi"}], top_p=3)
    assert caught.value.body["param"] == "top_p"  # type: ignore[index]


async def test_anthropic_endpoint_parameters_are_routed_and_checked(base_url: str) -> None:
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0)
    ok = await client.messages.create(model="json", max_tokens=50, extra_body={"top_p": 0.5},
                                      messages=[{"role": "user", "content": "hi"}])
    assert ok.content
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="json", max_tokens=50, extra_body={"top_k": 5},
                                     messages=[{"role": "user", "content": "hi"}])
    assert "top_k" in str(caught.value)


async def test_router_stream_takes_response_format_and_params() -> None:
    router = Router(parse_config(CONFIG, "t.yaml", env={}))
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema":
           City.model_json_schema()}}
    events = [ev async for ev in router.stream("A city", response_format=fmt,
                                                params={"top_p": 0.9})]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.deployment == "json"
    text = "".join(ev.delta for ev in events if ev.type == "text")
    City.model_validate_json(text)
    bad = [ev async for ev in router.stream("x", params={"temperature_x": 1})]
    assert isinstance(bad[-1], ErrorEvent) and bad[-1].code == "bad_request"
    assert "temperature_x" in bad[-1].message
    await router.aclose()
