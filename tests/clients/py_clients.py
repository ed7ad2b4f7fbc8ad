"""Popular Python clients against the router, run inside their own venv (see conftest.py):

    python py_clients.py CLIENT SCENARIO BASE_URL MODEL

CLIENT: openai | pydantic_ai | langchain | litellm | instructor | instructor_json
SCENARIO: text (streamed) | tool (a round trip: the model calls `get_weather`, the client runs
it and sends the result back) | structured (an answer parsed into `Weather`).
Prints one JSON object: {"text": ..., "tool_calls": [...], "object": {...}}. Any failure is
an exception (non-zero exit), which the test reports with this process's stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Literal

from pydantic import BaseModel

KEY = "sk-not-checked"
PROMPT_TOOL = "What is the weather in Paris?"
PROMPT_OBJECT = "Describe the weather in Oslo."
CALLS: list[dict[str, Any]] = []


class Weather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    temperature: float
    sunny: bool


def get_weather(city: str) -> str:
    """Current weather for a city."""
    CALLS.append({"city": city})
    return f"sunny and 21 degrees in {city}"


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


# --- the official openai SDK ----------------------------------------------------------------


def openai_client(scenario: str, base: str, model: str) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    if scenario == "text":
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello"}], stream=True)
        return {"text": "".join(c.choices[0].delta.content or "" for c in stream if c.choices)}
    if scenario == "tool":
        messages: list[Any] = [{"role": "user", "content": PROMPT_TOOL}]
        first = client.chat.completions.create(model=model, messages=messages,
                                               tools=[WEATHER_TOOL])  # type: ignore[list-item]
        calls = first.choices[0].message.tool_calls or []
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        for call in calls:
            result = get_weather(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        final = client.chat.completions.create(model=model, messages=messages,
                                               tools=[WEATHER_TOOL])  # type: ignore[list-item]
        return {"text": final.choices[0].message.content, "tool_calls": CALLS}
    parsed = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": PROMPT_OBJECT}],
        response_format=Weather)
    obj = parsed.choices[0].message.parsed
    assert obj is not None
    return {"object": obj.model_dump()}


# --- pydantic-ai ----------------------------------------------------------------------------


def pydantic_ai_client(scenario: str, base: str, model: str) -> dict[str, Any]:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    chat = OpenAIChatModel(model, provider=OpenAIProvider(base_url=base + "/v1", api_key=KEY))
    if scenario == "text":
        async def stream() -> str:
            async with Agent(chat).run_stream("Say hello") as run:
                return "".join([piece async for piece in run.stream_text(delta=True)])
        return {"text": asyncio.run(stream())}
    if scenario == "tool":
        agent = Agent(chat, tools=[get_weather])
        return {"text": agent.run_sync(PROMPT_TOOL).output, "tool_calls": CALLS}
    out = Agent(chat, output_type=Weather).run_sync(PROMPT_OBJECT).output
    return {"object": out.model_dump()}


# --- langchain-openai -----------------------------------------------------------------------


def langchain_client(scenario: str, base: str, model: str) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=model, base_url=base + "/v1", api_key=KEY,  # type: ignore[arg-type]
                      max_retries=0)
    if scenario == "text":
        return {"text": "".join(str(c.content) for c in chat.stream("Say hello"))}
    if scenario == "tool":
        weather = tool(get_weather)
        bound = chat.bind_tools([weather])
        messages: list[Any] = [HumanMessage(PROMPT_TOOL)]
        first = bound.invoke(messages)
        messages.append(first)
        for call in first.tool_calls:  # type: ignore[attr-defined]
            messages.append(ToolMessage(weather.invoke(call["args"]), tool_call_id=call["id"]))
        return {"text": bound.invoke(messages).content, "tool_calls": CALLS}
    obj = chat.with_structured_output(Weather).invoke(PROMPT_OBJECT)
    assert isinstance(obj, Weather)
    return {"object": obj.model_dump()}


# --- litellm (as a client) -----------------------------------------------------------------


def litellm_client(scenario: str, base: str, model: str) -> dict[str, Any]:
    import litellm

    common: dict[str, Any] = {"model": f"openai/{model}", "api_base": base + "/v1",
                              "api_key": KEY}
    if scenario == "text":
        stream = litellm.completion(messages=[{"role": "user", "content": "Say hello"}],
                                    stream=True, **common)
        return {"text": "".join(c.choices[0].delta.content or "" for c in stream)}
    if scenario == "tool":
        messages: list[Any] = [{"role": "user", "content": PROMPT_TOOL}]
        first = litellm.completion(messages=messages, tools=[WEATHER_TOOL], **common)
        message = first.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            result = get_weather(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        final = litellm.completion(messages=messages, tools=[WEATHER_TOOL], **common)
        return {"text": final.choices[0].message.content, "tool_calls": CALLS}
    reply = litellm.completion(messages=[{"role": "user", "content": PROMPT_OBJECT}],
                               response_format=Weather, **common)
    return {"object": Weather.model_validate_json(reply.choices[0].message.content).model_dump()}


# --- instructor ------------------------------------------------------------------------------


def instructor_client(scenario: str, base: str, model: str, json_mode: bool) -> dict[str, Any]:
    import instructor
    import openai

    mode = instructor.Mode.JSON if json_mode else instructor.Mode.TOOLS
    client = instructor.from_openai(openai.OpenAI(base_url=base + "/v1", api_key=KEY,
                                                  max_retries=0), mode=mode)
    messages = [{"role": "user", "content": PROMPT_OBJECT}]
    if scenario == "text":  # instructor's streaming: partial objects as the JSON arrives
        last: Any = None
        for partial in client.create_partial(model=model, messages=messages,  # type: ignore
                                             response_model=Weather, max_retries=0):
            last = partial
        return {"text": json.dumps(last.model_dump()) if last is not None else ""}
    obj = client.create(model=model, messages=messages, response_model=Weather,  # type: ignore
                        max_retries=0)
    return {"object": obj.model_dump()}


def main() -> None:
    client, scenario, base, model = sys.argv[1:5]
    if client.startswith("instructor"):
        out = instructor_client(scenario, base, model, client == "instructor_json")
    else:
        out = {"openai": openai_client, "pydantic_ai": pydantic_ai_client,
               "langchain": langchain_client, "litellm": litellm_client}[client](
            scenario, base, model)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
