"""What the OpenAI- and Anthropic-compatible endpoints share: reading the body, mapping
`model` (task, deployment or `auto`) and the routing extras onto `Router.stream`, and
opening a stream far enough to know whether it failed before its first token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from router.events import Event

if TYPE_CHECKING:
    from router.core import EventStream, Router

AUTO_MODEL = "auto"
_NUMBERS = ("max_ttft_ms", "max_latency_ms", "max_cost_usd")
# Events that decide a stream's HTTP status: the first content, or the end.
_DECISIVE = frozenset({"text", "reasoning", "tool_call", "done", "error"})


class RequestProblem(Exception):
    """A request the endpoint refuses before routing; each dialect renders it its way."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    kind: str  # "auto", "task" or "deployment"
    owned_by: str
    description: str | None


def router_of(request: Request) -> Router:
    """The app's `Router` (set by the app factory)."""
    router: Router = request.app.state.router
    return router


def scope_key_of(request: Request) -> str | None:
    """The budget scope of the authenticated API key, if the auth layer set one."""
    scope = getattr(request.state, "key_scope", None)
    return scope if isinstance(scope, str) else None


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise RequestProblem(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestProblem("The request body must be a JSON object.", None, "invalid_json")
    return body


def routing_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The router's own request fields, carried as extra body fields."""
    out: dict[str, Any] = {}
    for name in _NUMBERS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise RequestProblem(f"Invalid '{name}': expected a positive number.", name,
                                 "invalid_value")
        out[name] = value
    for name in ("prefer", "task"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RequestProblem(f"Invalid '{name}': expected a string.", name, "invalid_value")
        out[name] = value
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise RequestProblem("Invalid 'metadata': expected an object.", "metadata",
                                 "invalid_value")
        out["metadata"] = dict(metadata)
    return out


def resolve_model(model: Any, router: Router, explicit_task: str | None = None) -> dict[str, Any]:
    """`model` is a task name, a deployment id or `auto` (the default task, or the
    `task` extra field when given)."""
    if not isinstance(model, str) or not model:
        raise RequestProblem("you must provide a model parameter", "model",
                             "missing_required_parameter")
    loaded = router.loaded
    if model == AUTO_MODEL:
        return {"task": explicit_task} if explicit_task else {}
    if model in loaded.config.tasks:
        return {"task": model}
    if model in loaded.deployments:
        return {"model": model}
    raise RequestProblem(
        f"The model `{model}` does not exist or you do not have access to it. Use a task "
        f"({', '.join(loaded.config.tasks) or 'none'}), a deployment id, or `auto`.",
        "model", "model_not_found", status=404)


def catalog(router: Router) -> list[CatalogEntry]:
    """What `model` may name: `auto`, the tasks, then the deployments."""
    loaded = router.loaded
    default = loaded.config.defaults.task
    out = [CatalogEntry(AUTO_MODEL, "auto", "llm-stream-router",
                        f"route by the default task ({default})" if default else "route freely")]
    for name, task in loaded.config.tasks.items():
        out.append(CatalogEntry(name, "task", "llm-stream-router", task.description))
    for dep_id, dep in loaded.deployments.items():
        out.append(CatalogEntry(dep_id, "deployment", dep.provider, dep.model))
    return out


async def open_stream(
    router: Router, input_: Any, kwargs: Mapping[str, Any]
) -> tuple[list[Event], EventStream]:
    """Start `router.stream` and read it up to its first content event or its end, so the
    caller can still answer an early failure with an HTTP error status."""
    events = router.stream(input_, **kwargs)
    head: list[Event] = []
    try:
        async for ev in events:
            head.append(ev)
            if ev.type in _DECISIVE:
                break
    except BaseException:
        await events.aclose()
        raise
    return head, events
