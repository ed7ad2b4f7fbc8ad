"""The public API: `router.__all__` is pinned, the module-level `stream`/`complete` use the
discovered config, and `import router` stays light (no HTTP stack, no SDKs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

import router
from router.errors import RouterError, StreamError

PUBLIC = [
    "AuthError",
    "BudgetEvent",
    "BudgetExceededError",
    "Completion",
    "ConfigError",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "EventStream",
    "FallbackEvent",
    "InvalidRequestError",
    "LoadedConfig",
    "NoRouteError",
    "ProviderConnectionError",
    "ProviderFailure",
    "ProviderTimeoutError",
    "RateLimitError",
    "ReasoningEvent",
    "RetryEvent",
    "RouteEvent",
    "Router",
    "RouterError",
    "StartEvent",
    "StateUnavailableError",
    "StreamCancelledError",
    "StreamError",
    "TextEvent",
    "ToolCallEvent",
    "complete",
    "decode_event",
    "default_router",
    "encode_event",
    "load_config",
    "publish",
    "stream",
]
HEAVY = ("httpx", "pybreaker", "tenacity", "anthropic", "openai", "starlette", "redis",
         "rich", "typer", "uvicorn")


def test_all_is_pinned() -> None:
    assert router.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(router, name) is not None, name


def test_errors_form_one_hierarchy() -> None:
    errors = [getattr(router, n) for n in PUBLIC if n.endswith("Error") or n == "ProviderFailure"]
    assert all(issubclass(e, RouterError) for e in errors)
    stream_errors = [e for e in errors if e not in (router.RouterError, router.ConfigError)]
    assert all(issubclass(e, StreamError) for e in stream_errors)
    assert not issubclass(router.ConfigError, StreamError)


def test_packages_are_typed() -> None:
    for package in ("router", "providers"):
        module = __import__(package)
        assert module.__file__ is not None
        assert (Path(module.__file__).parent / "py.typed").is_file()


_PROBE = """
import sys, time
t = time.perf_counter()
import router
elapsed_ms = (time.perf_counter() - t) * 1000
import orjson
# Loaded code only: `providers` leaves a file-less placeholder for `httpx._main`.
loaded = {k for k, v in sys.modules.items() if getattr(v, "__file__", None)}
print(orjson.dumps({"ms": elapsed_ms, "loaded": sorted(
    m for m in HEAVY if m in loaded or any(k.startswith(m + ".") for k in loaded))}
).decode())
""".replace("HEAVY", repr(HEAVY))


def test_import_router_loads_no_http_stack_or_sdk() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, check=True,
                         text=True, cwd=Path(router.__file__).parent.parent)
    result = orjson.loads(out.stdout)
    assert result["loaded"] == []
    # Timing is reported, not asserted (machines differ); the gate is benchmarks/overhead.py.
    print(f"\nimport router: {result['ms']:.1f} ms (one cold run)")


@pytest.fixture
def discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: Any) -> Iterator[None]:
    """`$LLM_ROUTER_CONFIG` names an instant simulated fleet; the default router is rebuilt
    from it and forgotten afterwards."""
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet.config()), encoding="utf-8")
    monkeypatch.setenv("LLM_ROUTER_CONFIG", str(path))
    router.default_router.cache_clear()
    yield
    router.default_router.cache_clear()


async def test_module_level_stream_uses_the_discovered_config(discovered: None) -> None:
    stream = router.stream("Explain circuit breakers", model="fast")
    assert isinstance(stream, router.EventStream)
    events = [ev async for ev in stream]
    assert isinstance(events[0], router.RouteEvent)
    done = events[-1]
    assert isinstance(done, router.DoneEvent) and done.deployment == "fast"
    assert router.default_router().loaded.source.endswith("fleet.yaml")


async def test_module_level_complete_returns_a_completion(discovered: None) -> None:
    result = await router.complete([{"role": "user", "content": "hi"}], task="cheap")
    assert isinstance(result, router.Completion)
    assert result.deployment == "fast" and result.text


async def test_module_level_complete_raises_typed_errors(discovered: None) -> None:
    with pytest.raises(router.NoRouteError) as caught:
        await router.complete("hi", max_cost_usd=1e-12)
    assert isinstance(caught.value.event, router.ErrorEvent)


def test_default_router_is_built_once(discovered: None) -> None:
    assert router.default_router() is router.default_router()


def test_events_encode_and_decode_from_the_package() -> None:
    ev = router.TextEvent(request_id="r", seq=1, elapsed_ms=0.5, delta="hi")
    assert router.decode_event(router.encode_event(ev)) == ev
    assert orjson.loads(router.encode_event(ev))["type"] == "text"
